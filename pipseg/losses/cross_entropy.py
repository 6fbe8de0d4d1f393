"""The plain per-pixel cross-entropy baseline, with the same interface as the PIP loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipseg.losses._common import check_shapes, compute_dtype, no_autocast


class CrossEntropyLoss(nn.Module):
    """Plain per-pixel cross-entropy baseline with the same interface as ``PIPLoss``.

    Mean over the non-ignored pixels, as ``torch.nn.CrossEntropyLoss(ignore_index=...)``, except
    that a batch whose pixels are all ignored gives 0 instead of NaN. Boxes are ignored.
    (Note the PIP pixel term differs: there ignored pixels stay in the denominator.)
    """

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}"

    def forward(self, logits: Tensor, labels: Tensor, boxes: Tensor | None = None) -> Tensor:
        """The scalar loss."""
        return self.forward_parts(logits, labels, boxes)["loss"]

    def forward_parts(
        self, logits: Tensor, labels: Tensor, boxes: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``dict(loss=ce, box=0, pixel=ce)``, all 0-dim tensors, no host sync."""
        check_shapes(logits, labels, boxes)
        with no_autocast(logits.device):
            logits = logits.to(compute_dtype(logits))
            ce = F.cross_entropy(logits, labels, ignore_index=self.ignore_index, reduction="sum")
            count = (labels != self.ignore_index).sum().clamp(min=1).to(logits.dtype)
            pixel = ce / count
            return {"loss": pixel, "box": torch.zeros_like(pixel), "pixel": pixel}
