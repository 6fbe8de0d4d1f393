"""Training losses: the PIP loss (PIP.md section 2) and plain cross-entropy.

Both take ``(logits [B,C,H,W], labels [B,H,W], boxes [B,M,5])`` on the logit grid and offer
``forward`` (a scalar) and ``forward_parts`` (the scalar and its parts, as tensors, for logging).
``to_logit_grid`` brings crop-sized labels and boxes onto that grid (PIP.md section 1).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipseg.box_search import (
    BoxExtremes,
    compiled_box_extremes,
    compiled_search_available,
    dense_box_extremes,
)
from pipseg.config import LossConfig
from pipseg.data.labels import IGNORE_INDEX

_BOX_DENOM_EPS = 1e-5  # the published code starts its (h + w) count at 1e-5
# How PIPLoss finds the box lines' extremes: "auto" (the compiled search for CPU tensors when
# Numba is installed, else the dense one) or "dense" (PyTorch, any device; see box_search.py).
_BOX_SEARCHES = ("auto", "dense")

__all__ = ["CrossEntropyLoss", "PIPLoss", "build_loss", "to_logit_grid"]


def to_logit_grid(labels: Tensor, boxes: Tensor, out_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Resize crop labels and boxes onto the ``H x W`` logit grid (PIP.md section 1).

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


def _gaussian_1d(radius: int, sigma: float) -> Tensor:
    """Normalised 1-D Gaussian of length ``2 * radius + 1`` (its outer product sums to 1)."""
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


def _blur_matrix(kernel: Tensor, size: int) -> Tensor:
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


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off inside the loss: its matmuls would otherwise run in half precision."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()  # e.g. the meta device


def _compute_dtype(logits: Tensor) -> torch.dtype:
    # Half-precision logits (autocast) are upcast: softmax, logs and the weights need float32.
    return torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else logits.dtype


def _check_shapes(logits: Tensor, labels: Tensor, boxes: Tensor | None) -> None:
    if logits.dim() != 4 or logits.numel() == 0:
        raise ValueError(f"logits must be a non-empty [B,C,H,W], got {tuple(logits.shape)}")
    b, _, h, w = logits.shape
    if tuple(labels.shape) != (b, h, w):
        raise ValueError(f"labels must be [B,H,W]={(b, h, w)}, got {tuple(labels.shape)}")
    if boxes is not None and (boxes.dim() != 3 or boxes.shape[0] != b or boxes.shape[2] != 5):
        raise ValueError(f"boxes must be [B,M,5] with B={b}, got {tuple(boxes.shape)}")


def _check_box_classes(boxes: Tensor, num_classes: int) -> None:
    # On CPU only, where reading the tensor is free; on a GPU the class gather asserts instead.
    if boxes.device.type == "cpu" and boxes.numel() and int(boxes[..., 4].max()) >= num_classes:
        raise ValueError(
            f"boxes: class {int(boxes[..., 4].max())} is not below the number of logit "
            f"channels ({num_classes})"
        )


class _BoxGeometry(NamedTuple):
    """The boxes of a batch as masks on the logit grid (boxes with no area are all-False)."""

    cls: Tensor  # [B, M] class per box (padding: < 0)
    row_in: Tensor  # [B, M, H] rows y0..y1 of each box
    col_in: Tensor  # [B, M, W] columns x0..x1
    row_inner: Tensor  # [B, M, H] rows y0+1..y1-1
    col_inner: Tensor  # [B, M, W] columns x0+1..x1-1
    lines: Tensor  # 0-dim: sum over the boxes of (h_b + w_b)

    @classmethod
    def from_boxes(cls, boxes: Tensor, height: int, width: int) -> _BoxGeometry:
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


class _PIPTerms(torch.autograd.Function):
    """``(lamb * L_box + L_pix, L_box, L_pix)`` from the logits, with a hand-written backward.

    Both terms are sums of per-entry functions of ``log P``: the pixel term reads one entry per
    pixel (its label), the box term four per box line (the arg-extremes). The forward pass
    records ``G = dterm / dlog P`` at those entries; the backward pass is then one dense pass,
    ``dL/dz = G - softmax(z) * sum_c G``, instead of autograd's graph of small ops and
    ``log_softmax``'s backward. Not differentiable twice.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, logits: Tensor, labels: Tensor, boxes: Tensor, crit: PIPLoss
    ) -> tuple[Tensor, Tensor, Tensor]:
        b, c, h, w = logits.shape
        # Contiguous (channels-last logits too): every index below is a flat NCHW index.
        log_probs = logits.log_softmax(dim=1).contiguous()  # autograd is off inside forward
        geometry = _BoxGeometry.from_boxes(boxes, h, w)

        keep = labels != IGNORE_INDEX
        safe_labels = labels.masked_fill(~keep, 0)[:, None]  # [B, 1, H, W]
        # (masked: an ignored pixel may have log P = -inf at class 0, and 0 * -inf is NaN)
        label_log_p = log_probs.gather(1, safe_labels).masked_fill_(~keep[:, None], 0.0)
        # dL_pix / dlog P[label]: L_pix is the mean of -g * log P[label] over all B*H*W pixels.
        pixel_grad = (crit._pixel_weights(geometry).to(logits.dtype) * keep)[:, None]
        pixel_grad.div_(-(b * h * w))
        pixel = (pixel_grad * label_log_p).sum()

        extremes = crit._box_extremes(log_probs, boxes, geometry)
        probs = extremes.log_p.exp()  # [2, K]: each line's max, then min
        kept = probs.clamp(crit.eps, 1 - crit.eps)
        top, bottom = kept
        line_loss = -(crit.alpha * top.log() + (1 - crit.alpha) * torch.log1p(-bottom))
        denom = geometry.lines.to(logits.dtype) + _BOX_DENOM_EPS
        # d/dlog P of -alpha log(P) is -alpha; of -(1 - alpha) log(1 - P) it is
        # (1 - alpha) P / (1 - P); both vanish where the clamp is active (as torch.clamp's).
        box_grad = (probs == kept) * torch.stack(
            [torch.full_like(top, -crit.alpha), (1 - crit.alpha) * bottom / (1 - bottom)]
        )
        box_grad.div_(denom)
        if extremes.keep is not None:  # lines outside a box hold finite junk: masked
            line_loss = line_loss * extremes.keep
            box_grad = box_grad * extremes.keep
        # line_loss >= 0, so an empty sum stays +0.0 and a batch without boxes logs box=0.
        box = line_loss.sum() / denom
        ctx.save_for_backward(
            log_probs, safe_labels, pixel_grad, extremes.index, extremes.pixel, box_grad
        )
        ctx.lamb = crit.lamb
        return crit.lamb * box + pixel, box, pixel

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx, grad_loss: Tensor, grad_box: Tensor, grad_pixel: Tensor
    ) -> tuple[Tensor, None, None, None]:
        log_probs, safe_labels, pixel_grad, box_index, box_pixel, box_grad = ctx.saved_tensors
        b, _, h, w = log_probs.shape
        pixel_grad = pixel_grad * (grad_loss + grad_pixel)  # [B, 1, H, W]
        box_grad = (box_grad * (grad_loss * ctx.lamb + grad_box)).view(-1)
        # sum_c G per pixel: the label entry, plus every box extreme that falls on the pixel.
        # (scatter_add_ rather than index_add_: about twice as fast on CPU for these sizes)
        per_pixel = pixel_grad.flatten().clone().scatter_add_(0, box_pixel.view(-1), box_grad)
        grad_logits = log_probs.exp().mul_(per_pixel.neg_().view(b, 1, h, w))
        grad_logits.scatter_add_(1, safe_labels, pixel_grad)
        grad_logits.view(-1).scatter_add_(0, box_index.view(-1), box_grad)
        return grad_logits, None, None, None


class PIPLoss(nn.Module):
    """``L = lamb * L_box + L_pix`` of PIP.md section 2, vectorised over images and boxes.

    Boxes are ``[B, M, 5]`` long ``(x0, y0, x1, y1, cls)``, inclusive, on the logit grid
    (see :func:`to_logit_grid`). Rows with ``cls < 0`` are padding; rows with ``x1 < x0`` or
    ``y1 < y0`` have no area and are skipped too (the published code skips ``h * w == 0``).
    Probabilities are clamped to ``[eps, 1 - eps]`` before the logs of the box term
    (PIP.md section 6). The backward pass is hand-written (one dense pass over the logits) and
    cannot be differentiated again.

    ``box_search`` picks how each box line's extremes are found (:mod:`pipseg.box_search`):
    ``"auto"`` uses the compiled search on CPU tensors when Numba is installed (its cost grows
    with the boxes' area; host-side by nature, which costs nothing on CPU) and the dense
    PyTorch search elsewhere, which makes no host sync; ``"dense"`` always uses the latter.
    """

    kernel: Tensor

    def __init__(
        self,
        lamb: float = 0.2,
        alpha: float = 0.5,
        tau: float = 5.0,
        radius: int = 5,
        sigma: float = 2.0,
        eps: float = 1e-6,
        box_search: str = "auto",
    ) -> None:
        super().__init__()
        if box_search not in _BOX_SEARCHES:
            raise ValueError(
                f"PIPLoss: box_search must be one of {_BOX_SEARCHES}, got {box_search!r}"
            )
        if radius < 0 or sigma <= 0 or not 0 < eps < 0.5:
            raise ValueError(
                f"PIPLoss: need radius >= 0, sigma > 0, 0 < eps < 0.5; got {radius}, {sigma}, {eps}"
            )
        self.lamb, self.alpha, self.tau = float(lamb), float(alpha), float(tau)
        self.radius, self.sigma, self.eps = int(radius), float(sigma), float(eps)
        self.box_search = box_search
        # Float64 buffer: the geometry weights are built in float64 (see _pixel_weights).
        self.register_buffer("kernel", _gaussian_1d(self.radius, self.sigma), persistent=False)
        self._blur_cache: dict[tuple[int, torch.device], Tensor] = {}

    def extra_repr(self) -> str:
        return (
            f"lamb={self.lamb}, alpha={self.alpha}, tau={self.tau}, radius={self.radius}, "
            f"sigma={self.sigma}, eps={self.eps}, box_search={self.box_search!r}"
        )

    def forward(self, logits: Tensor, labels: Tensor, boxes: Tensor) -> Tensor:
        """The scalar loss (see :meth:`forward_parts`)."""
        return self.forward_parts(logits, labels, boxes)["loss"]

    def forward_parts(self, logits: Tensor, labels: Tensor, boxes: Tensor) -> dict[str, Tensor]:
        """``dict(loss=lamb * box + pixel, box=L_box, pixel=L_pix)``, all 0-dim tensors
        (each can be backpropagated).

        Args:
            logits: ``[B, C, H, W]`` float (half precision is computed in float32).
            labels: ``[B, H, W]`` long, 255 = ignore.
            boxes: ``[B, M, 5]`` long on the logit grid; ``M`` may be 0.
        """
        _check_shapes(logits, labels, boxes)
        with _no_autocast(logits.device):
            logits = logits.to(_compute_dtype(logits))
            labels = labels.to(device=logits.device, dtype=torch.long)
            boxes = boxes.to(device=logits.device, dtype=torch.long)
            _check_box_classes(boxes, logits.shape[1])
            loss, box, pixel = _PIPTerms.apply(logits, labels, boxes, self)
            return {"loss": loss, "box": box, "pixel": pixel}

    def _box_extremes(
        self, log_probs: Tensor, boxes: Tensor, geometry: _BoxGeometry
    ) -> BoxExtremes:
        """Each box line's arg-max and arg-min of ``P[b, cls]`` (see :mod:`pipseg.box_search`)."""
        on_cpu = log_probs.device.type == "cpu"
        if self.box_search == "auto" and on_cpu and compiled_search_available():
            return compiled_box_extremes(log_probs, boxes)
        return dense_box_extremes(log_probs, geometry.cls, geometry.row_in, geometry.col_in)

    def _blur(self, size: int, device: torch.device) -> Tensor:
        """The float64 blur matrix for one axis length, cached (it only depends on the size)."""
        key = (size, device)
        if key not in self._blur_cache:
            kernel = self.kernel.to(device=device, dtype=torch.float64)
            self._blur_cache[key] = _blur_matrix(kernel, size)
        return self._blur_cache[key]

    def _pixel_weights(self, geometry: _BoxGeometry) -> Tensor:
        """``g(p)`` of PIP.md 2.2 as float64 ``[B, H, W]``: constants of the boxes only.

        Float64: the counts are exact, and no TF32/autocast can blur the Gaussian.
        """
        height, width = geometry.row_in.shape[-1], geometry.col_in.shape[-1]
        device = geometry.row_in.device
        f64 = torch.float64
        # Counting boxes per pixel = sum over boxes of (row mask outer col mask): a batched matmul.
        inside = geometry.row_in.to(f64).transpose(1, 2) @ geometry.col_in.to(f64)
        interior = geometry.row_inner.to(f64).transpose(1, 2) @ geometry.col_inner.to(f64)
        outline = inside - interior
        near = self._blur(height, device) @ outline @ self._blur(width, device).T + 1.0
        s = (inside + 1.0).mul_(near)
        gamma = torch.sigmoid(s.div_(s.amax())).mul_(self.tau).add_(1.0 - 0.5 * self.tau)
        return gamma.mul_((height * width) / gamma.sum(dim=(1, 2), keepdim=True))


class CrossEntropyLoss(nn.Module):
    """Plain per-pixel cross-entropy baseline with the same interface as :class:`PIPLoss`.

    Mean over the non-ignored pixels, as ``torch.nn.CrossEntropyLoss(ignore_index=255)``, except
    that a batch whose pixels are all ignored gives 0 instead of NaN. Boxes are ignored.
    (Note the PIP pixel term differs: there ignored pixels stay in the denominator.)
    """

    def forward(self, logits: Tensor, labels: Tensor, boxes: Tensor | None = None) -> Tensor:
        """The scalar loss."""
        return self.forward_parts(logits, labels, boxes)["loss"]

    def forward_parts(
        self, logits: Tensor, labels: Tensor, boxes: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``dict(loss=ce, box=0, pixel=ce)``, all 0-dim tensors, no host sync."""
        _check_shapes(logits, labels, boxes)
        with _no_autocast(logits.device):
            logits = logits.to(_compute_dtype(logits))
            ce = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
            count = (labels != IGNORE_INDEX).sum().clamp(min=1).to(logits.dtype)
            pixel = ce / count
            return {"loss": pixel, "box": torch.zeros_like(pixel), "pixel": pixel}


def build_loss(loss_cfg: LossConfig) -> nn.Module:
    """The loss named by ``loss_cfg.kind`` (``pip`` or ``ce``) with its parameters."""
    if loss_cfg.kind == "ce":
        return CrossEntropyLoss()
    if loss_cfg.kind == "pip":
        return PIPLoss(
            lamb=loss_cfg.lamb,
            alpha=loss_cfg.alpha,
            tau=loss_cfg.tau,
            radius=loss_cfg.radius,
            sigma=loss_cfg.sigma,
            eps=loss_cfg.eps,
            box_search=loss_cfg.box_search,
        )
    raise ValueError(f"loss.kind: unknown loss {loss_cfg.kind!r}; use 'pip' or 'ce'")
