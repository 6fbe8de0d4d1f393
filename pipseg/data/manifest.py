"""What `pipseg prepare` writes for training to read: the manifest and the prepared annotations.

Layout of ``<prepared>/manifest.json`` (format ``pipseg-prepared-v2``)::

    {
      "format": "pipseg-prepared-v2", "pipseg_version": "0.1.0", "created": "<UTC ISO time>",
      "source_format": "voc" | "coco" | "yolo",
      "voc_root": "<absolute path of --voc-root>" | null,
      "inputs": {"images": ..., "annotations": ..., "val_images": ..., "val_annotations": ...,
                 "masks": ...},                       # absolute paths at prepare time, or null
      "classes": ["background", ...],                # class 0 is always background
      "class_order": "<where the order came from>",
      "images": {"file": "annotations.json", "count": N, "dirs": [<folder>, ...]},
      "objects": {"boxes": N, "crowd": N, "unknown_skipped": N, "clipped": N, "skipped": N},
      "settings": {"pseudo": [...], "sbd_root": ..., "sdi": ..., "wssl": ..., "workers": N,
                   "skip_unknown": bool, "strict_boxes": bool, "val_fraction": F | null,
                   "seed": N},
      "splits": {"<name>": {"file": "splits/<name>.txt", "count": N, "note": "..."}},
      "split_rule": "<how train and val were chosen>",
      "sources": {"<kind>": {"dirs": [<folder>, ...], "counts": {"<split>": N},
                             "for_splits": [...], "missing": {"<split>": N},
                             "miou": {"<split>": float}}}
    }

A ``<folder>`` is ``{"base": "voc" | "prepared" | "absolute", "path": "<path>"}``: ``voc`` is
relative to the VOC root (``voc_root`` while it exists, else the config's ``data.root``),
``prepared`` to the prepared folder, so both still resolve after a move.
Label sources: ``gt`` (ground truth; optional per image), ``box``/``grabcut``/``crf``
(``prepared:pseudo/<kind>``), ``sdi``/``wssl`` (``prepared:labels/<kind>``); a source's
folders are searched in order for ``<id>.png``.

``<prepared>/annotations.json`` holds every image in the common form, so training never reads
the original annotation files::

    {"format": "pipseg-annotations-v1",
     "images": {"<id>": {"dir": <index into images.dirs>, "file": "<path below it>",
                         "size": [width, height], "boxes": [[x0, y0, x1, y1, cls], ...],
                         "crowd": [[x0, y0, x1, y1], ...]}}}

Boxes are 0-based inclusive pixels; ``crowd`` is present only when non-empty.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipseg.config import Config
from pipseg.data.annotations import ImageRecord
from pipseg.errors import PipsegError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "pipseg-prepared-v2"
ANNOTATIONS_NAME = "annotations.json"
ANNOTATIONS_FORMAT = "pipseg-annotations-v1"


@dataclass(frozen=True)
class PreparedImage:
    """One image of a prepared dataset: its file, size, boxes ``int64 [N, 5]`` and crowd
    regions ``int64 [M, 4]``."""

    path: Path
    width: int
    height: int
    boxes: np.ndarray
    crowd: np.ndarray


def load_manifest(prepared_dir: str | Path) -> dict[str, Any]:
    """Read and check ``<prepared_dir>/manifest.json``."""
    path = Path(prepared_dir).expanduser() / MANIFEST_NAME
    if not path.is_file():
        raise PipsegError(
            f"{path}: no prepared dataset here; run `pipseg prepare --voc-root <VOC2012>` (or "
            "--images/--annotations) first"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PipsegError(f"{path}: unreadable manifest ({e}); run `pipseg prepare` again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise PipsegError(
            f"{path}: not a {MANIFEST_FORMAT} manifest (found {found!r}); run `pipseg prepare` again"
        )
    return manifest


def _names(classes: Iterable[str], limit: int = 4) -> str:
    classes = list(classes)
    more = f", ... ({len(classes)} in all)" if len(classes) > limit else ""
    return ", ".join(classes[:limit]) + more


def agreed_classes(configured: list[str] | None, manifest: dict[str, Any], prepared_dir: Path) -> list[str]:
    """The class list of a run: the manifest's when ``data.classes`` (``configured``) is unset;
    a configured list must name the same classes in the same order (case-insensitively)."""
    path = Path(prepared_dir).expanduser() / MANIFEST_NAME
    prepared = manifest.get("classes")
    if not isinstance(prepared, list) or len(prepared) < 2:
        raise PipsegError(f"{path}: holds no class list; run `pipseg prepare` again")
    if configured is None:
        return [str(c) for c in prepared]
    key = [c.strip().lower() for c in configured], [str(c).strip().lower() for c in prepared]
    if key[0] != key[1]:
        at = next((i for i, (a, b) in enumerate(zip(*key, strict=False)) if a != b), min(map(len, key)))
        raise PipsegError(
            f"data.classes: lists {len(configured)} classes ({_names(configured)}) but {path} was "
            f"prepared with {len(prepared)} ({_names(prepared)}), first difference at class {at}; "
            "remove data.classes from the config (the manifest's list is used) or prepare again"
        )
    return list(configured)


def resolve_classes(cfg: Config) -> Config:
    """``cfg`` with ``data.classes`` resolved: the prepared manifest's class list when the config
    leaves it unset, else the configured list checked against the manifest. The one place every
    command that reads a prepared dataset through a config gets its classes from."""
    prepared_dir = cfg.data.prepared_dir
    if not (prepared_dir / MANIFEST_NAME).is_file():
        raise PipsegError(
            f"data.prepared: {prepared_dir} holds no prepared dataset ({MANIFEST_NAME}); point "
            "data.prepared (or data.root) at the folder `pipseg prepare` wrote, or run it first"
        )
    classes = agreed_classes(cfg.data.classes, load_manifest(prepared_dir), prepared_dir)
    data = cfg.data.model_copy(update={"classes": classes})
    return cfg.model_copy(update={"data": data})


def read_split(prepared_dir: str | Path, manifest: dict[str, Any], split: str) -> list[str]:
    """The image ids of ``split`` from the prepared split list."""
    from pipseg.data.lists import read_id_list

    splits = manifest.get("splits", {})
    if split not in splits:
        raise PipsegError(
            f"{Path(prepared_dir) / MANIFEST_NAME}: no split '{split}' "
            f"(prepared splits: {', '.join(sorted(splits)) or 'none'})"
        )
    return read_id_list(Path(prepared_dir).expanduser() / splits[split]["file"], allow_empty=True)


def folder_bases(
    manifest: dict[str, Any], prepared_dir: Path, voc_root: Path | None = None
) -> dict[str, Path]:
    """Where the bases of the manifest's folders are: the recorded VOC root while it exists, else
    ``voc_root`` (the config's ``data.root``: the dataset was moved); ``prepared_dir``."""
    recorded = Path(manifest["voc_root"]) if manifest.get("voc_root") else None
    if recorded is None or (not recorded.is_dir() and voc_root is not None):
        recorded = voc_root.expanduser() if voc_root is not None else Path(".")
    return {"voc": recorded, "prepared": Path(prepared_dir).expanduser(), "absolute": Path("/")}


def resolve_folder(entry: dict[str, str], bases: dict[str, Path]) -> Path:
    """The path of one ``{"base", "path"}`` folder entry."""
    return bases[entry["base"]] / entry["path"]


def source_dirs(
    manifest: dict[str, Any], source: str, bases: dict[str, Path], where: str = ""
) -> list[Path]:
    """The folders that hold ``source``'s label PNGs, in search order."""
    sources = manifest.get("sources", {})
    if source not in sources:
        hint = "--pseudo " + source if source in ("box", "grabcut", "crf") else "--" + source
        raise PipsegError(
            f"{where or MANIFEST_NAME}: label source '{source}' was not prepared "
            f"(have: {', '.join(sorted(sources)) or 'none'}); run `pipseg prepare {hint} ...`"
        )
    return [resolve_folder(d, bases) for d in sources[source]["dirs"]]


def encode_records(
    records: Iterable[ImageRecord], dirs: list[tuple[dict[str, str], Path]]
) -> dict[str, Any]:
    """The ``annotations.json`` document for ``records``; ``dirs`` pairs each folder entry with
    its resolved path (an image lies below one of them)."""
    images: dict[str, Any] = {}
    for record in records:
        k, folder = next((k, p) for k, (_, p) in enumerate(dirs) if record.image.is_relative_to(p))
        entry: dict[str, Any] = {
            "dir": k,
            "file": record.image.relative_to(folder).as_posix(),
            "size": [record.width, record.height],
            "boxes": record.boxes.tolist(),
        }
        if len(record.crowd):
            entry["crowd"] = record.crowd.tolist()
        images[record.id] = entry
    return {"format": ANNOTATIONS_FORMAT, "images": images}


def read_prepared_images(
    prepared_dir: Path, manifest: dict[str, Any], bases: dict[str, Path]
) -> dict[str, PreparedImage]:
    """Every image of a prepared dataset by id (from ``annotations.json``)."""
    path = Path(prepared_dir).expanduser() / manifest["images"]["file"]
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PipsegError(f"{path}: unreadable ({e}); run `pipseg prepare` again") from None
    if not isinstance(doc, dict) or doc.get("format") != ANNOTATIONS_FORMAT:
        raise PipsegError(f"{path}: not a {ANNOTATIONS_FORMAT} file; run `pipseg prepare` again")
    dirs = [resolve_folder(d, bases) for d in manifest["images"]["dirs"]]
    return {
        sample_id: PreparedImage(
            dirs[e["dir"]] / e["file"], *e["size"],
            np.array(e["boxes"], np.int64).reshape(-1, 5),
            np.array(e.get("crowd", []), np.int64).reshape(-1, 4),
        )  # fmt: skip
        for sample_id, e in doc["images"].items()
    }


def relative_or_absolute(path: Path, base: Path | None, name: str) -> dict[str, str]:
    """A folder entry for ``path``: relative to ``base`` (named ``name``) when below it."""
    path = Path(os.path.abspath(path))
    if base is not None and path.is_relative_to(base):
        return {"base": name, "path": path.relative_to(base).as_posix()}
    return {"base": "absolute", "path": str(path)}
