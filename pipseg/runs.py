"""Finished and running training runs side by side (`pipseg runs`): one row per run folder and
their validation curves in one picture. Reads only what a run leaves (``log.jsonl``,
``summary.json``, ``config.yaml``), so runs of other machines or versions compare as well."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipseg.engine import runlog
from pipseg.errors import PipsegError
from pipseg.io import atomic_path


@dataclass
class RunRow:
    """What one run folder says about itself."""

    path: Path
    label_source: str = "?"
    loss: str = "?"
    lamb: float | None = None
    iteration: int = 0
    iters: int | None = None
    finished: bool = False
    best_miou: float | None = None
    last_miou: float | None = None
    wall_time_s: float | None = None
    val_curve: list[tuple[int, float]] = field(default_factory=list)


def find_runs(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Run folders (holding ``log.jsonl``) among ``paths`` and below them, sorted, no repeats."""
    found: list[Path] = []
    for item in paths:
        path = Path(item).expanduser()
        if not path.is_dir():
            raise PipsegError(f"{path}: not a folder; give run folders (runtime.out_dir) or their parent")
        found += [p.parent for p in sorted(path.rglob(runlog.LOG_NAME))]
    runs = sorted(dict.fromkeys(p.resolve() for p in found))
    if not runs:
        raise PipsegError(f"{', '.join(map(str, paths))}: no training run found (no {runlog.LOG_NAME})")
    return runs


def read_run(path: Path) -> RunRow:
    """One run folder as a `RunRow` (a run still going or killed has no summary: the log tells)."""
    row = RunRow(path=path)
    config = _read_yaml(path / runlog.CONFIG_NAME)
    data, loss, optim = (config.get(k) or {} for k in ("data", "loss", "optim"))
    row.label_source = str(data.get("label_source", "?"))
    row.loss = str(loss.get("kind", "?"))
    row.lamb = loss.get("lamb") if row.loss == "pip" else None
    row.iters = optim.get("iters")
    records = runlog.read_log(path / runlog.LOG_NAME)
    row.val_curve = [(int(r["iteration"]), float(r["miou"])) for r in records if r.get("kind") == "val"]
    row.iteration = max((int(r.get("iteration", 0)) for r in records), default=0)
    if row.val_curve:
        row.last_miou = row.val_curve[-1][1]
        row.best_miou = max(v for _, v in row.val_curve)
    summary = _read_json(path / runlog.SUMMARY_NAME)
    row.finished = bool(summary.get("finished", False))
    row.wall_time_s = summary.get("wall_time_s")
    row.iteration = int(summary.get("iteration", row.iteration))
    return row


def plot_val_curves(rows: Sequence[RunRow], path: Path, names: Sequence[str]) -> Path:
    """One PNG with every run's validation mIoU against iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for row, name in zip(rows, names, strict=True):
        if row.val_curve:
            its, miou = zip(*row.val_curve, strict=True)
            ax.plot(its, [100 * v for v in miou], marker="o", markersize=3, label=name)
    ax.set(xlabel="iteration", ylabel="val mIoU (%)", title="validation mIoU (ground truth)")
    ax.grid(alpha=0.3)
    if any(row.val_curve for row in rows):
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def short_names(rows: Sequence[RunRow]) -> list[str]:
    """Each run's folder path relative to the runs' common parent (its name when alone)."""
    if len(rows) == 1:
        return [rows[0].path.name]
    common = Path(os.path.commonpath([r.path for r in rows]))
    return [r.path.relative_to(common).as_posix() or r.path.name for r in rows]


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
