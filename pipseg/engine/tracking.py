"""Run tracking in TensorBoard, beside ``log.jsonl`` (``runtime.tensorboard: true``).

TensorBoard is what most users already run, so pipseg writes its event files rather than a new
format: scalars under ``train/`` (loss and its parts, lr, throughput) and ``val/`` (mIoU and
per-class IoU by class name). Only the main process writes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipseg.errors import PipsegError


class TensorBoardTracker:
    """Writes scalars to ``<out_dir>/tensorboard``; a no-op when ``enabled`` is false."""

    def __init__(self, out_dir: str | os.PathLike[str], *, enabled: bool) -> None:
        self.log_dir = Path(out_dir) / "tensorboard"
        self._writer: Any = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise PipsegError(
                "runtime.tensorboard: true needs the tensorboard package; "
                "pip install 'pipseg[tensorboard]' or set runtime.tensorboard=false"
            ) from None
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_train(self, iteration: int, record: Mapping[str, Any]) -> None:
        """The training figures of one log record (numbers only) under ``train/``."""
        for key, value in record.items():
            if key != "iter" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._scalar(f"train/{key}", value, iteration)

    def log_val(self, iteration: int, scores: Mapping[str, Any], classes: Sequence[str]) -> None:
        """Validation mIoU, pixel accuracy and per-class IoU (by class name) under ``val/``."""
        for key in ("miou", "pixel_accuracy", "mean_accuracy", "fw_iou"):
            if key in scores:
                self._scalar(f"val/{key}", scores[key], iteration)
        for name, value in zip(classes, scores.get("iou", []), strict=False):
            self._scalar(f"val_iou/{name}", value, iteration)

    def _scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None and not math.isnan(float(value)):
            self._writer.add_scalar(tag, float(value), step)

    def close(self) -> None:
        """Flush and close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
