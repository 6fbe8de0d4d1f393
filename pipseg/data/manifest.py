"""The manifest `pipseg prepare` writes last: which splits and label sources a dataset has.

Layout of ``<prepared>/manifest.json`` (format ``pipseg-prepared-v1``)::

    {
      "format": "pipseg-prepared-v1", "pipseg_version": "0.1.0", "created": "<UTC ISO time>",
      "voc_root": "<absolute path at prepare time>",
      "classes": ["background", ...],
      "settings": {"pseudo": [...], "sbd_root": ..., "sdi": ..., "wssl": ..., "workers": N},
      "splits": {"<name>": {"file": "splits/<name>.txt", "count": N, "note": "..."}},
      "sources": {"<kind>": {"dirs": [{"base": "voc" | "prepared", "path": "<folder>"}, ...],
                             "counts": {"<split>": N}, "missing": {"<split>": N},
                             "miou": {"<split>": float}}}
    }

Label folders are stored relative to a base so the dataset still resolves them after a move:
``voc`` is the config's ``data.root``, ``prepared`` its ``data.prepared_dir``. A source's folders
are searched in order for ``<id>.png``. Kinds: ``gt`` (``voc:SegmentationClass`` then
``prepared:SegmentationClassAug`` from SBD), ``box``/``grabcut``/``crf``
(``prepared:pseudo/<kind>``), ``sdi``/``wssl`` (``prepared:labels/<kind>``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipseg.errors import PipsegError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "pipseg-prepared-v1"


def load_manifest(prepared_dir: str | Path) -> dict[str, Any]:
    """Read and check ``<prepared_dir>/manifest.json``."""
    path = Path(prepared_dir).expanduser() / MANIFEST_NAME
    if not path.is_file():
        raise PipsegError(
            f"{path}: no prepared dataset here; run `pipseg prepare --voc-root <VOC2012>` first"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PipsegError(
            f"{path}: unreadable manifest ({e}); run `pipseg prepare` again"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise PipsegError(f"{path}: not a {MANIFEST_FORMAT} manifest; run `pipseg prepare` again")
    return manifest


def read_split(prepared_dir: str | Path, manifest: dict[str, Any], split: str) -> list[str]:
    """The image ids of ``split`` from the prepared split list."""
    splits = manifest.get("splits", {})
    if split not in splits:
        raise PipsegError(
            f"{Path(prepared_dir) / MANIFEST_NAME}: no split '{split}' "
            f"(prepared splits: {', '.join(sorted(splits)) or 'none'})"
        )
    path = Path(prepared_dir).expanduser() / splits[split]["file"]
    try:
        return [
            line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
    except OSError as e:
        raise PipsegError(
            f"{path}: cannot read the split list ({e}); run `pipseg prepare`"
        ) from None


def source_dirs(
    manifest: dict[str, Any], source: str, voc_root: Path, prepared_dir: Path, where: str = ""
) -> list[Path]:
    """The folders that hold ``source``'s label PNGs, in search order."""
    sources = manifest.get("sources", {})
    if source not in sources:
        hint = "--pseudo " + source if source in ("box", "grabcut", "crf") else "--" + source
        raise PipsegError(
            f"{where or MANIFEST_NAME}: label source '{source}' was not prepared "
            f"(have: {', '.join(sorted(sources)) or 'none'}); run `pipseg prepare {hint} ...`"
        )
    bases = {"voc": voc_root, "prepared": prepared_dir}
    return [bases[d["base"]] / d["path"] for d in sources[source]["dirs"]]
