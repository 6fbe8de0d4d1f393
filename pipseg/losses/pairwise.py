"""A pairwise colour-affinity term inside boxes (BoxInst's, Tian et al. CVPR 2021, for classes).

For each pixel and its 8 neighbours at distance ``dilation`` on the logit grid, both inside some
box and of similar colour (``exp(-|Lab_i - Lab_j| / theta) >= threshold``, colours averaged onto
the grid), the term is ``-log sum_c p_i(c) p_j(c)``: the probability that the two share a class.
It averages over those pairs; an image without such pairs adds nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# sRGB (D65) to XYZ, and the D65 white point: the standard CIE constants.
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169),
               (0.019334, 0.119193, 0.950227))  # fmt: skip
_WHITE = (0.95047, 1.0, 1.08883)


def rgb_to_lab(images: Tensor) -> Tensor:
    """CIE Lab ``[B, 3, H, W]`` of sRGB images with values 0..255."""
    rgb = images.float() / 255.0
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = [
        sum(m * linear[:, k] for k, m in enumerate(row)) / w
        for row, w in zip(_RGB_TO_XYZ, _WHITE, strict=True)
    ]
    f = [
        torch.where(t > 0.008856, t.clamp(min=1e-12) ** (1 / 3), 7.787 * t + 16 / 116) for t in xyz
    ]
    return torch.stack([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])], dim=1)


def neighbour_offsets(dilation: int) -> list[tuple[int, int]]:
    """The 8 ``(dy, dx)`` neighbours at distance ``dilation``."""
    d = dilation
    return [(dy, dx) for dy in (-d, 0, d) for dx in (-d, 0, d) if (dy, dx) != (0, 0)]


def inside_boxes(boxes: Tensor, height: int, width: int) -> Tensor:
    """``bool [B, H, W]``: inside any box (inclusive grid ``(x0, y0, x1, y1, cls)``, cls -1 pads)."""
    ys = torch.arange(height, device=boxes.device).view(1, 1, height, 1)
    xs = torch.arange(width, device=boxes.device).view(1, 1, 1, width)
    x0, y0, x1, y1, cls = (boxes[..., k, None, None] for k in range(5))
    return ((ys >= y0) & (ys <= y1) & (xs >= x0) & (xs <= x1) & (cls >= 0)).any(1)


def _shift(t: Tensor, dy: int, dx: int) -> Tensor:
    """``out[..., y, x] = t[..., y + dy, x + dx]`` (zero where that falls outside)."""
    h, w = t.shape[-2:]
    padded = F.pad(t, (abs(dx), abs(dx), abs(dy), abs(dy)))
    return padded[..., abs(dy) + dy : abs(dy) + dy + h, abs(dx) + dx : abs(dx) + dx + w]


class PairwiseAffinityLoss(nn.Module):
    """``forward(logits [B,C,H,W], images [B,3,Hc,Wc] RGB 0..255, boxes [B,M,5] on the grid)``."""

    def __init__(self, dilation: int = 2, threshold: float = 0.3, theta: float = 2.0) -> None:
        super().__init__()
        self.dilation, self.threshold, self.theta = dilation, threshold, theta

    def forward(self, logits: Tensor, images: Tensor, boxes: Tensor) -> Tensor:
        h, w = logits.shape[-2:]
        lab = rgb_to_lab(F.interpolate(images.float(), size=(h, w), mode="area"))
        log_p = F.log_softmax(logits.float(), dim=1)
        inside = inside_boxes(boxes, h, w).float()
        total = logits.new_zeros(())
        count = logits.new_zeros(())
        for dy, dx in neighbour_offsets(self.dilation):
            similar = torch.exp(-(lab - _shift(lab, dy, dx)).norm(dim=1) / self.theta)
            pairs = inside * _shift(inside, dy, dx) * (similar >= self.threshold).float()
            log_same = torch.logsumexp(log_p + _shift(log_p, dy, dx), dim=1)
            total = total - (log_same * pairs).sum()
            count = count + pairs.sum()
        return total / count.clamp(min=1.0)


class WithPairwise(nn.Module):
    """``base`` plus ``weight`` x `PairwiseAffinityLoss`; its ``forward_parts`` also takes the
    crop images (``uses_images`` tells the trainer to pass them)."""

    uses_images = True

    def __init__(
        self, base: nn.Module, weight: float, pairwise: PairwiseAffinityLoss | None = None
    ) -> None:
        super().__init__()
        self.base, self.weight = base, weight
        self.pairwise = pairwise or PairwiseAffinityLoss()

    def forward_parts(
        self, logits: Tensor, labels: Tensor, boxes: Tensor, images: Tensor
    ) -> dict[str, Tensor]:
        parts = self.base.forward_parts(logits, labels, boxes)
        extra = self.weight * self.pairwise(logits, images, boxes)
        return {**parts, "loss": parts["loss"] + extra, "pairwise": extra}

    def forward(self, logits: Tensor, labels: Tensor, boxes: Tensor, images: Tensor) -> Tensor:
        return self.forward_parts(logits, labels, boxes, images)["loss"]
