"""Box annotations in one in-memory form, whatever file format they came from.

Every reader (`pipseg.data.voc`, `pipseg.data.coco`, `pipseg.data.yolo`) returns an
`AnnotationSet`: the class list and one `ImageRecord` per image, so every later stage of
`pipseg prepare` is format-blind.

Class order: class 0 is always ``background``; the annotation classes follow in the order of the
``--classes`` file when one is given (a first line ``background`` is allowed and kept as class 0),
else in the format's own order: COCO categories by ascending category id, YOLO ids 0, 1, ...;
VOC XML the 20 PASCAL VOC classes when every name is one of them, else the names found, sorted.

Boxes: readers turn each format's coordinates into pixel edges ``[left, top, right, bottom)``
(floats) and `BoxCleaner` rounds them to 0-based inclusive pixels. A box past the image edge is
clipped, an empty or inverted one (or one wholly outside) is skipped; both are logged by file and
object so `prepare` can report them, or refuse them with ``--strict-boxes``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipseg.errors import PipsegError

FORMATS: tuple[str, ...] = ("voc", "coco", "yolo")
BACKGROUND = "background"


@dataclass(frozen=True)
class ImageRecord:
    """One image and its objects, in the form every stage after reading uses.

    ``boxes`` int64 ``[N, 5]`` ``(x0, y0, x1, y1, cls)``, 0-based inclusive pixels, ``cls >= 1``;
    ``crowd`` int64 ``[M, 4]`` boxes of crowd regions (COCO ``iscrowd``), ignore (255) in pseudo
    labels; ``segments`` the ground-truth shapes when the annotation file carries them (COCO
    polygons/RLE as ``(cls or 255 for crowd, segmentation)`` pairs), else None.
    """

    id: str
    image: Path
    width: int
    height: int
    boxes: np.ndarray
    crowd: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    segments: tuple[tuple[int, Any], ...] | None = None


@dataclass
class AnnotationSet:
    """What a reader found: classes (background first), records by id, and what went wrong.

    ``problems`` are errors (missing files, malformed entries, unknown classes);
    ``clipped``/``skipped`` name boxes fixed or dropped; ``unknown`` counts objects of classes
    outside the list that ``skip_unknown`` dropped. ``sizes_checked`` is True when the reader took
    image sizes from the images themselves (YOLO).
    """

    format: str
    classes: list[str]
    records: dict[str, ImageRecord] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    clipped: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unknown: int = 0
    sizes_checked: bool = False

    @property
    def objects(self) -> int:
        """Boxes kept over all images."""
        return sum(len(r.boxes) for r in self.records.values())


def first_few(items: Sequence[str], n: int = 5) -> str:
    """``"a; b; c (+7 more)"``: the first ``n`` items and a count of the rest."""
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return "; ".join(items[:n]) + more


def class_lookup(classes: Sequence[str]) -> dict[str, int]:
    """Map normalised class names (stripped, lower case) to their index."""
    return {name.strip().lower(): i for i, name in enumerate(classes)}


def with_background(names: Sequence[str]) -> list[str]:
    """``names`` with ``background`` as class 0 (added unless it is already first)."""
    names = [n.strip() for n in names]
    if names and names[0].lower() == BACKGROUND:
        return names
    return [BACKGROUND, *names]


def load_class_names(path: str | os.PathLike[str]) -> list[str]:
    """Class names from ``--classes``: a YOLO ``data.yaml`` (``names`` as a list or an
    ``{id: name}`` dict) or a text file of one name per line. Returns them in file order,
    without adding background."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in (".yaml", ".yml"):
        from pipseg.data.lists import read_class_list

        return read_class_list(path)
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise PipsegError(f"{path}: cannot read the class file ({e.__class__.__name__})") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        try:
            order = sorted(names, key=int)
        except (TypeError, ValueError):
            raise PipsegError(f"{path}: the keys of 'names' must be class numbers") from None
        if [int(k) for k in order] != list(range(len(order))):
            raise PipsegError(f"{path}: 'names' must number classes 0, 1, 2, ... without gaps")
        names = [names[k] for k in order]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise PipsegError(
            f"{path}: no class names; a data.yaml needs 'names' as a list or a dict of strings"
        )
    return [n.strip() for n in names]


def detect_format(annotations: str | os.PathLike[str]) -> str:
    """``coco`` for a ``.json`` file, ``voc`` for a folder of ``.xml``, ``yolo`` for ``.txt``."""
    path = Path(annotations).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "coco"
        raise PipsegError(
            f"{path}: --annotations takes a COCO .json file or a folder of VOC .xml / YOLO .txt "
            "files"
        )
    if not path.is_dir():
        raise PipsegError(f"{path}: --annotations not found")
    suffixes = [os.path.splitext(e.name)[1].lower() for e in os.scandir(path)]
    xml, txt = suffixes.count(".xml"), suffixes.count(".txt")
    if xml and not txt:
        return "voc"
    if txt and not xml:
        return "yolo"
    raise PipsegError(
        f"{path}: cannot tell the format ({xml} .xml and {txt} .txt files); "
        "pass --format voc or --format yolo"
    )


class BoxCleaner:
    """Round box edges to 0-based inclusive pixels, clip them to the image, log what changed.

    ``add(where, cls, left, top, right, bottom, width, height)`` takes pixel edges (a box covering
    pixel columns 3..5 has left 3, right 6); a box reaching past the image is clipped and logged
    in ``clipped``, an empty, inverted or wholly outside box is dropped and logged in ``skipped``.
    ``boxes()`` returns what was kept and starts a new image.
    """

    def __init__(self, clipped: list[str], skipped: list[str]) -> None:
        self.clipped, self.skipped = clipped, skipped
        self._rows: list[tuple[int, int, int, int, int]] = []

    def add(self, where: str, cls: int, edges: Sequence[float], width: int, height: int) -> None:
        """Keep one box (see the class docstring)."""
        left, top, right, bottom = edges
        x0, y0, x1, y1 = round(left), round(top), round(right) - 1, round(bottom) - 1
        if 0 <= x0 <= x1 < width and 0 <= y0 <= y1 < height:  # the usual case, nothing to log
            self._rows.append((x0, y0, x1, y1, cls))
            return
        shown = f"{where} edges ({left:g}, {top:g}, {right:g}, {bottom:g})"
        if x1 < x0 or y1 < y0:
            self.skipped.append(f"{shown}: empty or inverted")
            return
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width - 1), min(y1, height - 1)
        if cx1 < cx0 or cy1 < cy0:
            self.skipped.append(f"{shown}: outside the {width}x{height} image")
            return
        self.clipped.append(f"{shown}: past the edge of the {width}x{height} image")
        self._rows.append((cx0, cy0, cx1, cy1, cls))

    def boxes(self) -> np.ndarray:
        """The kept boxes as int64 ``[N, 5]``; resets for the next image."""
        rows, self._rows = self._rows, []
        return np.array(rows, dtype=np.int64).reshape(-1, 5)


def read_annotations(
    fmt: str,
    annotations: str | os.PathLike[str],
    images: str | os.PathLike[str],
    names: Sequence[str] | None,
    *,
    skip_unknown: bool = False,
    ids: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AnnotationSet:
    """Read ``annotations`` (format ``fmt``, one of `FORMATS`) for the images in ``images``.

    ``names`` is the class list (`with_background` is applied), or None for the format's own
    (see the module docstring); ``ids`` limits VOC reading to those images;
    ``progress(done, total)`` is called now and then by the per-file formats.
    """
    from pipseg.data import coco, voc, yolo

    if fmt == "coco":
        return coco.read_coco(annotations, images, names, skip_unknown=skip_unknown)
    if fmt == "yolo":
        return yolo.read_yolo(
            annotations, images, names, skip_unknown=skip_unknown, progress=progress
        )
    if fmt == "voc":
        return voc.read_voc_folder(
            annotations, images, names, skip_unknown=skip_unknown, ids=ids, progress=progress
        )
    raise PipsegError(f"--format: unknown format '{fmt}'; choose from {', '.join(FORMATS)}")
