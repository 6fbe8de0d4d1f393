"""What a run leaves to read: the JSONL log, the loss / mIoU curves PNG and ``summary.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipseg.io import atomic_path, atomic_write_text

LOG_NAME, CURVES_NAME, SUMMARY_NAME, CONFIG_NAME = "log.jsonl", "curves.png", "summary.json", "config.yaml"


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
