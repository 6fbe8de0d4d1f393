"""YOLO label folders: one ``<id>.txt`` per image, lines ``class cx cy w h`` normalised to 0..1.

Class numbers index the names of ``--classes`` (a YOLO ``data.yaml`` or a text file; without it,
a ``classes.txt`` in the label folder), YOLO class k becoming prepared class k + 1 (0 is
background). Image sizes come from the images; an image without a label file has no objects.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from pipseg.data.annotations import AnnotationSet, BoxCleaner, ImageRecord, with_background
from pipseg.data.images import image_size, index_images
from pipseg.data.lists import read_class_list
from pipseg.errors import PipsegError

__all__ = ["read_yolo"]

CLASSES_FILE = "classes.txt"


def _names(folder: Path, names: Sequence[str] | None) -> list[str]:
    if names is None:
        if not (folder / CLASSES_FILE).is_file():
            raise PipsegError(
                f"{folder}: YOLO labels hold class numbers only; pass --classes a data.yaml or a "
                "text file of class names"
            )
        names = read_class_list(folder / CLASSES_FILE)
    return with_background(names)


def _label_files(folder: Path) -> dict[str, Path]:
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        raise PipsegError(f"{folder}: --annotations folder not found") from None
    files = {
        e.name[:-4]: folder / e.name
        for e in entries
        if e.name.lower().endswith(".txt") and e.name != CLASSES_FILE and e.is_file()
    }
    if not files:
        raise PipsegError(f"{folder}: no YOLO .txt label files; pass --annotations their folder")
    return files


def _read_lines(path: Path, problems: list[str]) -> list[tuple[int, list[str]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        problems.append(f"{path}: cannot read the label file ({e.__class__.__name__})")
        return []
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def read_yolo(
    folder: str | os.PathLike[str],
    images: str | os.PathLike[str],
    names: Sequence[str] | None,
    *,
    skip_unknown: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> AnnotationSet:
    """Read every image of ``images`` with its ``<folder>/<id>.txt`` labels (if any).

    Every unreadable image, malformed line, unknown class number, label file without an image
    and bad box is collected in the result, not raised.
    """
    folder, images = Path(folder).expanduser(), Path(images).expanduser()
    classes = _names(folder, names)
    files = _label_files(folder)
    index, problems = index_images(images)
    if not index:
        raise PipsegError(f"{images}: no images here; pass --images the folder of the YOLO images")
    result = AnnotationSet("yolo", classes, problems=problems, sizes_checked=True)
    problems.extend(
        f"{path}: no image '{stem}' in {images}" for stem, path in files.items() if stem not in index
    )
    cleaner = BoxCleaner(result.clipped, result.skipped)
    for done, (sample_id, image) in enumerate(sorted(index.items()), 1):
        if progress and (done % 256 == 0 or done == len(index)):
            progress(done, len(index))
        try:
            width, height = image_size(image)
        except PipsegError as e:
            problems.append(str(e))
            continue
        path = files.get(sample_id)
        for n, fields in _read_lines(path, problems) if path else []:
            where = f"{path}: line {n}"
            try:
                if len(fields) != 5:
                    raise ValueError
                number, (cx, cy, w, h) = int(fields[0]), (float(v) for v in fields[1:])
            except ValueError:
                problems.append(f"{where}: expected 'class cx cy w h', got {' '.join(fields)!r}")
                continue
            if not 0 <= number < len(classes) - 1:
                result.unknown += 1
                if not skip_unknown:
                    problems.append(
                        f"{where}: class {number} has no name in --classes "
                        f"({len(classes) - 1} names); extend it or pass --skip-unknown"
                    )
                continue
            edges = ((cx - w / 2) * width, (cy - h / 2) * height,
                     (cx + w / 2) * width, (cy + h / 2) * height)  # fmt: skip
            cleaner.add(where, number + 1, edges, width, height)
        result.records[sample_id] = ImageRecord(sample_id, image, width, height, cleaner.boxes())
    return result
