"""The compiled (Numba) box search behind :func:`pipseg.losses.box_search.compiled_box_extremes`.

Imported only when the CPU search first runs: importing Numba takes a moment. The functions read
memory without bounds checks; ``clip`` keeps every box inside the grid first.
"""

from __future__ import annotations

import numba
import numpy as np

# No cache=True: compiling takes about a second, and a disk cache shared by parallel processes
# (test workers, torchrun ranks) can race.
_jit = numba.njit(nogil=True, boundscheck=False)


@_jit
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


@_jit
def rest(lp: np.ndarray, b: int, cls: int, y: int, x: int) -> float:
    """``log(1 - P[cls])`` at ``(b, y, x)``: the log-sum-exp of the other classes' log P."""
    top = -np.inf
    for k in range(lp.shape[1]):
        if k != cls and lp[b, k, y, x] > top:
            top = lp[b, k, y, x]
    if top == -np.inf:
        return -np.inf
    total = 0.0
    for k in range(lp.shape[1]):
        if k != cls:
            total += np.exp(lp[b, k, y, x] - top)
    return top + np.log(total)


@_jit
def scan(
    lp: np.ndarray, b: int, cls: int, y: int, x: int, dy: int, dx: int, n: int, thr: float
) -> tuple[int, int]:
    """Steps from ``(y, x)`` to the line's maximum of P and to its minimum, over ``n``
    entries ``(dy, dx)`` apart; the minimum by the key of ``box_search._low_keys``."""
    plane = lp[b, cls]
    v = plane[y, x]
    hi, arg_hi, arg_lo = v, 0, 0
    lo_key = -v if v <= thr else rest(lp, b, cls, y, x)
    for i in range(1, n):
        v = plane[y + i * dy, x + i * dx]
        if v > hi:
            hi, arg_hi = v, i
        if v <= thr:
            if -v > lo_key:
                lo_key, arg_lo = -v, i
        elif lo_key < 0.0:  # the best so far has P > 1/2 too: compare 1 - P
            r = rest(lp, b, cls, y + i * dy, x + i * dx)
            if r > lo_key:
                lo_key, arg_lo = r, i
    return arg_hi, arg_lo


@_jit
def put(
    lp: np.ndarray, b: int, cls: int, y: int, x: int, side: int, line: int,
    log_p: np.ndarray, index: np.ndarray, pixel: np.ndarray,
) -> None:  # fmt: skip
    """Record entry ``(b, cls, y, x)`` as the line's maximum (side 0) or minimum (side 1)."""
    _, nc, h, w = lp.shape
    log_p[side, line] = lp[b, cls, y, x]
    pixel[side, line] = (b * h + y) * w + x
    index[side, line] = ((b * nc + cls) * h + y) * w + x


@_jit
def search(
    lp: np.ndarray, boxes: np.ndarray, thr: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(log_p, index, pixel)`` of :class:`~pipseg.losses.box_search.BoxExtremes` for
    ``[B, C, H, W]`` log-probabilities ``lp`` and long ``[B, M, 5]`` boxes; ``thr`` is
    ``log(1/2)`` in the dtype of ``lp``."""
    nb, nc, h, w = lp.shape
    clipped, total = clip(boxes, nc, h, w)
    log_p = np.empty((2, total), lp.dtype)
    index = np.empty((2, total), np.int64)
    pixel = np.empty((2, total), np.int64)
    line = 0
    for b in range(nb):
        for k in range(clipped.shape[1]):
            x0, y0, x1, y1, cls = clipped[b, k]
            if cls < 0:
                continue
            for y in range(y0, y1 + 1):  # the box's rows, then its columns
                arg_hi, arg_lo = scan(lp, b, cls, y, x0, 0, 1, x1 - x0 + 1, thr)
                put(lp, b, cls, y, x0 + arg_hi, 0, line, log_p, index, pixel)
                put(lp, b, cls, y, x0 + arg_lo, 1, line, log_p, index, pixel)
                line += 1
            for x in range(x0, x1 + 1):
                arg_hi, arg_lo = scan(lp, b, cls, y0, x, 1, 0, y1 - y0 + 1, thr)
                put(lp, b, cls, y0 + arg_hi, x, 0, line, log_p, index, pixel)
                put(lp, b, cls, y0 + arg_lo, x, 1, line, log_p, index, pixel)
                line += 1
    return log_p, index, pixel
