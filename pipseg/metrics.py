"""Segmentation scores from a confusion matrix (docs/METHOD.md section 4)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["ConfusionMatrix", "confusion_counts", "scores_from_matrix"]


def _as_tensor(x: Any) -> Tensor:
    if isinstance(x, Tensor):
        return x
    return torch.from_numpy(np.ascontiguousarray(x))


def confusion_counts(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = 255
) -> np.ndarray:
    """Confusion counts ``[C, C]`` int64 (row = target) of one numpy pair, skipping ``ignore_index``
    targets. The caller checks that every counted id lies in ``[0, C)``."""
    valid = target != ignore_index
    index = target[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores_from_matrix(matrix: np.ndarray | Tensor) -> dict[str, Any]:
    """The figures of `ConfusionMatrix.compute` for a ``[C, C]`` count matrix."""
    cm = ConfusionMatrix(matrix.shape[0])
    cm.matrix = torch.as_tensor(np.asarray(matrix), dtype=torch.int64)
    return cm.compute()


class ConfusionMatrix:
    """Pixel confusion matrix over ``num_classes`` classes, accumulated by ``bincount``.

    ``matrix[t, p]`` counts pixels of target class ``t`` predicted as ``p`` (int64 ``[C, C]``),
    kept on the device of the last update. Target pixels equal to ``ignore_index`` are skipped.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> None:
        """Add one prediction/target pair of any matching shape (batched or not).

        Raises:
            ValueError: shapes differ, a prediction lies outside ``[0, C)``, or a target pixel
                lies outside ``[0, C)`` and is not ``ignore_index``.
        """
        pred_t, target_t = _as_tensor(pred), _as_tensor(target)
        if pred_t.shape != target_t.shape:
            raise ValueError(
                f"prediction shape {tuple(pred_t.shape)} != target shape {tuple(target_t.shape)}"
            )
        if pred_t.is_floating_point() or target_t.is_floating_point():
            raise ValueError("prediction and target must hold integer class ids (use argmax first)")
        target_t = target_t.to(pred_t.device)
        pred_t, target_t = pred_t.reshape(-1).long(), target_t.reshape(-1).long()
        c = self.num_classes
        keep = target_t != self.ignore_index
        # One host sync per update buys a clear error instead of a silently wrong matrix.
        bad_pred, bad_target = torch.stack(
            [
                ((pred_t < 0) | (pred_t >= c)).any(),
                (keep & ((target_t < 0) | (target_t >= c))).any(),
            ]
        ).tolist()
        if bad_pred:
            raise ValueError(f"prediction holds class ids outside [0, {c})")
        if bad_target:
            raise ValueError(
                f"target holds class ids outside [0, {c}) other than {self.ignore_index}"
            )
        counts = torch.bincount(target_t[keep] * c + pred_t[keep], minlength=c * c)
        self.matrix = self.matrix.to(counts.device) + counts.reshape(c, c)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts into this matrix (in place) and return ``self``."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                f"cannot merge a {other.num_classes}-class matrix (ignore {other.ignore_index}) into "
                f"a {self.num_classes}-class one (ignore {self.ignore_index})"
            )
        self.matrix = self.matrix + other.matrix.to(self.matrix.device)
        return self

    def reduce_from_all_processes(self) -> None:
        """Sum the matrix over all processes when torch.distributed is initialised; else no-op.

        With the NCCL backend the matrix must be on the process's CUDA device (update there).
        """
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix)

    def reset(self) -> None:
        """Zero the counts."""
        self.matrix = torch.zeros_like(self.matrix)

    def compute(self) -> dict[str, Any]:
        """Scores as Python floats.

        Returns ``miou``, ``pixel_accuracy``, ``mean_accuracy``, ``fw_iou`` and the per-class lists
        ``iou`` and ``accuracy``. A class absent from both target and prediction has NaN IoU and
        accuracy and is left out of the means. A class predicted but absent from the target has
        accuracy 0 (as torchmetrics' macro accuracy). With no pixel counted at all every score
        is NaN.
        """
        m = self.matrix.detach().to("cpu", torch.float64)
        tp = m.diag()
        target_count, pred_count = m.sum(1), m.sum(0)
        total = m.sum()
        union = target_count + pred_count - tp
        present = union > 0
        nan = torch.full_like(tp, math.nan)
        iou = torch.where(present, tp / union.clamp(min=1), nan)
        accuracy = torch.where(present, tp / target_count.clamp(min=1), nan)
        freq = target_count / total if total > 0 else nan
        return {
            "miou": _nanmean(iou),
            "pixel_accuracy": float(tp.sum() / total) if total > 0 else math.nan,
            "mean_accuracy": _nanmean(accuracy),
            "fw_iou": float((freq * iou.nan_to_num(0.0)).sum()) if total > 0 else math.nan,
            "iou": iou.tolist(),
            "accuracy": accuracy.tolist(),
        }


def _nanmean(values: Tensor) -> float:
    kept = values[~values.isnan()]
    return float(kept.mean()) if kept.numel() else math.nan
