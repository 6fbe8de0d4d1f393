"""Labels and boxes from crop pixels onto the logit grid (docs/METHOD.md section 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def to_logit_grid(labels: Tensor, boxes: Tensor, out_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Resize crop labels and boxes onto the ``H x W`` logit grid (docs/METHOD.md section 1).

    Args:
        labels: long ``[B, Hc, Wc]`` class ids, 255 = ignore.
        boxes: long ``[B, M, 5]`` inclusive ``(x0, y0, x1, y1, cls)`` in crop pixels;
            rows with ``cls == -1`` are padding and are returned unchanged.
        out_hw: ``(H, W)`` of the logits.

    Returns:
        ``labels_grid`` long ``[B, H, W]`` (nearest sampling at pixel centres) and
        ``boxes_grid`` long ``[B, M, 5]`` (x scaled by ``W / Wc``, y by ``H / Hc``, clipped to
        the grid, rounded half to even).
    """
    if labels.dim() != 3 or boxes.dim() != 3 or boxes.shape[-1] != 5:
        raise ValueError(
            f"to_logit_grid: expected labels [B,H,W] and boxes [B,M,5], got "
            f"{tuple(labels.shape)} and {tuple(boxes.shape)}"
        )
    height, width = int(out_hw[0]), int(out_hw[1])
    crop_h, crop_w = labels.shape[-2:]
    # Float32 holds every id 0..255 exactly; nearest-exact samples at pixel centres like PIL.
    grid_labels = F.interpolate(
        labels[:, None].float(), size=(height, width), mode="nearest-exact"
    )[:, 0].to(labels.dtype)

    # Float64 makes x * W / Wc exact enough that true halves stay halves for round-half-even.
    coords = boxes[..., :4].double()
    # Multiply before dividing so x * W is an exact integer and the one division rounds once.
    # Python scalars per column: no host-to-device copy of constants in the training step.
    xs = (coords[..., 0::2] * width / crop_w).clamp(0, width - 1)
    ys = (coords[..., 1::2] * height / crop_h).clamp(0, height - 1)
    scaled = torch.round(torch.stack([xs[..., 0], ys[..., 0], xs[..., 1], ys[..., 1]], dim=-1))
    padding = boxes[..., 4:5] < 0
    grid_coords = torch.where(padding, boxes[..., :4], scaled.to(boxes.dtype))
    return grid_labels, torch.cat([grid_coords, boxes[..., 4:5]], dim=-1)
