"""PASCAL VOC annotation files: XML boxes -> 0-based inclusive ``(x0, y0, x1, y1, cls)``."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipseg.errors import PipsegError

# ElementTree expands internal entities; refusing DTDs keeps "billion laughs" files harmless.
_DTD = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


@dataclass(frozen=True)
class VocAnnotation:
    """The boxes of one image (0-based inclusive corners, class index) and its size."""

    boxes: np.ndarray  # int64 [N, 5]
    width: int
    height: int
    skipped: int = 0  # objects of unknown classes left out (skip_unknown=True)


def class_lookup(classes: Sequence[str]) -> dict[str, int]:
    """Map normalised class names (stripped, lower case) to their index."""
    return {name.strip().lower(): i for i, name in enumerate(classes)}


def _int(node: ET.Element | None, tag: str, where: str) -> int:
    text = node.findtext(tag) if node is not None else None
    if text is None or not text.strip():
        raise PipsegError(f"{where}: <{tag}> is missing; fix or remove the annotation file")
    try:
        return round(float(text))  # a few VOC files store corners as "273.0"
    except ValueError:
        raise PipsegError(f"{where}: <{tag}> is not a number ({text.strip()!r})") from None


def read_voc_boxes(
    xml_path: str | Path, classes: Sequence[str] | dict[str, int], skip_unknown: bool = False
) -> VocAnnotation:
    """Read the object boxes of a VOC XML file.

    VOC corners are 1-based and inclusive; the result is 0-based inclusive
    ``int64 [N, 5] (x0, y0, x1, y1, cls)`` checked against the image size in the file
    (``0 <= x0 <= x1 < width``, same for y). Class names match ``classes`` ignoring case and
    surrounding spaces; an unknown name is an error unless ``skip_unknown``, which drops and
    counts it. Difficult and truncated objects are kept. Any problem raises `PipsegError`
    naming the file and the object (its index and name).
    """
    path = Path(xml_path)
    lookup = classes if isinstance(classes, dict) else class_lookup(classes)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PipsegError(f"{path}: annotation file not found") from None
    except OSError as e:
        raise PipsegError(f"{path}: cannot read the annotation ({e})") from None
    if _DTD.search(data):
        raise PipsegError(f"{path}: DOCTYPE/ENTITY declarations are not allowed in annotations")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise PipsegError(f"{path}: malformed XML ({e}); re-extract or fix the file") from None
    size = root.find("size")
    width, height = _int(size, "width", f"{path}: <size>"), _int(size, "height", f"{path}: <size>")
    if width <= 0 or height <= 0:
        raise PipsegError(f"{path}: image size {width}x{height} is not positive")
    boxes: list[tuple[int, int, int, int, int]] = []
    skipped = 0
    for index, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        where = f"{path}: object {index} ('{name}')"
        cls = lookup.get(name.lower())
        if cls is None or cls == 0:
            if skip_unknown:
                skipped += 1
                continue
            raise PipsegError(
                f"{where}: class is not one of the {len(lookup)} configured classes; "
                "set data.classes or skip_unknown_classes"
            )
        bnd = obj.find("bndbox")
        if bnd is None:
            raise PipsegError(f"{where}: <bndbox> is missing")
        x0, y0 = _int(bnd, "xmin", where) - 1, _int(bnd, "ymin", where) - 1
        x1, y1 = _int(bnd, "xmax", where) - 1, _int(bnd, "ymax", where) - 1
        if not (0 <= x0 <= x1 < width and 0 <= y0 <= y1 < height):
            raise PipsegError(
                f"{where}: box (xmin={x0 + 1}, ymin={y0 + 1}, xmax={x1 + 1}, ymax={y1 + 1}) "
                f"is outside the {width}x{height} image (VOC corners are 1-based); fix the file"
            )
        boxes.append((x0, y0, x1, y1, cls))
    return VocAnnotation(
        boxes=np.array(boxes, dtype=np.int64).reshape(-1, 5),
        width=width,
        height=height,
        skipped=skipped,
    )
