"""A small generated VOC-layout dataset of coloured shapes, for tests, demos and benchmarks.

Each image holds a few overlapping objects of distinct shape classes on a cluttered, noisy
background. Objects fill only part of their box (rings have holes, triangles and crescents leave
corners empty), so box-filled pseudo labels are wrong in the way real ones are. Ground truth
follows VOC: palette PNGs with a 255 band on object boundaries; boxes are tight around each
object's visible pixels, written as 1-based VOC corners.

Everything is drawn from ``np.random.default_rng((seed, index))`` per image, so the same
arguments give the same bytes, and one image does not depend on how many others are made.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from xml.sax.saxutils import escape

import cv2
import numpy as np

from pipseg.data.labels import IGNORE_INDEX, write_label
from pipseg.io import atomic_write_bytes, atomic_write_text

SYNTHETIC_CLASSES: list[str] = ["background", "disc", "ring", "triangle", "cross", "crescent"]

# One base colour per shape class (RGB); each object jitters around it.
_CLASS_RGB = np.array(
    [[0, 0, 0], [220, 60, 50], [60, 170, 70], [50, 90, 220], [230, 200, 40], [180, 70, 200]],
    dtype=np.float32,
)
_MIN_VISIBLE = 0.35  # an object less visible than this (after occlusion) is not annotated
_JPEG_QUALITY = 92


def _sample_id(index: int) -> str:
    return f"syn_{index:05d}"


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A smooth colour gradient with random muted clutter (bars, lines, blobs) and noise."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    corners = rng.uniform(60, 190, size=(2, 2, 3)).astype(np.float32)
    fx, fy = (xs / max(w - 1, 1))[..., None], (ys / max(h - 1, 1))[..., None]
    img = (
        corners[0, 0] * (1 - fx) * (1 - fy) + corners[0, 1] * fx * (1 - fy)
        + corners[1, 0] * (1 - fx) * fy + corners[1, 1] * fx * fy
    )  # fmt: skip
    for _ in range(int(rng.integers(4, 9))):
        grey = rng.uniform(50, 200)
        colour = tuple(float(grey + d) for d in rng.uniform(-35, 35, size=3))
        kind = rng.integers(3)
        p = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        q = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if kind == 0:
            cv2.rectangle(img, p, q, colour, thickness=-1)
        elif kind == 1:
            cv2.line(img, p, q, colour, thickness=int(rng.integers(1, 4)))
        else:
            axes = (int(rng.integers(3, max(4, w // 6))), int(rng.integers(3, max(4, h // 6))))
            cv2.ellipse(img, p, axes, float(rng.uniform(0, 180)), 0, 360, colour, thickness=-1)
    return img


def _shape_mask(rng: np.random.Generator, cls: int, w: int, h: int) -> np.ndarray:
    """A filled mask of one object of shape class ``cls`` at a random place and size."""
    mask = np.zeros((h, w), np.uint8)
    r = float(rng.uniform(0.12, 0.3) * min(w, h))
    cx = float(rng.uniform(0.1 * w, 0.9 * w))
    cy = float(rng.uniform(0.1 * h, 0.9 * h))
    c = (round(cx), round(cy))
    if cls == 1:  # disc
        cv2.circle(mask, c, round(r), 1, thickness=-1)
    elif cls == 2:  # ring
        cv2.circle(mask, c, round(r), 1, thickness=-1)
        cv2.circle(mask, c, round(r * rng.uniform(0.45, 0.65)), 0, thickness=-1)
    elif cls == 3:  # triangle: three corners on a circle at random angles
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=3)) + np.array([0, 0.6, 1.2])
        pts = np.stack([cx + r * 1.2 * np.cos(angles), cy + r * 1.2 * np.sin(angles)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    elif cls == 4:  # cross: two rotated bars
        t = r * rng.uniform(0.25, 0.4)
        a = rng.uniform(0, np.pi / 2)
        for angle in (a, a + np.pi / 2):
            box = cv2.boxPoints(((cx, cy), (2.2 * r, 2 * t), float(np.degrees(angle))))
            cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1)
    else:  # crescent: a disc minus a shifted disc
        cv2.circle(mask, c, round(r), 1, thickness=-1)
        a = rng.uniform(0, 2 * np.pi)
        d = r * rng.uniform(0.45, 0.7)
        cv2.circle(mask, (round(cx + d * np.cos(a)), round(cy + d * np.sin(a))), round(r), 0, -1)
    return mask


def _texture(rng: np.random.Generator, cls: int, w: int, h: int) -> np.ndarray:
    """The object's colour: class hue with per-object jitter, stripes and speckle."""
    base = np.clip(_CLASS_RGB[cls] + rng.uniform(-30, 30, size=3), 0, 255).astype(np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 12)
    stripes = np.sin((xs * np.cos(angle) + ys * np.sin(angle)) * 2 * np.pi / period)
    return base + (rng.uniform(8, 25) * stripes)[..., None]


def _boundary_band(label: np.ndarray) -> np.ndarray:
    """Pixels where the label changes within one pixel (VOC draws these as 255)."""
    kernel = np.ones((3, 3), np.uint8)
    return cv2.dilate(label, kernel) != cv2.erode(label, kernel)


def render_sample(
    seed: int, index: int, image_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one sample: ``(image uint8 RGB [H,W,3], label uint8 [H,W], boxes int64 [N,5])``.

    Boxes are 0-based inclusive ``(x0, y0, x1, y1, cls)`` around each object's visible pixels.
    """
    w, h = image_size
    rng = np.random.default_rng((seed, index))
    img = _background(rng, w, h)
    label = np.zeros((h, w), np.uint8)
    owner = np.full((h, w), -1, np.int32)
    objects: list[tuple[int, int, np.ndarray]] = []
    for k in range(int(rng.integers(2, 5))):
        cls = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        mask = _shape_mask(rng, cls, w, h).astype(bool)
        if mask.sum() < 12:
            continue
        img[mask] = _texture(rng, cls, w, h)[mask]
        label[mask] = cls
        owner[mask] = k
        objects.append((k, cls, mask))
    boxes = []
    for k, cls, mask in objects:
        visible = owner == k
        if visible.sum() < _MIN_VISIBLE * mask.sum():
            label[visible] = IGNORE_INDEX  # mostly hidden: unannotated, like VOC's "difficult"
            continue
        ys, xs = np.nonzero(visible)
        boxes.append((xs.min(), ys.min(), xs.max(), ys.max(), cls))
    label[_boundary_band(label)] = IGNORE_INDEX
    img += rng.normal(0, 7, size=img.shape).astype(np.float32)
    image = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return image, label, np.array(boxes, dtype=np.int64).reshape(-1, 5)


def voc_xml(sample_id: str, boxes: np.ndarray, width: int, height: int, classes: list[str]) -> str:
    """A VOC annotation file for 0-based inclusive boxes (written 1-based, as VOC does)."""
    objects = "".join(
        f"  <object>\n    <name>{escape(classes[int(c)])}</name>\n    <pose>Unspecified</pose>\n"
        f"    <truncated>0</truncated>\n    <difficult>0</difficult>\n"
        f"    <bndbox>\n      <xmin>{x0 + 1}</xmin>\n      <ymin>{y0 + 1}</ymin>\n"
        f"      <xmax>{x1 + 1}</xmax>\n      <ymax>{y1 + 1}</ymax>\n    </bndbox>\n  </object>\n"
        for x0, y0, x1, y1, c in boxes.tolist()
    )
    return (
        f"<annotation>\n  <folder>synthetic</folder>\n  <filename>{sample_id}.jpg</filename>\n"
        f"  <size>\n    <width>{width}</width>\n    <height>{height}</height>\n"
        f"    <depth>3</depth>\n  </size>\n  <segmented>1</segmented>\n{objects}</annotation>\n"
    )


def _paths(root: Path, sample_id: str, image_ext: str = ".jpg") -> tuple[Path, Path, Path]:
    return (
        root / "JPEGImages" / f"{sample_id}{image_ext}",
        root / "Annotations" / f"{sample_id}.xml",
        root / "SegmentationClass" / f"{sample_id}.png",
    )


def _encode(image: np.ndarray, image_ext: str) -> bytes:
    ext = image_ext.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY] if ext in (".jpg", ".jpeg") else []
    ok, data = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    assert ok, f"OpenCV could not encode a {ext} image"
    return data.tobytes()


Renderer = Callable[[int, int, tuple[int, int]], tuple[np.ndarray, np.ndarray, np.ndarray]]


def make_synthetic_voc(
    root: str | os.PathLike[str],
    n_train: int = 64,
    n_val: int = 16,
    image_size: tuple[int, int] = (160, 120),
    seed: int = 0,
    *,
    image_ext: str = ".jpg",
    masks: str = "all",
    split_lists: bool = True,
) -> Path:
    """Write a synthetic dataset in VOC layout under ``root`` and return ``root``.

    Layout: ``JPEGImages/*<image_ext>`` (``.jpg``, ``.png``, ``.bmp``, ``.webp``, any case),
    ``Annotations/*.xml``, ``SegmentationClass/*.png`` (for ``masks`` ``"all"`` images, only the
    ``"val"`` ones, or ``"none"``) and, with ``split_lists``,
    ``ImageSets/Segmentation/{train,val,trainval}.txt``; classes are `SYNTHETIC_CLASSES`.
    Deterministic in its arguments; files already present are kept (so a second call with the
    same arguments writes nothing), and the split lists are written last.
    """
    return write_voc_dataset(
        root, render_sample, SYNTHETIC_CLASSES, n_train=n_train, n_val=n_val, image_size=image_size,
        seed=seed, image_ext=image_ext, masks=masks, split_lists=split_lists,
    )  # fmt: skip


def write_voc_dataset(
    root: str | os.PathLike[str],
    render: Renderer,
    classes: list[str],
    *,
    n_train: int,
    n_val: int,
    image_size: tuple[int, int],
    seed: int,
    image_ext: str = ".jpg",
    masks: str = "all",
    split_lists: bool = True,
) -> Path:
    """Write ``render(seed, index, image_size)`` samples in VOC layout (see `make_synthetic_voc`)."""
    if masks not in ("all", "val", "none"):
        raise ValueError(f"masks must be 'all', 'val' or 'none', not {masks!r}")
    root = Path(root)
    ids = [_sample_id(i) for i in range(n_train + n_val)]
    sets = root / "ImageSets" / "Segmentation"
    for sample_id, index in zip(ids, range(len(ids)), strict=True):
        image_path, xml_path, label_path = _paths(root, sample_id, image_ext)
        with_mask = masks == "all" or (masks == "val" and index >= n_train)
        if image_path.exists() and xml_path.exists() and (label_path.exists() or not with_mask):
            continue
        image, label, boxes = render(seed, index, image_size)
        atomic_write_bytes(image_path, _encode(image, image_ext))
        if with_mask:
            write_label(label_path, label)
        atomic_write_text(xml_path, voc_xml(sample_id, boxes, *image_size, classes))
    if not split_lists:
        return root
    lists = {"train": ids[:n_train], "val": ids[n_train:], "trainval": ids}
    for name, split_ids in lists.items():
        text = "".join(f"{i}\n" for i in split_ids)
        path = sets / f"{name}.txt"
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)
    return root
