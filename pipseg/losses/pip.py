"""The PIP loss ``L = lamb * L_box + L_pix`` of docs/METHOD.md section 2, vectorised over images
and boxes, with a hand-written backward.

The box term's logs need no clamp. ``log(max P)`` is the log-softmax at each line's arg-max.
``log(1 - min P)`` is ``log1p(-P)`` where the minimum ``P <= 1/2`` (exact there), and above it
the log-sum-exp of the log-softmax over the *other* classes at the arg-min (``1 - P_c`` is the
sum of the other classes' ``P``), which stays exact where ``P_c`` rounds to 1 and ``log1p(-P_c)``
would be ``-inf``. The gradient of those lines is taken in the same form,
``(1 - alpha) P_c (onehot_c - softmax of the other classes)``, which is bounded, instead of
through ``dlog P_c = (1 - alpha) P_c / (1 - P_c)``, which is not. Values and gradients are
therefore finite and exact at any logit scale. Only a probability of exactly 0 (a logit of
``-inf``), where the published loss is infinite, enters the value as the dtype's smallest normal
number (``log`` of it: about -87 in float32, -708 in float64); its gradient stays the limit's.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from pipseg.losses._common import check_shapes, compute_dtype, no_autocast
from pipseg.losses.box_search import (
    BoxExtremes,
    compiled_box_extremes,
    compiled_search_available,
    dense_box_extremes,
)
from pipseg.losses.geometry import BoxGeometry, blur_matrix, gaussian_1d, pixel_weights

_BOX_DENOM_EPS = 1e-5  # the published code starts its (h + w) count at 1e-5
_HALF_LOG = math.log(0.5)  # a line minimum with log P above it takes the row form
# How PIPLoss finds the box lines' extremes: "auto" (the compiled search for CPU tensors when
# Numba is installed, else the dense one) or "dense" (PyTorch, any device; see box_search.py).
_BOX_SEARCHES = ("auto", "dense")

__all__ = ["PIPLoss"]


class _BoxLines(NamedTuple):
    """What the backward pass needs of ``L_box``: derivatives of ``L_box`` itself."""

    index: Tensor  # long [2, K]: flat [B, C, H, W] index of each line's arg-max, then arg-min
    pixel: Tensor  # long [2, K]: flat [B, H, W] index of the same pixels
    grad: Tensor  # [2, K]: dL_box / dlog P there (0 for masked lines and for row-form minima)
    row_pixel: Tensor  # long [R]: flat [B, H, W] pixel of each minimum taken in row form
    row_grad: Tensor  # [R, C]: dL_box / dz of every class at that pixel


def _finite_log(log_p: Tensor) -> Tensor:
    """``log_p`` with -inf (a probability of exactly 0) as log of the dtype's smallest normal."""
    floor = math.log(torch.finfo(log_p.dtype).tiny)
    return log_p.masked_fill(log_p == -math.inf, floor)


def _class_rows(pixel: Tensor, num_classes: int, plane: int) -> Tensor:
    """Flat ``[B, C, H, W]`` indices ``[K, C]`` of all classes at ``K`` flat ``[B,H,W]`` pixels."""
    classes = torch.arange(num_classes, device=pixel.device) * plane
    first = (pixel // plane) * (num_classes * plane) + pixel % plane
    return first[:, None] + classes


def _pixel_term(
    log_probs: Tensor, labels: Tensor, weights: Tensor, ignore_index: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``L_pix``, ``dL_pix / dlog P[label]`` as ``[B, 1, H, W]``, and the labels as gather indices
    ``[B, 1, H, W]`` (ignored pixels read class 0 with gradient 0)."""
    b, _, h, w = log_probs.shape
    keep = labels != ignore_index
    safe_labels = labels.masked_fill(~keep, 0)[:, None]
    # (masked: an ignored pixel may have log P = -inf at class 0, and 0 * -inf is NaN)
    label_log_p = log_probs.gather(1, safe_labels).masked_fill_(~keep[:, None], 0.0)
    # L_pix is the mean of -g * log P[label] over all B*H*W pixels, ignored ones included.
    pixel_grad = (weights.to(log_probs.dtype) * keep)[:, None].div_(-(b * h * w))
    return (pixel_grad * label_log_p).sum(), pixel_grad, safe_labels


def _row_lines(high: Tensor) -> Tensor:
    """The lines whose minimum takes the ``[R, C]`` row form: on CPU only those with ``P > 1/2``
    (reading the mask costs nothing there); elsewhere all, masked, so nothing waits on the host."""
    if high.device.type == "cpu":
        return high.nonzero()[:, 0]
    return torch.arange(high.numel(), device=high.device)


def _box_term(
    log_probs: Tensor, extremes: BoxExtremes, lines: Tensor, alpha: float
) -> tuple[Tensor, _BoxLines]:
    """``L_box`` from the lines' extremes, and its derivatives (see the module docstring)."""
    _, c, h, w = log_probs.shape
    denom = lines.to(log_probs.dtype) + _BOX_DENOM_EPS
    top, bottom = extremes.log_p
    keep = torch.ones_like(top, dtype=torch.bool) if extremes.keep is None else extremes.keep
    high = (bottom > _HALF_LOG) & keep
    log_rest = torch.log1p(-bottom.exp())  # log(1 - min P): exact where P <= 1/2
    at = _row_lines(high)
    # Where P > 1/2: every class of the arg-min pixel, the line's own masked: their LSE.
    row_pixel = extremes.pixel[1, at]
    rows = log_probs.view(-1)[_class_rows(row_pixel, c, h * w)]  # [R, C]
    own = ((extremes.index[1, at] // (h * w)) % c)[:, None]
    others = rows.scatter(1, own, -math.inf)
    row_rest = others.logsumexp(dim=1)
    log_rest = log_rest.index_copy(0, at, torch.where(high[at], row_rest, log_rest[at]))
    line_loss = -(alpha * _finite_log(top) + (1 - alpha) * _finite_log(log_rest))
    line_loss = line_loss.masked_fill(~keep, 0.0)  # lines outside a box hold finite junk
    # dL/dlog P: -alpha at the maximum; (1 - alpha) P / (1 - P) <= 1 - alpha at a minimum P <= 1/2.
    grad = torch.stack([torch.full_like(top, -alpha), (bottom - log_rest).exp_().mul_(1 - alpha)])
    grad = grad.masked_fill_(~torch.stack([keep, keep & ~high]), 0.0).div_(denom)
    # P > 1/2: d/dz of -(1 - alpha) log(1 - P_c) = (1 - alpha) P_c (onehot_c - Q), Q = softmax of
    # the other classes (0 where P_c = 1 exactly: the limit).
    q = torch.where(others > -math.inf, (others - row_rest[:, None]).exp(), 0.0)
    scale = rows.gather(1, own).exp_().mul_((1 - alpha) / denom) * high[at, None]  # [R, 1]
    row_grad = q.neg_().scatter_add_(1, own, torch.ones_like(scale)).mul_(scale)
    # line_loss >= 0 up to rounding, and an empty sum is +0.0: a batch without boxes logs box=0.
    box = line_loss.sum() / denom
    return box, _BoxLines(extremes.index, extremes.pixel, grad, row_pixel, row_grad)


class _PIPTerms(torch.autograd.Function):
    """``(lamb * L_box + L_pix, L_box, L_pix)`` from the logits, with a hand-written backward.

    Both terms are sums of per-entry functions of ``log P``: the pixel term reads one entry per
    pixel (its label), the box term two per box line (its arg-extremes). The forward pass
    records ``G = dterm / dlog P`` at those entries; the backward pass is then one dense pass,
    ``dL/dz = G - softmax(z) * sum_c G``, instead of autograd's graph of small ops and
    ``log_softmax``'s backward. A line minimum with ``P > 1/2``, where ``G`` grows without bound
    and the dense pass would cancel it against ``softmax * G``, adds its bounded ``dL/dz`` over
    the classes of its pixel instead (an ``[R, C]`` scatter). Not differentiable twice.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, logits: Tensor, labels: Tensor, boxes: Tensor, crit: PIPLoss
    ) -> tuple[Tensor, Tensor, Tensor]:
        _, _, h, w = logits.shape
        # Contiguous (channels-last logits too): every index below is a flat NCHW index.
        log_probs = logits.log_softmax(dim=1).contiguous()  # autograd is off inside forward
        geometry = BoxGeometry.from_boxes(boxes, h, w)
        weights = crit._pixel_weights(geometry)
        pixel, pixel_grad, safe_labels = _pixel_term(log_probs, labels, weights, crit.ignore_index)
        extremes = crit._box_extremes(log_probs, boxes, geometry)
        box, lines = _box_term(log_probs, extremes, geometry.lines, crit.alpha)
        ctx.save_for_backward(log_probs, safe_labels, pixel_grad, *lines)
        ctx.lamb = crit.lamb
        return crit.lamb * box + pixel, box, pixel

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx, grad_loss: Tensor, grad_box: Tensor, grad_pixel: Tensor
    ) -> tuple[Tensor, None, None, None]:
        log_probs, safe_labels, pixel_grad, *saved = ctx.saved_tensors
        lines = _BoxLines(*saved)
        b, c, h, w = log_probs.shape
        pixel_grad = pixel_grad * (grad_loss + grad_pixel)  # [B, 1, H, W]
        box_scale = grad_loss * ctx.lamb + grad_box
        box_grad = (lines.grad * box_scale).view(-1)
        # sum_c G per pixel: the label entry, plus every line extreme that falls on the pixel.
        # (scatter_add_ rather than index_add_: about twice as fast on CPU for these sizes)
        per_pixel = pixel_grad.flatten().clone().scatter_add_(0, lines.pixel.view(-1), box_grad)
        grad_logits = log_probs.exp().mul_(per_pixel.neg_().view(b, 1, h, w))
        grad_logits.scatter_add_(1, safe_labels, pixel_grad)
        flat = grad_logits.view(-1)
        flat.scatter_add_(0, lines.index.view(-1), box_grad)
        # Minima with P > 1/2 bring dL/dz of every class at their pixel (see _box_term).
        rows = _class_rows(lines.row_pixel, c, h * w)
        flat.scatter_add_(0, rows.view(-1), (lines.row_grad * box_scale).view(-1))
        return grad_logits, None, None, None


class PIPLoss(nn.Module):
    """``L = lamb * L_box + L_pix`` of docs/METHOD.md section 2, vectorised over images and boxes.

    Boxes are ``[B, M, 5]`` long ``(x0, y0, x1, y1, cls)``, inclusive, on the logit grid
    (see :func:`pipseg.losses.to_logit_grid`). Rows with ``cls < 0`` are padding; rows with
    ``x1 < x0`` or ``y1 < y0`` have no area and are skipped too (the published code skips
    ``h * w == 0``). The box term's logs are exact without a clamp (see this module's
    docstring). The backward pass is hand-written (one dense pass over the logits) and cannot
    be differentiated again. Labels equal to ``ignore_index`` take no part in ``L_pix``.

    ``box_search`` picks how each box line's extremes are found
    (:mod:`pipseg.losses.box_search`): ``"auto"`` uses the compiled search on CPU tensors when
    Numba is installed (its cost grows with the boxes' area; host-side by nature, which costs
    nothing on CPU) and the dense PyTorch search elsewhere, which makes no host sync;
    ``"dense"`` always uses the latter.
    """

    kernel: Tensor

    def __init__(
        self,
        lamb: float = 0.2,
        alpha: float = 0.5,
        tau: float = 5.0,
        radius: int = 5,
        sigma: float = 2.0,
        box_search: str = "auto",
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        if box_search not in _BOX_SEARCHES:
            raise ValueError(
                f"PIPLoss: box_search must be one of {_BOX_SEARCHES}, got {box_search!r}"
            )
        if radius < 0 or sigma <= 0:
            raise ValueError(f"PIPLoss: need radius >= 0 and sigma > 0; got {radius}, {sigma}")
        self.lamb, self.alpha, self.tau = float(lamb), float(alpha), float(tau)
        self.radius, self.sigma = int(radius), float(sigma)
        self.box_search, self.ignore_index = box_search, int(ignore_index)
        # Float64 buffer: the geometry weights are built in float64 (see geometry.py).
        self.register_buffer("kernel", gaussian_1d(self.radius, self.sigma), persistent=False)
        self._blur_cache: dict[tuple[int, torch.device], Tensor] = {}

    def extra_repr(self) -> str:
        return (
            f"lamb={self.lamb}, alpha={self.alpha}, tau={self.tau}, radius={self.radius}, "
            f"sigma={self.sigma}, box_search={self.box_search!r}, ignore_index={self.ignore_index}"
        )

    def forward(self, logits: Tensor, labels: Tensor, boxes: Tensor) -> Tensor:
        """The scalar loss (see :meth:`forward_parts`)."""
        return self.forward_parts(logits, labels, boxes)["loss"]

    def forward_parts(self, logits: Tensor, labels: Tensor, boxes: Tensor) -> dict[str, Tensor]:
        """``dict(loss=lamb * box + pixel, box=L_box, pixel=L_pix)``, all 0-dim tensors
        (each can be backpropagated).

        Args:
            logits: ``[B, C, H, W]`` float (half precision is computed in float32).
            labels: ``[B, H, W]`` long, ``ignore_index`` = ignore.
            boxes: ``[B, M, 5]`` long on the logit grid; ``M`` may be 0.
        """
        check_shapes(logits, labels, boxes)
        with no_autocast(logits.device):
            logits = logits.to(compute_dtype(logits))
            labels = labels.to(device=logits.device, dtype=torch.long)
            boxes = boxes.to(device=logits.device, dtype=torch.long)
            _check_box_classes(boxes, logits.shape[1])
            loss, box, pixel = _PIPTerms.apply(logits, labels, boxes, self)
            return {"loss": loss, "box": box, "pixel": pixel}

    def _box_extremes(
        self, log_probs: Tensor, boxes: Tensor, geometry: BoxGeometry
    ) -> BoxExtremes:
        """Each box line's arg-max and arg-min of ``P[b, cls]`` (see :mod:`.box_search`)."""
        on_cpu = log_probs.device.type == "cpu"
        if self.box_search == "auto" and on_cpu and compiled_search_available():
            return compiled_box_extremes(log_probs, boxes)
        return dense_box_extremes(log_probs, geometry.cls, geometry.row_in, geometry.col_in)

    def _blur(self, size: int, device: torch.device) -> Tensor:
        """The float64 blur matrix for one axis length, cached (it only depends on the size)."""
        key = (size, device)
        if key not in self._blur_cache:
            kernel = self.kernel.to(device=device, dtype=torch.float64)
            self._blur_cache[key] = blur_matrix(kernel, size)
        return self._blur_cache[key]

    def _pixel_weights(self, geometry: BoxGeometry) -> Tensor:
        """``g(p)`` of docs/METHOD.md section 2.2 as float64 ``[B, H, W]``."""
        height, width = geometry.row_in.shape[-1], geometry.col_in.shape[-1]
        device = geometry.row_in.device
        blur_h, blur_w = self._blur(height, device), self._blur(width, device)
        return pixel_weights(geometry, blur_h, blur_w, self.tau)


def _check_box_classes(boxes: Tensor, num_classes: int) -> None:
    # On CPU only, where reading the tensor is free; on a GPU the class gather asserts instead.
    if boxes.device.type == "cpu" and boxes.numel() and int(boxes[..., 4].max()) >= num_classes:
        raise ValueError(
            f"boxes: class {int(boxes[..., 4].max())} is not below the number of logit "
            f"channels ({num_classes})"
        )
