"""PASCAL VOC annotation files: XML boxes -> 0-based inclusive ``(x0, y0, x1, y1, cls)``.

VOC corners are 1-based and inclusive: ``xmin=1, xmax=3`` covers pixel columns 0..2, i.e. pixel
edges ``[xmin - 1, xmax)``. `read_voc_folder` reads a folder for `pipseg prepare` (clipping and
logging bad boxes, collecting every problem); `read_voc_boxes` reads one file strictly.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipseg.config import VOC_CLASSES
from pipseg.data.annotations import (
    AnnotationSet,
    BoxCleaner,
    ImageRecord,
    class_lookup,
    with_background,
)
from pipseg.data.images import index_images
from pipseg.errors import PipsegError

__all__ = ["VocAnnotation", "class_lookup", "parse_voc_file", "read_voc_boxes", "read_voc_folder"]

# ElementTree expands internal entities; refusing DTDs keeps "billion laughs" files harmless.
_DTD = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
Edges = tuple[float, float, float, float]


@dataclass(frozen=True)
class VocAnnotation:
    """The boxes of one image (0-based inclusive corners, class index) and its size."""

    boxes: np.ndarray  # int64 [N, 5]
    width: int
    height: int
    skipped: int = 0  # objects of unknown classes left out (skip_unknown=True)


def _number(node: ET.Element | None, tag: str, where: str) -> float:
    text = node.findtext(tag) if node is not None else None
    if text is None or not text.strip():
        raise PipsegError(f"{where}: <{tag}> is missing; fix or remove the annotation file")
    try:
        return float(text)  # a few VOC files store corners as "273.0"
    except ValueError:
        raise PipsegError(f"{where}: <{tag}> is not a number ({text.strip()!r})") from None


def parse_voc_file(xml_path: str | Path) -> tuple[int, int, list[tuple[str, Edges]]]:
    """``(width, height, [(name, pixel edges)])`` of one VOC XML file; no class or range checks.

    Raises `PipsegError` naming the file (and object) when it is missing or malformed.
    """
    path = Path(xml_path)
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
    width = round(_number(size, "width", f"{path}: <size>"))
    height = round(_number(size, "height", f"{path}: <size>"))
    if width <= 0 or height <= 0:
        raise PipsegError(f"{path}: image size {width}x{height} is not positive")
    objects = []
    for index, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        where = f"{path}: object {index} ('{name}')"
        bnd = obj.find("bndbox")
        if bnd is None:
            raise PipsegError(f"{where}: <bndbox> is missing")
        corners = [_number(bnd, tag, where) for tag in ("xmin", "ymin", "xmax", "ymax")]
        objects.append((name, (corners[0] - 1, corners[1] - 1, corners[2], corners[3])))
    return width, height, objects


def read_voc_boxes(
    xml_path: str | Path, classes: Sequence[str] | dict[str, int], skip_unknown: bool = False
) -> VocAnnotation:
    """Read the object boxes of one VOC XML file, strictly.

    Returns 0-based inclusive ``int64 [N, 5] (x0, y0, x1, y1, cls)`` checked against the image
    size in the file (``0 <= x0 <= x1 < width``, same for y). Class names match ``classes``
    ignoring case and surrounding spaces; an unknown name is an error unless ``skip_unknown``,
    which drops and counts it. Any problem raises `PipsegError` naming the file and the object.
    """
    path = Path(xml_path)
    lookup = classes if isinstance(classes, dict) else class_lookup(classes)
    width, height, objects = parse_voc_file(path)
    boxes, skipped = [], 0
    for index, (name, (left, top, right, bottom)) in enumerate(objects):
        where = f"{path}: object {index} ('{name}')"
        cls = lookup.get(name.lower())
        if cls is None or cls == 0:
            if skip_unknown:
                skipped += 1
                continue
            raise PipsegError(f"{where}: {_unknown(len(lookup))}")
        x0, y0, x1, y1 = round(left), round(top), round(right) - 1, round(bottom) - 1
        if not (0 <= x0 <= x1 < width and 0 <= y0 <= y1 < height):
            raise PipsegError(
                f"{where}: box (xmin={x0 + 1}, ymin={y0 + 1}, xmax={x1 + 1}, ymax={y1 + 1}) "
                f"is outside the {width}x{height} image (VOC corners are 1-based); fix the file"
            )
        boxes.append((x0, y0, x1, y1, cls))
    return VocAnnotation(np.array(boxes, np.int64).reshape(-1, 5), width, height, skipped)


def _unknown(n: int) -> str:
    return (
        f"class is not one of the {n} classes of --classes; add it to the --classes file "
        "or pass --skip-unknown"
    )


def _default_classes(names: set[str]) -> list[str]:
    """The PASCAL VOC classes when every name is one of them, else the names found, sorted."""
    if {n.lower() for n in names} <= set(class_lookup(VOC_CLASSES)):
        return list(VOC_CLASSES)
    return with_background(sorted(names, key=str.lower))


def read_voc_folder(
    folder: str | os.PathLike[str],
    images: str | os.PathLike[str],
    names: Sequence[str] | None,
    *,
    skip_unknown: bool = False,
    ids: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AnnotationSet:
    """Read ``<folder>/<id>.xml`` for ``ids`` (default: every .xml there) with their images.

    Images are ``<images>/<id>.<any image extension>``. Every missing or malformed file, unknown
    class and bad box is collected in the result, not raised.
    """
    folder, images = Path(folder).expanduser(), Path(images).expanduser()
    if ids is None:
        ids = sorted(e.name[:-4] for e in os.scandir(folder) if e.name.lower().endswith(".xml"))
        if not ids:
            raise PipsegError(f"{folder}: no .xml files; pass --annotations a folder of VOC XML")
    index, problems = index_images(images)
    parsed: dict[str, tuple[int, int, list[tuple[str, Edges]]]] = {}
    for done, sample_id in enumerate(ids, 1):
        if progress and (done % 256 == 0 or done == len(ids)):
            progress(done, len(ids))
        if sample_id not in index:
            problems.append(
                f"{images / (sample_id + '.jpg')}: image not found (nor any other image extension)"
            )
        try:
            parsed[sample_id] = parse_voc_file(folder / f"{sample_id}.xml")
        except PipsegError as e:
            problems.append(str(e))
    found = {name for _, _, objects in parsed.values() for name, _ in objects}
    classes = with_background(names) if names else _default_classes(found)
    result = AnnotationSet("voc", classes, problems=problems)
    lookup = class_lookup(classes)
    cleaner = BoxCleaner(result.clipped, result.skipped)
    for sample_id, (width, height, objects) in parsed.items():
        for k, (name, edges) in enumerate(objects):
            where = f"{folder / sample_id}.xml: object {k} ('{name}')"
            cls = lookup.get(name.lower())
            if not cls:
                result.unknown += 1
                if not skip_unknown:
                    problems.append(f"{where}: {_unknown(len(classes))}")
                continue
            cleaner.add(where, cls, edges, width, height)
        boxes = cleaner.boxes()
        if sample_id in index:
            result.records[sample_id] = ImageRecord(
                sample_id, index[sample_id], width, height, boxes
            )
    return result
