"""A hard generated VOC-layout dataset, where box-derived labels are about as wrong as on VOC.

Compared with the shapes of `pipseg.data.synthetic`: backgrounds are crops of real photographs
(scikit-image's sample images), objects carry real-image textures tinted per class, unlabelled
clutter wears the objects' textures, edges are soft (alpha-blended), objects overlap and are
occluded by clutter, and the shapes are thin (worms), concave (stars, arcs) or holed (rings).
Ground truth follows VOC as in the shapes dataset (255 band on boundaries, tight 1-based boxes).

The sample images come from scikit-image (the ``dev`` extra), imported only when a sample is
drawn. Everything else is drawn from ``np.random.default_rng((seed, index))`` per image, so the
same arguments give the same bytes.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from pipseg.data.labels import IGNORE_INDEX
from pipseg.data.synthetic import _boundary_band, write_voc_dataset
from pipseg.errors import PipsegError

HARD_CLASSES: list[str] = ["background", "blob", "ring", "star", "worm", "arc"]

# Photographs for backgrounds (RGB) and grey textures that objects and clutter wear.
_BACKGROUNDS = ("astronaut", "coffee", "chelsea", "rocket", "retina", "immunohistochemistry")
_TEXTURES = ("brick", "grass", "gravel", "camera", "moon")  # one per object class, in class order
# Class tints (RGB multipliers of the grey texture): muted, so they overlap the photographs' colours.
_CLASS_TINT = np.array(
    [
        [1.0, 1.0, 1.0],
        [1.15, 0.8, 0.7],
        [0.75, 1.05, 0.8],
        [0.8, 0.85, 1.2],
        [1.1, 1.05, 0.7],
        [1.0, 0.75, 1.1],
    ],
    dtype=np.float32,
)
_MIN_VISIBLE = 0.35  # an object less visible than this (after occlusion) is not annotated
_CLUTTER_ALIKE = 0.6  # share of clutter pieces wearing an object class's texture and tint
_NOISE = 6.0
# Width of worms and arcs as a share of the image's short side: thin against their boxes, yet
# about one output-stride cell (8 px at 96) so a stride-8 model can represent them at all.
_THIN_WIDTH = (0.06, 0.1)


@cache
def _sample_images() -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """The photographs (float32 RGB) and the textures (float32 grey, mean 1) from skimage.data."""
    try:
        from skimage import data as skdata
    except ImportError:
        raise PipsegError(
            "the hard synthetic dataset needs scikit-image's sample images; "
            "install the dev extra (pip install 'pipseg[dev]')"
        ) from None
    photos = []
    for name in _BACKGROUNDS:
        img = np.asarray(getattr(skdata, name)())
        if img.dtype != np.uint8:
            img = (255 * img / max(float(img.max()), 1e-6)).astype(np.uint8)
        photos.append(np.ascontiguousarray(img[..., :3]).astype(np.float32))
    textures = []
    for name in _TEXTURES:
        grey = np.asarray(getattr(skdata, name)()).astype(np.float32)
        grey = grey if grey.ndim == 2 else grey[..., :3].mean(-1)
        textures.append(grey / max(float(grey.mean()), 1e-6))
    return tuple(photos), tuple(textures)


def _crop(
    rng: np.random.Generator, src: np.ndarray, w: int, h: int, zoom: tuple[float, float]
) -> np.ndarray:
    """A random crop of ``src`` shown at a random scale, resized to ``w x h`` (random flips)."""
    sh, sw = src.shape[:2]
    scale = float(rng.uniform(*zoom))
    cw, ch = min(sw, max(2, round(w / scale))), min(sh, max(2, round(h / scale)))
    x0, y0 = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
    out = cv2.resize(src[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def _texture(rng: np.random.Generator, cls: int, w: int, h: int) -> np.ndarray:
    """Class ``cls``'s texture (a grey sample image, tinted) with per-object jitter: float RGB."""
    _, textures = _sample_images()
    grey = _crop(rng, textures[cls - 1], w, h, (0.25, 0.6))
    base = float(rng.uniform(95, 160))
    tint = _CLASS_TINT[cls] * rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    contrast = float(rng.uniform(0.5, 0.9))
    return (base * (1 + contrast * (grey - 1)))[..., None] * tint


def _radial_polygon(
    rng: np.random.Generator, cx: float, cy: float, r: float, wobble: float, n: int = 48
) -> np.ndarray:
    """A closed irregular outline: radius ``r * (1 + sum of random low harmonics)``."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    radius = np.ones(n)
    for k in (2, 3, 5):
        radius += wobble * rng.uniform(-1, 1) / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    pts = np.stack([cx + r * radius * np.cos(theta), cy + r * radius * np.sin(theta)], 1)
    return np.round(pts).astype(np.int32)


def _shape_mask(
    rng: np.random.Generator, cls: int, w: int, h: int, near: tuple[float, float] | None
) -> np.ndarray:
    """A filled mask of one object of class ``cls``; centred near ``near`` when given (overlap)."""
    mask = np.zeros((h, w), np.uint8)
    r = float(rng.uniform(0.14, 0.32) * min(w, h))
    if near is None:
        cx, cy = float(rng.uniform(0.15 * w, 0.85 * w)), float(rng.uniform(0.15 * h, 0.85 * h))
    else:
        cx = float(np.clip(near[0] + rng.normal(0, r), 0, w - 1))
        cy = float(np.clip(near[1] + rng.normal(0, r), 0, h - 1))
    if cls == 1:  # blob: irregular, mildly concave
        cv2.fillPoly(mask, [_radial_polygon(rng, cx, cy, r, 1.3)], 1)
    elif cls == 2:  # ring: irregular outline with an irregular hole
        cv2.fillPoly(mask, [_radial_polygon(rng, cx, cy, r, 0.5)], 1)
        cv2.fillPoly(mask, [_radial_polygon(rng, cx, cy, r * rng.uniform(0.5, 0.7), 0.3)], 0)
    elif cls == 3:  # star: 4-7 spikes
        n = int(rng.integers(4, 8))
        theta = np.arange(2 * n) * np.pi / n + rng.uniform(0, np.pi)
        radius = np.where(np.arange(2 * n) % 2 == 0, r * 1.2, r * rng.uniform(0.25, 0.4))
        pts = np.stack([cx + radius * np.cos(theta), cy + radius * np.sin(theta)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    elif cls == 4:  # worm: a thin bent polyline
        steps = rng.normal(0, 1, size=(int(rng.integers(4, 8)), 2))
        pts = np.cumsum(steps / np.linalg.norm(steps, axis=1, keepdims=True) * r * 0.8, 0) + [
            cx,
            cy,
        ]
        thickness = max(2, round(min(w, h) * rng.uniform(*_THIN_WIDTH)))
        cv2.polylines(mask, [np.round(pts).astype(np.int32)], False, 1, thickness=thickness)
    else:  # arc: a thick open arc (a horseshoe)
        start = float(rng.uniform(0, 360))
        axes = (round(r), round(r * rng.uniform(0.6, 1.0)))
        cv2.ellipse(mask, (round(cx), round(cy)), axes, float(rng.uniform(0, 180)), start,
                    start + float(rng.uniform(200, 300)), 1, thickness=max(2, round(min(w, h) * rng.uniform(*_THIN_WIDTH))))  # fmt: skip
    return mask


def _clutter_mask(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """An unlabelled piece: a blob, a bar or a stroke, at a random place."""
    mask = np.zeros((h, w), np.uint8)
    p = (int(rng.integers(0, w)), int(rng.integers(0, h)))
    kind = int(rng.integers(3))
    if kind == 0:
        cv2.fillPoly(
            mask, [_radial_polygon(rng, *p, float(rng.uniform(0.06, 0.18) * min(w, h)), 0.6)], 1
        )
    elif kind == 1:
        q = (p[0] + int(rng.integers(-w // 3, w // 3)), p[1] + int(rng.integers(-h // 3, h // 3)))
        cv2.line(mask, p, q, 1, thickness=int(rng.integers(3, 9)))
    else:
        q = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(mask, p, q, 1, thickness=int(rng.integers(1, 4)))
    return mask


def _soft_paint(
    rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, texture: np.ndarray
) -> None:
    """Alpha-blend ``texture`` over ``img`` through ``mask`` blurred by a random soft edge."""
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), float(rng.uniform(0.8, 2.0)))
    img += alpha[..., None] * (texture - img)


def _clutter(rng: np.random.Generator, img: np.ndarray, n: int) -> np.ndarray:
    """Paint ``n`` clutter pieces; return the union of their masks (for occlusion)."""
    h, w = img.shape[:2]
    union = np.zeros((h, w), bool)
    for _ in range(n):
        mask = _clutter_mask(rng, w, h)
        if rng.random() < _CLUTTER_ALIKE:
            texture = _texture(rng, int(rng.integers(1, len(HARD_CLASSES))), w, h)
        else:
            photos, _ = _sample_images()
            texture = _crop(rng, photos[int(rng.integers(len(photos)))], w, h, (0.3, 0.8))
        _soft_paint(rng, img, mask, texture)
        union |= mask.astype(bool)
    return union


def render_hard_instances(
    seed: int, index: int, image_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """One sample with its instances: ``(image, label, boxes [N,5], visible masks)``; the k-th
    visible mask (bool ``[H, W]``) is the k-th box's object where nothing covers it."""
    w, h = image_size
    rng = np.random.default_rng((seed, index))
    photos, _ = _sample_images()
    img = _crop(rng, photos[int(rng.integers(len(photos)))], w, h, (0.15, 0.45))
    _clutter(rng, img, int(rng.integers(2, 5)))  # behind the objects
    label = np.zeros((h, w), np.uint8)
    owner = np.full((h, w), -1, np.int32)
    objects: list[tuple[int, int, np.ndarray]] = []
    centre = None
    for k in range(int(rng.integers(2, 5))):
        cls = int(rng.integers(1, len(HARD_CLASSES)))
        near = centre if centre is not None and rng.random() < 0.5 else None
        mask = _shape_mask(rng, cls, w, h, near)
        if mask.sum() < 12:
            continue
        _soft_paint(rng, img, mask, _texture(rng, cls, w, h))
        ys, xs = np.nonzero(mask)
        centre = (float(xs.mean()), float(ys.mean()))
        label[mask > 0], owner[mask > 0] = cls, k
        objects.append((k, cls, mask > 0))
    covered = _clutter(rng, img, int(rng.integers(1, 3)))  # in front: occluders
    label[covered], owner[covered] = 0, -1
    boxes, visibles = [], []
    for k, cls, mask in objects:
        visible = owner == k
        if visible.sum() < max(_MIN_VISIBLE * mask.sum(), 4):
            label[visible] = IGNORE_INDEX  # mostly hidden: unannotated, like VOC's "difficult"
            continue
        ys, xs = np.nonzero(visible)
        boxes.append((xs.min(), ys.min(), xs.max(), ys.max(), cls))
        visibles.append(visible)
    # VOC's 255 band, one pixel wide and on the background side only: at this image size a band
    # on both sides would swallow the thin objects (worms, arcs) whole.
    label[_boundary_band(label) & (label == 0)] = IGNORE_INDEX
    img += rng.normal(0, _NOISE, size=img.shape).astype(np.float32)
    image = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return image, label, np.array(boxes, dtype=np.int64).reshape(-1, 5), visibles


def render_hard_sample(
    seed: int, index: int, image_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one sample: ``(image uint8 RGB [H,W,3], label uint8 [H,W], boxes int64 [N,5])``."""
    image, label, boxes, _ = render_hard_instances(seed, index, image_size)
    return image, label, boxes


def make_hard_voc(
    root: str | os.PathLike[str],
    n_train: int = 160,
    n_val: int = 40,
    image_size: tuple[int, int] = (112, 96),
    seed: int = 0,
    *,
    image_ext: str = ".jpg",
    masks: str = "all",
    split_lists: bool = True,
) -> Path:
    """Write the hard synthetic dataset in VOC layout under ``root`` (as `make_synthetic_voc`);
    classes are `HARD_CLASSES`. Needs scikit-image (the ``dev`` extra)."""
    return write_voc_dataset(
        root, render_hard_sample, HARD_CLASSES, n_train=n_train, n_val=n_val, image_size=image_size,
        seed=seed, image_ext=image_ext, masks=masks, split_lists=split_lists,
    )  # fmt: skip
