"""The one reader of the plain-text lists pipseg takes: image ids and class names.

Both share one rule: blank lines and lines starting with ``#`` are skipped. An id is the first
whitespace-separated token of its line (VOC's ``ImageSets`` may carry a second column); a class
name is the whole stripped line (class names may hold spaces, e.g. ``potted plant``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from pipseg.errors import PipsegError


def _content_lines(path: Path, what: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise PipsegError(f"{path}: cannot read the {what} ({reason})") from None
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def read_id_list(path: str | os.PathLike[str], *, allow_empty: bool = False) -> list[str]:
    """Image ids from a text file, one per line (first token of each line)."""
    path = Path(path).expanduser()
    ids = [line.split()[0] for line in _content_lines(path, "id list")]
    if not ids and not allow_empty:
        raise PipsegError(f"{path}: the id list is empty; list one image id per line")
    return ids


def read_class_list(path: str | os.PathLike[str]) -> list[str]:
    """Class names from a text file, one per line, in order."""
    path = Path(path).expanduser()
    names = _content_lines(path, "class list")
    if not names:
        raise PipsegError(f"{path}: the class list is empty; list one class name per line")
    return names


def class_names(num_classes: int, names: Sequence[str] | None = None) -> list[str]:
    """Names of classes ``0 .. num_classes - 1``: ``names`` when given (one per class), else the
    placeholders ``class_0``, ``class_1``, ... (no dataset's names are guessed from the count)."""
    if names is None:
        return [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise PipsegError(
            f"class list: {len(names)} names for {num_classes} classes; list one name per class, "
            "background first"
        )
    return [str(n) for n in names]
