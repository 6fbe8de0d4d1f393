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

``log P`` is monotone in ``P``: both search ``log_softmax`` values and return flat indices
into it. A tie resolves to one entry of the line (the first, in both), which then takes the
whole gradient, as ``torch.max(dim)`` does; any tied entry is a valid subgradient.
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
    Lines outside a box get an arbitrary in-range entry and an infinite ``log_p``; ``keep``
    masks them.
    """
    b, c, h, w = log_probs.shape
    cls = cls.clamp(min=0)
    m = cls.shape[1]
    keep = torch.cat([col_in, row_in], dim=-1)  # [B, M, W + H]: columns, then rows
    if m == 0:  # max_pool2d refuses zero channels
        empty = torch.zeros(2, 0, dtype=torch.long, device=log_probs.device)
        return BoxExtremes(log_probs.new_zeros(2, 0), empty, empty, keep.view(-1))
    highs, lows = _masked_planes(log_probs, cls, row_in, col_in)
    (top, top_at), (neg_bottom, bottom_at) = _max_lines(highs), _max_lines(lows)
    plane = torch.stack([top_at, bottom_at])  # [2, B, M, W + H]
    images = torch.arange(b, device=cls.device)[:, None, None]
    index = plane + ((images * c + cls[..., None]) * (h * w))
    pixel = plane + images * (h * w)
    log_p = torch.stack([top, neg_bottom.neg_()])
    # A P of exactly 0 was searched as the lowest float (see _masked_planes): report it as the
    # compiled search does, log P = -inf.
    log_p.masked_fill_(log_p <= torch.finfo(log_p.dtype).min, -math.inf)
    return BoxExtremes(log_p.view(2, -1), index.view(2, -1), pixel.view(2, -1), keep.view(-1))


def _masked_planes(
    log_probs: Tensor, cls: Tensor, row_in: Tensor, col_in: Tensor
) -> tuple[Tensor, Tensor]:
    """``log P`` and ``-log P`` of each box's class, -inf outside the box: ``[B, M, H, W]``
    views of channels-last ``[B, H, W, M]`` maps."""
    b, _, h, w = log_probs.shape
    m = cls.shape[1]
    # [B, H, W, M]: each box's class plane, boxes innermost.
    region = log_probs.permute(0, 2, 3, 1).gather(3, cls[:, None, None, :].expand(b, h, w, m))
    # log P is -inf where a logit is; the most negative finite value instead keeps -inf - -inf
    # out of the sums below (P = 0 there either way).
    region.clamp_(min=torch.finfo(region.dtype).min)
    # Contiguous [B, H, 1, M] and [B, 1, W, M]: 0 in a box's rows (columns), -inf outside.
    outside = torch.zeros((), dtype=region.dtype, device=region.device)
    row_mask = outside.masked_fill(~row_in.transpose(1, 2).contiguous(), -math.inf)[:, :, None]
    col_mask = outside.masked_fill(~col_in.transpose(1, 2).contiguous(), -math.inf)[:, None]
    # Adding masks beats masked_fill several times on CPU; in place where possible, as every
    # fresh [B, H, W, M] buffer costs page faults there.
    lows = torch.sub(row_mask, region).add_(col_mask).permute(0, 3, 1, 2)  # -log P inside
    highs = region.add_(row_mask).add_(col_mask).permute(0, 3, 1, 2)  # log P inside
    return highs, lows


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
    log_p, index, pixel = kernel(lp, boxes.contiguous().numpy())
    return BoxExtremes(*map(torch.from_numpy, (log_p, index, pixel)), None)


@functools.cache
def _compiled_kernel() -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, ...]]:
    """The CPU search, compiled by Numba on its first call in a process (per dtype)."""
    import numba  # imported here: it takes a moment and only the CPU loss needs it

    # No cache=True: compiling takes about a second, and a disk cache shared by parallel
    # processes (test workers, torchrun ranks) can race.
    jit = numba.njit(nogil=True, boundscheck=False)

    @jit
    def clip(boxes: np.ndarray, nc: int, h: int, w: int) -> tuple[np.ndarray, int]:
        """Boxes clipped to the grid (class -1 where no area is left), and their line count."""
        # Corners outside the grid are clipped to it, as the dense search's masks do; the
        # search reads memory without bounds checks, so nothing outside may get through.
        clipped = boxes.copy()
        total = 0
        for b in range(boxes.shape[0]):
            for k in range(boxes.shape[1]):
                x0, y0, x1, y1, cls = boxes[b, k]
                x0, y0 = max(x0, 0), max(y0, 0)
                x1, y1 = min(x1, w - 1), min(y1, h - 1)
                if cls < 0 or x1 < x0 or y1 < y0:
                    clipped[b, k, 4] = -1
                    continue
                if cls >= nc:
                    raise ValueError("a box's class is not below the number of logit channels")
                clipped[b, k, :4] = (x0, y0, x1, y1)
                total += (x1 - x0 + 1) + (y1 - y0 + 1)
        return clipped, total

    @jit
    def rows_of(plane, box, first, shift, log_p, index, pixel, line):  # noqa: ANN001, ANN202
        """Extremes of the box's rows in one class plane; returns the next free line."""
        x0, y0, x1, y1 = box[0], box[1], box[2], box[3]
        w = plane.shape[1]
        for y in range(y0, y1 + 1):
            row = plane[y]
            hi = row[x0]
            lo = hi
            arg_hi = x0
            arg_lo = x0
            for x in range(x0 + 1, x1 + 1):
                v = row[x]
                if v > hi:
                    hi = v
                    arg_hi = x
                if v < lo:
                    lo = v
                    arg_lo = x
            at = first + y * w
            log_p[0, line] = hi
            log_p[1, line] = lo
            pixel[0, line] = at + arg_hi
            pixel[1, line] = at + arg_lo
            index[0, line] = at + arg_hi + shift
            index[1, line] = at + arg_lo + shift
            line += 1
        return line

    @jit
    def columns_of(plane, box, first, shift, log_p, index, pixel, line):  # noqa: ANN001, ANN202
        """Extremes of the box's columns; a pass of its own: running extremes in registers beat
        updating per-column arrays inside the row pass (the plane is small enough for L1)."""
        x0, y0, x1, y1 = box[0], box[1], box[2], box[3]
        w = plane.shape[1]
        for x in range(x0, x1 + 1):
            hi = plane[y0, x]
            lo = hi
            arg_hi = y0
            arg_lo = y0
            for y in range(y0 + 1, y1 + 1):
                v = plane[y, x]
                if v > hi:
                    hi = v
                    arg_hi = y
                if v < lo:
                    lo = v
                    arg_lo = y
            log_p[0, line] = hi
            log_p[1, line] = lo
            pixel[0, line] = first + x + arg_hi * w
            pixel[1, line] = first + x + arg_lo * w
            index[0, line] = first + x + arg_hi * w + shift
            index[1, line] = first + x + arg_lo * w + shift
            line += 1
        return line

    @jit
    def search(lp: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        nb, nc, h, w = lp.shape
        clipped, total = clip(boxes, nc, h, w)
        log_p = np.empty((2, total), lp.dtype)
        index = np.empty((2, total), np.int64)
        pixel = np.empty((2, total), np.int64)
        line = 0
        for b in range(nb):
            for k in range(clipped.shape[1]):
                cls = clipped[b, k, 4]
                if cls < 0:
                    continue
                # pixel (b, y, x) of class plane cls sits at (b * C + cls) * H * W + y * W + x
                first, shift = b * h * w, (b * (nc - 1) + cls) * h * w
                plane, box = lp[b, cls], clipped[b, k]
                line = rows_of(plane, box, first, shift, log_p, index, pixel, line)
                line = columns_of(plane, box, first, shift, log_p, index, pixel, line)
        return log_p, index, pixel

    return search
