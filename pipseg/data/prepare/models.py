"""Label sources that run a model (Segment Anything): what `prepare` hands them and gets back.

`pipseg.data` never imports a model; the caller (the CLI) builds the source, e.g.
`pipseg.labels.sam.SamSource`, and passes it to `prepare_dataset` under its kind (``sam``). It
runs in the calling process, one image after another, so one model sits in memory per device
while the other sources use the process pool; it writes each label atomically and skips the
finished ones, so a rerun resumes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

# Kinds of model-run label sources, and the `prepare` flag that must come with each.
MODEL_KINDS: dict[str, str] = {"sam": "--sam-checkpoint"}


@dataclass(frozen=True)
class LabelItem:
    """One image to label: its id (the label is ``<out_dir>/<sample_id>.png``), image file,
    boxes (0-based inclusive ``int [N, 5]``), crowd boxes (``int [M, 4]``, their background
    becomes 255) and a label file to take degenerate boxes' fallback from when it exists (the
    ``crf`` label `prepare` just wrote)."""

    sample_id: str
    image: Path
    boxes: np.ndarray
    crowd: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    fallback_label: Path | None = None


@dataclass
class ModelRun:
    """What a model source did: label files written and skipped, figures for the manifest
    (``stats``) and lines for the user (``notes``)."""

    written: int
    skipped: int
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class ModelSource(Protocol):
    """A label source running a model: writes ``<out_dir>/<sample_id>.png`` for each item."""

    def __call__(
        self,
        items: Sequence[LabelItem],
        out_dir: Path,
        *,
        progress: Callable[[int, int], None] | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> ModelRun: ...
