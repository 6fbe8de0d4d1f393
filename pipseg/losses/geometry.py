"""The boxes of a batch on the logit grid: their masks, and the pixel prior ``g(p)`` they give.

``g(p)`` is docs/METHOD.md section 2.2: box cover times a Gaussian blur of the box outlines,
squashed and normalised per image. It depends on the boxes only, so it is a constant of the
loss and is built in float64 (exact counts; no TF32 or autocast can blur the Gaussian).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class BoxGeometry(NamedTuple):
    """The boxes of a batch as masks on the logit grid (boxes with no area are all-False)."""

    cls: Tensor  # [B, M] class per box (padding: < 0)
    row_in: Tensor  # [B, M, H] rows y0..y1 of each box
    col_in: Tensor  # [B, M, W] columns x0..x1
    row_inner: Tensor  # [B, M, H] rows y0+1..y1-1
    col_inner: Tensor  # [B, M, W] columns x0+1..x1-1
    lines: Tensor  # 0-dim: sum over the boxes of (h_b + w_b)

    @classmethod
    def from_boxes(cls, boxes: Tensor, height: int, width: int) -> BoxGeometry:
        """Masks of long ``[B, M, 5]`` inclusive ``(x0, y0, x1, y1, cls)`` boxes on H x W."""
        x0, y0, x1, y1, box_cls = boxes.unbind(-1)
        # Boxes are meant to lie on the grid (to_logit_grid clips them): a corner outside is
        # clipped, as the compiled search does, and a box with no area left counts as no box.
        x0, y0 = x0.clamp(min=0), y0.clamp(min=0)
        x1, y1 = x1.clamp(max=width - 1), y1.clamp(max=height - 1)
        valid = (box_cls >= 0) & (x1 >= x0) & (y1 >= y0)
        # A box that is padding or has no area starts past the grid: its masks come out empty.
        x0, y0 = x0.masked_fill(~valid, width), y0.masked_fill(~valid, height)
        ys = torch.arange(height, device=boxes.device)
        xs = torch.arange(width, device=boxes.device)
        y0, y1, x0, x1 = y0[..., None], y1[..., None], x0[..., None], x1[..., None]
        row_in, col_in = (ys >= y0) & (ys <= y1), (xs >= x0) & (xs <= x1)
        return cls(
            cls=box_cls,
            row_in=row_in,
            col_in=col_in,
            row_inner=(ys > y0) & (ys < y1),
            col_inner=(xs > x0) & (xs < x1),
            lines=row_in.sum() + col_in.sum(),
        )


def gaussian_1d(radius: int, sigma: float) -> Tensor:
    """Normalised float64 1-D Gaussian of length ``2 * radius + 1`` (its outer square sums to 1)."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def _reflect_index(index: Tensor, size: int) -> Tensor:
    """Map indices outside ``[0, size)`` back inside by mirror reflection without repeating the
    edge (``np.pad(mode='reflect')``), applied as often as needed, so any radius works on any size.
    """
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    k = torch.remainder(index, period)
    return torch.where(k >= size, period - k, k)


def blur_matrix(kernel: Tensor, size: int) -> Tensor:
    """``[size, size]`` matrix ``A`` such that ``A @ x`` = Gaussian of reflect-padded ``x`` along
    its first axis. A matrix (instead of ``F.pad(mode='reflect')`` + conv) keeps maps smaller than
    the radius correct, where torch's reflect padding refuses ``pad >= size``.
    """
    radius = (kernel.numel() - 1) // 2
    offsets = torch.arange(-radius, radius + 1, device=kernel.device)
    rows = torch.arange(size, device=kernel.device)
    cols = _reflect_index(rows[:, None] + offsets[None, :], size)
    weights = kernel.expand(size, -1)
    return kernel.new_zeros(size, size).scatter_add_(1, cols, weights)


def pixel_weights(geometry: BoxGeometry, blur_h: Tensor, blur_w: Tensor, tau: float) -> Tensor:
    """``g(p)`` of docs/METHOD.md section 2.2 as float64 ``[B, H, W]``.

    Args:
        geometry: the batch's boxes.
        blur_h, blur_w: float64 :func:`blur_matrix` for the grid's height and width.
        tau: the prior's strength.
    """
    height, width = geometry.row_in.shape[-1], geometry.col_in.shape[-1]
    f64 = torch.float64
    # Counting boxes per pixel = sum over boxes of (row mask outer col mask): a batched matmul.
    inside = geometry.row_in.to(f64).transpose(1, 2) @ geometry.col_in.to(f64)
    interior = geometry.row_inner.to(f64).transpose(1, 2) @ geometry.col_inner.to(f64)
    outline = inside - interior
    near = blur_h @ outline @ blur_w.T + 1.0
    s = (inside + 1.0).mul_(near)
    gamma = torch.sigmoid(s.div_(s.amax())).mul_(tau).add_(1.0 - 0.5 * tau)
    return gamma.mul_((height * width) / gamma.sum(dim=(1, 2), keepdim=True))
