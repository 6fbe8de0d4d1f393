"""COCO instances JSON: boxes, crowd regions and (where present) segmentations.

``bbox`` is ``[x, y, w, h]`` in pixel edges (floats), so a box covers ``[x, x + w)``. Category
ids need not be contiguous: classes are the categories sorted by id, or, with ``--classes``, the
categories matched to that list by name. ``iscrowd`` annotations become crowd regions (ignore in
pseudo labels), never boxes. Polygon and RLE segmentations are the ground truth, decoded with
pycocotools by `coco_label`: an image has a mask when the file carries segmentations and every one
of its kept objects has one.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipseg.data.annotations import (
    AnnotationSet,
    BoxCleaner,
    ImageRecord,
    class_lookup,
    with_background,
)
from pipseg.data.labels import IGNORE_INDEX
from pipseg.errors import PipsegError

__all__ = ["coco_label", "read_coco", "sample_id_of"]


def sample_id_of(file_name: str) -> str:
    """The prepared id of an image file name: without extension, ``/`` turned into ``__``."""
    return os.path.splitext(file_name)[0].replace("\\", "/").replace("/", "__")


def _load(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise PipsegError(f"{path}: --annotations file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PipsegError(f"{path}: not a readable COCO JSON file ({e})") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise PipsegError(
            f"{path}: not a COCO instances file (needs lists 'images', 'annotations', 'categories')"
        )
    if not data["images"]:
        raise PipsegError(f"{path}: the annotation file lists no images")
    return data


def _classes(path: Path, categories: list[Any], names: Sequence[str] | None) -> list[str]:
    try:
        ordered = sorted(categories, key=lambda c: int(c["id"]))
        found = [str(c["name"]).strip() for c in ordered]
    except (KeyError, TypeError, ValueError):
        raise PipsegError(f"{path}: every category needs an integer 'id' and a 'name'") from None
    if not found:
        raise PipsegError(f"{path}: the annotation file has no categories")
    return with_background(names) if names else with_background(found)


def _segmentation_ok(seg: Any, height: int, width: int) -> bool:
    if isinstance(seg, list):
        return all(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
            and all(isinstance(v, (int, float)) for v in p)
            for p in seg
        )  # fmt: skip
    return (
        isinstance(seg, dict) and "counts" in seg and list(seg.get("size", ())) == [height, width]
    )


def _image_table(
    path: Path, images: Path, entries: list[Any], problems: list[str]
) -> dict[Any, tuple[str, Path, int, int]]:
    """COCO image id -> (sample id, image path, width, height), naming missing images."""
    present = {e.name for e in os.scandir(images)} if images.is_dir() else set()
    table: dict[Any, tuple[str, Path, int, int]] = {}
    seen: set[str] = set()
    for k, entry in enumerate(entries):
        try:
            image_id, name = entry["id"], str(entry["file_name"])
            width, height = int(entry["width"]), int(entry["height"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"{path}: images[{k}] needs 'id', 'file_name', 'width' and 'height'")
            continue
        sample_id = sample_id_of(name)
        if image_id in table or sample_id in seen:
            problems.append(f"{path}: images[{k}] ('{name}') is listed twice")
            continue
        image = images / name
        if name not in present and not image.is_file():
            problems.append(f"{image}: image not found (listed in {path.name})")
        elif width <= 0 or height <= 0:
            problems.append(f"{path}: images[{k}] ('{name}') has size {width}x{height}")
        else:
            table[image_id] = (sample_id, image, width, height)
        seen.add(sample_id)
    return table


def read_coco(
    path: str | os.PathLike[str],
    images: str | os.PathLike[str],
    names: Sequence[str] | None,
    *,
    skip_unknown: bool = False,
) -> AnnotationSet:
    """Read a COCO instances file whose ``file_name``s lie under ``images``.

    Every problem (image missing on disk, annotation pointing to an unknown image or category,
    malformed entry, unknown class) is collected in the result, not raised.
    """
    path, images = Path(path).expanduser(), Path(images).expanduser()
    data = _load(path)
    classes = _classes(path, data["categories"], names)
    result = AnnotationSet("coco", classes)
    table = _image_table(path, images, data["images"], result.problems)
    lookup = class_lookup(classes)
    category = {
        c["id"]: (lookup.get(str(c["name"]).strip().lower()), str(c["name"]))
        for c in data["categories"]
    }
    listed = {e.get("id") for e in data["images"] if isinstance(e, dict)}
    by_image: dict[Any, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for k, ann in enumerate(data["annotations"]):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if image_id in table:
            by_image[image_id].append((k, ann))
        elif image_id not in listed:
            result.problems.append(
                f"{path}: annotation {ann.get('id', k) if isinstance(ann, dict) else k} points "
                f"to image id {image_id!r}, which 'images' does not list"
            )
    has_segments = any(isinstance(a, dict) and a.get("segmentation") for a in data["annotations"])
    cleaner = BoxCleaner(result.clipped, result.skipped)
    for image_id, (sample_id, image, width, height) in table.items():
        segments = _read_objects(
            path, by_image.get(image_id, []), category, cleaner, result, skip_unknown, (width, height)
        )
        rows = cleaner.boxes()
        crowd = rows[:, 4] == IGNORE_INDEX
        result.records[sample_id] = ImageRecord(
            sample_id, image, width, height, rows[~crowd], rows[crowd, :4],
            segments if has_segments else None,
        )  # fmt: skip
    return result


def _read_objects(
    path: Path,
    anns: list[tuple[int, dict[str, Any]]],
    category: dict[Any, tuple[int | None, str]],
    cleaner: BoxCleaner,
    result: AnnotationSet,
    skip_unknown: bool,
    size: tuple[int, int],
) -> tuple[tuple[int, Any], ...] | None:
    """Feed one image's boxes to ``cleaner``; return its segments, or None when one is absent."""
    width, height = size
    segments: list[tuple[int, Any]] | None = []
    for k, ann in anns:
        crowd, bbox, seg = bool(ann.get("iscrowd", 0)), ann.get("bbox"), ann.get("segmentation")
        if ann.get("category_id") not in category:
            result.problems.append(
                f"{_where(path, ann, k)}: category id {ann.get('category_id')!r} is not listed"
            )
            continue
        try:
            if not isinstance(bbox, list):
                raise TypeError
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            result.problems.append(
                f"{_where(path, ann, k)}: 'bbox' must be four numbers: x, y, width, height"
            )
            continue
        cls, name = category[ann["category_id"]]
        cls = IGNORE_INDEX if crowd else cls
        if not cls:
            result.unknown += 1
            if not skip_unknown:
                result.problems.append(
                    f"{_where(path, ann, k)}: category '{name}' is not in --classes; add it to "
                    "the --classes file or pass --skip-unknown"
                )
            cls = IGNORE_INDEX  # its pixels are ignore in the ground truth, not background
        else:
            cleaner.add(_where(path, ann, k), cls, (x, y, x + w, y + h), width, height)
        if seg and not _segmentation_ok(seg, height, width):
            result.problems.append(
                f"{_where(path, ann, k)}: 'segmentation' is neither polygons nor an RLE of this image"
            )
        elif seg and segments is not None:
            segments.append((int(cls), seg))
        elif crowd and segments is not None:
            segments.append((IGNORE_INDEX, [[x, y, x + w, y, x + w, y + h, x, y + h]]))
        elif cls != IGNORE_INDEX:
            segments = None
    return tuple(segments) if segments is not None else None


def _where(path: Path, ann: dict[str, Any], k: int) -> str:
    return f"{path}: annotation {ann.get('id', k)}"


def coco_label(segments: Sequence[tuple[int, Any]], height: int, width: int) -> np.ndarray:
    """The class map ``uint8 [H, W]`` of one image's COCO segmentations (pycocotools decodes).

    Objects are painted largest first so smaller ones stay on top; crowd and unknown-class
    regions (class 255) become ignore wherever no object is.
    """
    from pycocotools import mask as mask_utils  # C extension: imported where it is used

    masks = []
    for cls, seg in segments:
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            rle = seg
        masks.append((cls, mask_utils.decode(rle).astype(bool)))
    label = np.zeros((height, width), np.uint8)
    objects = sorted((m for m in masks if m[0] != IGNORE_INDEX), key=lambda m: -int(m[1].sum()))
    for cls, mask in objects:
        label[mask] = cls
    for _, mask in (m for m in masks if m[0] == IGNORE_INDEX):
        label[mask & (label == 0)] = IGNORE_INDEX
    return label
