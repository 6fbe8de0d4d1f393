"""What a run tells: the header, rank 0's log records and progress events, and what it leaves
to read afterwards (the JSONL log, the loss / mIoU curves PNG and ``summary.json``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipseg.config import Config
from pipseg.engine.tracking import TensorBoardTracker
from pipseg.io import atomic_path, atomic_write_json, atomic_write_text

LOG_NAME, CURVES_NAME, SUMMARY_NAME, CONFIG_NAME = "log.jsonl", "curves.png", "summary.json", "config.yaml"
ProgressFn = Callable[[dict[str, Any]], None]
VAL_KEYS = ("miou", "pixel_accuracy", "mean_accuracy", "fw_iou", "iou")


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL log (an unreadable trailing line from a crash is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_log(path: Path, iteration: int) -> None:
    """Keep only records up to ``iteration``: a resumed run redoes what came after its checkpoint."""
    kept = [r for r in read_log(path) if int(r.get("iteration", 0)) <= iteration]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


class JsonlLog:
    """Append one JSON record per line, flushed at once (the log survives an interruption)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def plot_curves(records: list[dict[str, Any]], path: Path) -> Path:
    """PNG with the training loss (total / box / pixel) and the validation mIoU per iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(11, 4))
    its = [r["iteration"] for r in train]
    for key in ("loss", "box", "pixel"):
        ax_loss.plot(its, [r[key] for r in train], label=key, marker="." if len(its) < 30 else None)
    ax_loss.set(xlabel="iteration", ylabel="loss", title="training loss")
    ax_loss.legend()
    ax_miou.plot([r["iteration"] for r in val], [100 * r["miou"] for r in val], marker="o")
    ax_miou.set(xlabel="iteration", ylabel="mIoU (%)", title="validation mIoU (ground truth)")
    for ax in (ax_loss, ax_miou):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def run_header(
    cfg: Config, *, init: dict[str, Any], train_images: int, val_images: int, device: torch.device,
    world_size: int, micro_batch: int, start_iteration: int, out_dir: Path, val_without_masks: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """What a run is: the ``start`` record of its log and event, and the head of its summary.

    ``val_images`` counts the val split's images with a ground-truth mask (those scored), and
    ``val_without_masks`` the others; with no val image to score, ``validation`` is False.
    """
    o = cfg.optim
    return {
        "model": cfg.model.name, "init": init, "label_source": cfg.data.label_source,
        "classes": list(cfg.data.classes or []), "train_split": cfg.data.train_split,
        "train_images": train_images, "val_split": cfg.data.val_split, "val_images": val_images,
        "val_without_masks": val_without_masks, "val_labels": "gt", "validation": val_images > 0,
        "loss": cfg.loss.kind, "device": str(device), "world_size": world_size, "amp": cfg.runtime.amp,
        "batch_size": o.batch_size, "accumulate": o.accumulate, "micro_batch": micro_batch,
        "lr": o.lr, "iters": o.iters, "start_iteration": start_iteration, "out_dir": str(out_dir),
    }  # fmt: skip


class Reporter:
    """Rank 0's voice: records appended to the log and events (``start``, ``iter``, ``log``,
    ``val``, ``end``) handed to the caller's ``progress``; on other ranks it stays silent."""

    def __init__(
        self, log_path: Path, progress: ProgressFn | None, enabled: bool, *,
        tensorboard: bool = False, classes: list[str] | None = None,
    ) -> None:  # fmt: skip
        self.log = JsonlLog(log_path) if enabled else None
        self.progress = progress or (lambda event: None)
        self.enabled = enabled
        self.tracker = TensorBoardTracker(log_path.parent, enabled=enabled and tensorboard)
        self.classes = classes or []

    def emit(self, event: str, **fields: Any) -> None:
        """Hand ``{"event": event, **fields}`` to ``progress``."""
        if self.enabled:
            self.progress({"event": event, **fields})

    def record(self, event: str, record: dict[str, Any], **extra: Any) -> None:
        """Append ``record`` to the log and hand it (with ``extra``) to ``progress``."""
        if self.log is not None:
            self.log.write(record)
        if record.get("kind") == "train":
            self.tracker.log_train(int(record["iteration"]), record)
        self.emit(event, **record, **extra)

    def start(self, header: dict[str, Any]) -> None:
        """The ``start`` record and event."""
        if self.log is not None:
            self.log.write({"kind": "start", "iteration": header["start_iteration"], **header})
        self.emit("start", **header)

    def validation(self, iteration: int, metrics: dict[str, Any], best_miou: float | None) -> None:
        """The ``val`` record and event of a validation at ``iteration``."""
        record = {"kind": "val", "iteration": iteration, **{k: metrics[k] for k in VAL_KEYS if k in metrics}}
        self.tracker.log_val(iteration, metrics, self.classes)
        self.record("val", record, best_miou=best_miou)

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        self.tracker.close()


def write_summary(out_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Add the final loss and throughput from the log to ``summary``, draw the curves and write
    ``summary.json``; returns the summary written."""
    records = read_log(out_dir / LOG_NAME)
    train_records = [r for r in records if r.get("kind") == "train"]
    summary = dict(summary)
    if train_records:
        summary["final_loss"] = {k: train_records[-1][k] for k in ("loss", "box", "pixel")}
        summary["images_per_s"] = float(np.mean([r["images_per_s"] for r in train_records[-5:]]))
    plot_curves(records, out_dir / CURVES_NAME)
    atomic_write_json(out_dir / SUMMARY_NAME, summary)
    return summary
