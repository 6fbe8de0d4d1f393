"""Where each box line's maximum and minimum of ``P[b, cls]`` lie (the search behind ``L_box``).

For every box and every column (row) crossing it, the PIP box term needs the arg-max and
arg-min of the class probability along that column (row) inside the box
(docs/METHOD.md section 2.1).
Two implementations give the same entries:

- :func:`dense_box_extremes`: PyTorch on any device, no host sync. It works on a
  ``[B, H, W, M]`` map per box, so its cost grows with ``M * H * W``.
- :func:`compiled_box_extremes`: a Numba loop for CPU tensors that reads each box's pixels once,
  so its cost grows with the boxes' area. It is several times faster on CPU from a few boxes
  per image on.

Both search ``log_softmax`` values and return flat indices into them. The maximum of ``P`` is
the maximum of ``log P``, which keeps every digit where ``P`` is small. The minimum of ``P`` is
searched on ``-log P`` where ``P <= 1/2`` and on ``log(1 - P)`` (the log-sum-exp of the other
classes) where ``P > 1/2``, since ``log P`` rounds to 0 as ``P`` nears 1 and would tie entries
whose ``1 - P`` differ by orders of magnitude. A tie resolves to one entry of the line (the
first, in both), which then takes the whole gradient, as ``torch.max(dim)`` does; any tied entry
is a valid subgradient.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

_HALF_LOG = math.log(0.5)  # above it, P > 1/2: the minimum is searched on log(1 - P) instead

__all__ = [
    "BoxExtremes",
    "compiled_box_extremes",
    "compiled_search_available",
    "dense_box_extremes",
]


class BoxExtremes(NamedTuple):
    """The arg-extremes of every box line, ``K`` lines in all."""

    log_p: Tensor  # [2, K]: log P at the line's maximum (row 0) and minimum (row 1); -inf: P = 0
    index: Tensor  # long [2, K]: where, as flat indices into log_probs [B, C, H, W]
    pixel: Tensor  # long [2, K]: the same entries as flat indices into the [B, H, W] pixels
    keep: Tensor | None  # bool [K]: which lines cross a box (None: all of them do)


def dense_box_extremes(
    log_probs: Tensor, cls: Tensor, row_in: Tensor, col_in: Tensor
) -> BoxExtremes:
    """Search every column and row of every box slot, ``K = B * M * (W + H)`` lines.

    Args:
        log_probs: ``[B, C, H, W]`` log-probabilities.
        cls: long ``[B, M]`` class of each box (padding may hold anything).
        row_in: bool ``[B, M, H]`` rows of each box (all False for padding).
        col_in: bool ``[B, M, W]`` columns of each box.

    The search is ``max_pool2d`` over whole columns and rows of a map that is -inf outside
    each box, laid out channels-last with the boxes innermost: that kernel vectorises over
    the boxes and is several times faster on CPU than ``max(dim)`` with indices.
    Lines outside a box get an arbitrary in-range entry; ``keep`` masks them.
    """
    b, c, h, w = log_probs.shape
    cls = cls.clamp(min=0)
    m = cls.shape[1]
    keep = torch.cat([col_in, row_in], dim=-1)  # [B, M, W + H]: columns, then rows
    if m == 0:  # max_pool2d refuses zero channels
        empty = torch.zeros(2, 0, dtype=torch.long, device=log_probs.device)
        return BoxExtremes(log_probs.new_zeros(2, 0), empty, empty, keep.view(-1))
    highs, lows = _masked_planes(log_probs, cls, row_in, col_in)
    (_, top_at), (_, bottom_at) = _max_lines(highs), _max_lines(lows)
    plane = torch.stack([top_at, bottom_at])  # [2, B, M, W + H]
    images = torch.arange(b, device=cls.device)[:, None, None]
    index = (plane + ((images * c + cls[..., None]) * (h * w))).view(2, -1)
    pixel = (plane + images * (h * w)).view(2, -1)
    # Read back rather than taken from the search: exact, -inf included (the planes clamp it).
    log_p = log_probs.reshape(-1)[index]
    return BoxExtremes(log_p, index, pixel, keep.view(-1))


def _masked_planes(
    log_probs: Tensor, cls: Tensor, row_in: Tensor, col_in: Tensor
) -> tuple[Tensor, Tensor]:
    """``log P`` and the :func:`_low_keys` of each box's class, -inf outside the box:
    ``[B, M, H, W]`` views of channels-last ``[B, H, W, M]`` maps."""
    b, _, h, w = log_probs.shape
    m = cls.shape[1]
    # [B, H, W, M]: each box's class plane, boxes innermost.
    region = log_probs.permute(0, 2, 3, 1).gather(3, cls[:, None, None, :].expand(b, h, w, m))
    # log P is -inf where a logit is; the most negative finite value instead keeps -inf - -inf
    # out of the sums below (P = 0 there either way).
    region.clamp_(min=torch.finfo(region.dtype).min)
    lows = _low_keys(log_probs, region)
    # Contiguous [B, H, 1, M] and [B, 1, W, M]: 0 in a box's rows (columns), -inf outside.
    outside = torch.zeros((), dtype=region.dtype, device=region.device)
    row_mask = outside.masked_fill(~row_in.transpose(1, 2).contiguous(), -math.inf)[:, :, None]
    col_mask = outside.masked_fill(~col_in.transpose(1, 2).contiguous(), -math.inf)[:, None]
    # Adding masks beats masked_fill several times on CPU; in place where possible, as every
    # fresh [B, H, W, M] buffer costs page faults there.
    lows = lows.add_(row_mask).add_(col_mask).permute(0, 3, 1, 2)
    highs = region.add_(row_mask).add_(col_mask).permute(0, 3, 1, 2)  # log P inside
    return highs, lows


def _low_keys(log_probs: Tensor, region: Tensor) -> Tensor:
    """Keys whose maximum along a line marks the line's minimum of P, at any logit scale.

    ``-log P`` where ``log P <= log(1/2)``, which holds every digit there, and ``log(1 - P)``
    where ``P > 1/2``, from the log-sum-exp of the other classes, where ``log P`` rounds to 0
    and ties. The first kind is ``>= log 2`` and the second ``< 0``, so every ``P <= 1/2``
    ranks above every larger ``P``, and within each kind the key falls as ``P`` grows. The
    compiled search compares the same keys.
    """
    # Only a pixel's top class can have P > 1/2: log(1 - P) of that class, per pixel.
    top_at = log_probs.argmax(dim=1, keepdim=True)
    top_rest = log_probs.scatter(1, top_at, -math.inf).logsumexp(dim=1)  # [B, H, W]
    return torch.where(region > _HALF_LOG, top_rest[..., None], -region)


def _max_lines(values: Tensor) -> tuple[Tensor, Tensor]:
    """Maximum of every column, then of every row, of ``[B, M, H, W]`` values, and its index
    in the ``H x W`` plane: both ``[B, M, W + H]``."""
    b, m, h, w = values.shape
    columns, column_at = F.max_pool2d(values, (h, 1), return_indices=True)
    rows, row_at = F.max_pool2d(values, (1, w), return_indices=True)
    return (
        torch.cat([columns.view(b, m, w), rows.view(b, m, h)], dim=-1),
        torch.cat([column_at.view(b, m, w), row_at.view(b, m, h)], dim=-1),
    )


@functools.cache
def compiled_search_available() -> bool:
    """True when Numba can be imported (the compiled CPU search needs it); asked once."""
    try:
        _compiled_kernel()
    except ImportError:
        return False
    return True


def compiled_box_extremes(log_probs: Tensor, boxes: Tensor) -> BoxExtremes:
    """Search only the lines that cross a box, ``K = sum of (h_b + w_b)``, on CPU tensors.

    Args:
        log_probs: CPU ``[B, C, H, W]`` float32 or float64 log-probabilities.
        boxes: CPU long ``[B, M, 5]`` inclusive ``(x0, y0, x1, y1, cls)`` on the grid; rows
            with ``cls < 0`` or no area are skipped, corners outside the grid are clipped.

    Raises:
        ImportError: Numba is not installed (use :func:`dense_box_extremes`).
        ValueError: a box's class is not below ``C``.
    """
    # The loop reads without bounds checks: the shapes must agree before it runs.
    if log_probs.dim() != 4 or boxes.dim() != 3 or boxes.shape[::2] != (log_probs.shape[0], 5):
        raise ValueError(
            f"compiled_box_extremes: need log_probs [B,C,H,W] and boxes [B,M,5], got "
            f"{tuple(log_probs.shape)} and {tuple(boxes.shape)}"
        )
    if log_probs.device.type != "cpu" or boxes.device.type != "cpu":
        raise ValueError("compiled_box_extremes: needs CPU tensors (use dense_box_extremes)")
    kernel = _compiled_kernel()
    lp = log_probs.detach().contiguous().numpy()
    threshold = lp.dtype.type(_HALF_LOG)  # in the dtype of log P, as the dense search compares
    log_p, index, pixel = kernel(lp, boxes.contiguous().numpy(), threshold)
    return BoxExtremes(*map(torch.from_numpy, (log_p, index, pixel)), None)


@functools.cache
def _compiled_kernel() -> Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The CPU search (:mod:`._kernels`); importing it imports Numba, which takes a moment and
    only the CPU loss needs. Numba compiles it on its first call in a process (per dtype)."""
    from pipseg.losses._kernels import search

    return search
