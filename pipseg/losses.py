"""Training losses: the PIP loss (PIP.md section 2) and plain cross-entropy.

Both take ``(logits [B,C,H,W], labels [B,H,W], boxes [B,M,5])`` on the logit grid and offer
``forward`` (a scalar) and ``forward_parts`` (the scalar and its parts, as tensors, for logging).
``to_logit_grid`` brings crop-sized labels and boxes onto that grid (PIP.md section 1).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipseg.config import LossConfig
from pipseg.data.labels import IGNORE_INDEX

_BOX_DENOM_EPS = 1e-5  # the published code starts its (h + w) count at 1e-5

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
    if logits.dim() != 4:
        raise ValueError(f"logits must be [B,C,H,W], got {tuple(logits.shape)}")
    b, _, h, w = logits.shape
    if tuple(labels.shape) != (b, h, w):
        raise ValueError(f"labels must be [B,H,W]={(b, h, w)}, got {tuple(labels.shape)}")
    if boxes is not None and (boxes.dim() != 3 or boxes.shape[0] != b or boxes.shape[2] != 5):
        raise ValueError(f"boxes must be [B,M,5] with B={b}, got {tuple(boxes.shape)}")


class _PickLogSoftmax(torch.autograd.Function):
    """``log_softmax(logits, 1)[b].flatten()[index[b, k]]`` with a sparse backward.

    Autograd would run a dense scatter, a dense add per branch and ``log_softmax``'s backward;
    here the gradient is written in one pass: ``dL/dz = G - softmax(z) * sum_c G`` where ``G``
    (the gradient w.r.t. the log-probabilities) is non-zero only at the picked entries.
    ``log_probs`` must be ``log_softmax(logits, 1)`` (computed once by the caller, no graph).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, log_probs: Tensor, index: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(log_probs, index)
        return log_probs.reshape(index.shape[0], -1).gather(1, index)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        log_probs, index = ctx.saved_tensors
        b, _, h, w = log_probs.shape
        grad = grad.contiguous()
        per_pixel = log_probs.new_zeros(b, h * w).scatter_add_(1, index % (h * w), grad)
        grad_logits = log_probs.exp().mul_(per_pixel.neg_().view(b, 1, h, w))
        grad_logits.view(b, -1).scatter_add_(1, index, grad)
        return grad_logits, None, None


class PIPLoss(nn.Module):
    """``L = lamb * L_box + L_pix`` of PIP.md section 2, vectorised over images and boxes.

    Boxes are ``[B, M, 5]`` long ``(x0, y0, x1, y1, cls)``, inclusive, on the logit grid
    (see :func:`to_logit_grid`). Rows with ``cls < 0`` are padding; rows with ``x1 < x0`` or
    ``y1 < y0`` have no area and are skipped too (the published code skips ``h * w == 0``).
    Probabilities are clamped to ``[eps, 1 - eps]`` before the logs of the box term
    (PIP.md section 6). The forward pass makes no host sync.
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
    ) -> None:
        super().__init__()
        if radius < 0 or sigma <= 0 or not 0 < eps < 0.5:
            raise ValueError(
                f"PIPLoss: need radius >= 0, sigma > 0, 0 < eps < 0.5; got {radius}, {sigma}, {eps}"
            )
        self.lamb, self.alpha, self.tau = float(lamb), float(alpha), float(tau)
        self.radius, self.sigma, self.eps = int(radius), float(sigma), float(eps)
        # Float64 buffer: the geometry weights are built in float64 (see _pixel_weights).
        self.register_buffer("kernel", _gaussian_1d(self.radius, self.sigma), persistent=False)
        self._blur_cache: dict[tuple[int, torch.device], Tensor] = {}

    def extra_repr(self) -> str:
        return (
            f"lamb={self.lamb}, alpha={self.alpha}, tau={self.tau}, radius={self.radius}, "
            f"sigma={self.sigma}, eps={self.eps}"
        )

    def forward(self, logits: Tensor, labels: Tensor, boxes: Tensor) -> Tensor:
        """The scalar loss (see :meth:`forward_parts`)."""
        return self.forward_parts(logits, labels, boxes)["loss"]

    def forward_parts(self, logits: Tensor, labels: Tensor, boxes: Tensor) -> dict[str, Tensor]:
        """``dict(loss=lamb * box + pixel, box=L_box, pixel=L_pix)``, all 0-dim tensors.

        Args:
            logits: ``[B, C, H, W]`` float (half precision is computed in float32).
            labels: ``[B, H, W]`` long, 255 = ignore.
            boxes: ``[B, M, 5]`` long on the logit grid; ``M`` may be 0.
        """
        _check_shapes(logits, labels, boxes)
        with _no_autocast(logits.device):
            logits = logits.to(_compute_dtype(logits))
            b, _, h, w = logits.shape
            device = logits.device
            boxes = boxes.to(device=device, dtype=torch.long)
            labels = labels.to(device=device, dtype=torch.long)
            x0, y0, x1, y1, cls = boxes.unbind(-1)  # each [B, M]
            valid = (cls >= 0) & (x1 >= x0) & (y1 >= y0)
            ys, xs = torch.arange(h, device=device), torch.arange(w, device=device)
            row_in = (ys >= y0[..., None]) & (ys <= y1[..., None]) & valid[..., None]  # [B,M,H]
            col_in = (xs >= x0[..., None]) & (xs <= x1[..., None]) & valid[..., None]  # [B,M,W]

            with torch.no_grad():
                log_probs = logits.log_softmax(dim=1)
            extremes = self._box_extremes(log_probs, cls, row_in, col_in)  # [B, M, 2W + 2H]
            ignore = labels == IGNORE_INDEX
            label_index = torch.where(ignore, 0, labels) * (h * w) + torch.arange(
                h * w, device=device
            ).view(h, w)
            # One gather of log P serves the cross-entropy and the box term.
            index = torch.cat([label_index.view(b, -1), extremes.view(b, -1)], dim=1)
            picked = _PickLogSoftmax.apply(logits, log_probs, index)
            label_log_p = picked[:, : h * w].view(b, h, w)
            col_max, col_min, row_max, row_min = (
                picked[:, h * w :].view(extremes.shape).exp().split([w, w, h, h], dim=-1)
            )

            box_sum = self._neg_log_terms(col_max, col_min, col_in)
            box_sum = box_sum + self._neg_log_terms(row_max, row_min, row_in)
            sizes = torch.where(valid, (x1 - x0 + 1) + (y1 - y0 + 1), 0).sum()
            box = box_sum / (_BOX_DENOM_EPS + sizes.to(logits.dtype))

            weights = self._pixel_weights(boxes, valid, row_in, col_in).to(logits.dtype)
            pixel = (weights * torch.where(ignore, 0.0, -label_log_p)).mean()
            return {"loss": self.lamb * box + pixel, "box": box, "pixel": pixel}

    @staticmethod
    @torch.no_grad()
    def _box_extremes(log_probs: Tensor, cls: Tensor, row_in: Tensor, col_in: Tensor) -> Tensor:
        """Flat indices into ``log_probs[b]`` of each box's column max, column min, row max and
        row min of ``P[b, cls]`` (``[B, M, 2W + 2H]``; entries for lines outside a box are
        arbitrary and masked later).

        Found without autograd on one ``[B, M, H, W]`` tensor; the values are then gathered
        with autograd, so the backward pass costs ``O(M * (H + W))`` per image, not
        ``O(M * H * W)``. log P is monotone in P, so its arg-extremes are those of P.
        """
        b, _, h, w = log_probs.shape
        device = log_probs.device
        cls = cls.clamp(min=0)
        region = log_probs[torch.arange(b, device=device)[:, None], cls]  # [B, M, H, W]
        # -inf outside each box, so maxima come from inside (log P is finite for finite logits).
        region.add_(torch.where(row_in, 0.0, -math.inf).to(region.dtype)[..., :, None])
        region.add_(torch.where(col_in, 0.0, -math.inf).to(region.dtype)[..., None, :])
        # max(dim).indices: far faster than argmax on CPU (torch 2.x).
        col_argmax = region.max(dim=2).indices  # [B, M, W]; lines outside a box: arbitrary
        row_argmax = region.max(dim=3).indices  # [B, M, H]
        # Minima as maxima of -log P, with the outside (now +inf) set back to -inf.
        region.neg_().nan_to_num_(posinf=-math.inf)
        col_argmin = region.max(dim=2).indices
        row_argmin = region.max(dim=3).indices
        base = cls[..., None] * (h * w)
        col_base = base + torch.arange(w, device=device)
        row_base = base + torch.arange(h, device=device) * w
        return torch.cat(
            [
                col_base + col_argmax * w,
                col_base + col_argmin * w,
                row_base + row_argmax,
                row_base + row_argmin,
            ],
            dim=-1,
        )

    def _neg_log_terms(self, top: Tensor, bottom: Tensor, keep: Tensor) -> Tensor:
        """``-sum [alpha log(max) + (1 - alpha) log(1 - min)]`` over the lines in ``keep``."""
        top = top.clamp(self.eps, 1 - self.eps)
        bottom = bottom.clamp(self.eps, 1 - self.eps)
        t = self.alpha * torch.log(top) + (1 - self.alpha) * torch.log1p(-bottom)
        # where, not multiply: lines outside a box hold values that must not count.
        # (Summing -t keeps an empty sum +0.0, so a batch without boxes logs box=0, not -0.)
        return torch.where(keep, -t, 0.0).sum()

    def _blur(self, size: int, device: torch.device) -> Tensor:
        """The float64 blur matrix for one axis length, cached (it only depends on the size)."""
        key = (size, device)
        if key not in self._blur_cache:
            kernel = self.kernel.to(device=device, dtype=torch.float64)
            self._blur_cache[key] = _blur_matrix(kernel, size)
        return self._blur_cache[key]

    @torch.no_grad()
    def _pixel_weights(
        self, boxes: Tensor, valid: Tensor, row_in: Tensor, col_in: Tensor
    ) -> Tensor:
        """``g(p)`` of PIP.md 2.2 as ``[B, H, W]``: constants of the boxes only (no gradient).

        Computed in float64: the counts are exact, and no TF32/autocast can blur the Gaussian.
        """
        x0, y0, x1, y1, _ = boxes.unbind(-1)
        height, width = row_in.shape[-1], col_in.shape[-1]
        ys = torch.arange(height, device=boxes.device)
        xs = torch.arange(width, device=boxes.device)
        row_inner = (ys > y0[..., None]) & (ys < y1[..., None]) & valid[..., None]
        col_inner = (xs > x0[..., None]) & (xs < x1[..., None]) & valid[..., None]
        f64 = torch.float64
        # Counting boxes per pixel = sum over boxes of (row mask outer col mask): a batched matmul.
        inside = torch.einsum("bmh,bmw->bhw", row_in.to(f64), col_in.to(f64))
        interior = torch.einsum("bmh,bmw->bhw", row_inner.to(f64), col_inner.to(f64))
        cover = inside + 1.0
        outline = inside - interior
        near = self._blur(height, boxes.device) @ outline @ self._blur(width, boxes.device).T + 1.0
        s = cover * near
        gamma = (torch.sigmoid(s / s.amax()) - 0.5) * self.tau + 1.0
        return gamma / gamma.sum(dim=(1, 2), keepdim=True) * (height * width)


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
        )
    raise ValueError(f"loss.kind: unknown loss {loss_cfg.kind!r}; use 'pip' or 'ce'")
