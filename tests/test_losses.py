"""PIPLoss against an independent naive implementation written straight from METHOD.md section 2.

The oracle below loops over images, boxes and box lines in float64 with plain autograd, builds
its own 2-D Gaussian and pads with ``np.pad(mode="reflect")``; it shares no code with
``pipseg.losses`` and clamps nothing.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipseg.config import LossConfig
from pipseg.engine.criterion import build_loss
from pipseg.losses import (
    CrossEntropyLoss,
    PIPLoss,
    compiled_box_extremes,
    compiled_search_available,
    dense_box_extremes,
    to_logit_grid,
)
from pipseg.losses.geometry import BoxGeometry

DEFAULTS = dict(lamb=0.2, alpha=0.5, tau=5.0, radius=5, sigma=2.0)
SEARCHES = ["auto", "dense"]


# --------------------------------------------------------------------------- naive oracle
def naive_pixel_weights(boxes: np.ndarray, h: int, w: int, tau: float, r: int, sigma: float):
    """g(p) for every image, docs/METHOD.md 2.2, with explicit loops (numpy float64)."""
    b_count = boxes.shape[0]
    ax = np.arange(-r, r + 1, dtype=np.float64)
    kernel = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    s = np.zeros((b_count, h, w))
    for b in range(b_count):
        cover = np.ones((h, w))
        outline = np.zeros((h, w))
        for x0, y0, x1, y1, c in boxes[b]:
            if c == -1:
                continue
            cover[y0 : y1 + 1, x0 : x1 + 1] += 1
            ring = np.zeros((h, w))
            ring[y0 : y1 + 1, x0 : x1 + 1] = 1
            ring[y0 + 1 : y1, x0 + 1 : x1] = 0
            outline += ring
        padded = np.pad(outline, r, mode="reflect")
        near = np.ones((h, w))
        for i in range(h):
            for j in range(w):
                near[i, j] += (kernel * padded[i : i + 2 * r + 1, j : j + 2 * r + 1]).sum()
        s[b] = cover * near
    m = s.max()
    gamma = (1.0 / (1.0 + np.exp(-s / m)) - 0.5) * tau + 1.0
    return gamma / gamma.sum(axis=(1, 2), keepdims=True) * h * w


def naive_pip(logits, labels, boxes, lamb, alpha, tau, radius, sigma):
    """(loss, box, pixel) from the equations in float64; autograd flows through ``logits``.

    No clamp anywhere. ``1 - P`` is written as the sum of the other classes' ``P`` (the same
    number: float64 cannot hold ``1 - P`` once ``P`` rounds to 1, at large logits).
    """
    b_count, c_count, h, w = logits.shape
    probs = torch.softmax(logits.double(), dim=1)
    box_sum = 0.0 * logits.sum()  # keeps the graph when there is no box
    sizes = 1e-5
    for b in range(b_count):
        for x0, y0, x1, y1, c in boxes[b].tolist():
            if c == -1:
                continue
            region = probs[b, c, y0 : y1 + 1, x0 : x1 + 1]
            others = [k for k in range(c_count) if k != c]
            rest = probs[b, others, y0 : y1 + 1, x0 : x1 + 1].sum(dim=0)  # 1 - region
            lines = [(region[:, j], rest[:, j]) for j in range(region.shape[1])]
            lines += [(region[i, :], rest[i, :]) for i in range(region.shape[0])]
            for line, line_rest in lines:  # 1 - min P = max (1 - P)
                box_sum = (
                    box_sum + alpha * torch.log(line.max()) + (1 - alpha) * torch.log(line_rest.max())
                )
            sizes += (y1 - y0 + 1) + (x1 - x0 + 1)
    l_box = -box_sum / sizes

    g = torch.as_tensor(
        naive_pixel_weights(boxes.numpy(), h, w, tau, radius, sigma), dtype=torch.float64
    )
    logp = torch.log_softmax(logits.double(), dim=1)
    total = logp.new_zeros(())
    for b in range(b_count):
        for i in range(h):
            for j in range(w):
                y = int(labels[b, i, j])
                if y != 255:
                    total = total - g[b, i, j] * logp[b, y, i, j]
    l_pix = total / (b_count * h * w)
    return lamb * l_box + l_pix, l_box, l_pix


def published_clamped_box(logits, boxes, alpha, eps):
    """The box term as pipseg 0.1.0 computed it: P clamped to
    ``[eps, 1 - eps]`` before the logs (kept only to show what the clamp lost)."""
    probs = torch.softmax(logits.double(), dim=1)
    total, sizes = 0.0 * logits.sum(), 1e-5
    for b in range(logits.shape[0]):
        for x0, y0, x1, y1, c in boxes[b].tolist():
            region = probs[b, c, y0 : y1 + 1, x0 : x1 + 1]
            for dim in (0, 1):
                top = region.max(dim=dim).values.clamp(eps, 1 - eps)
                bottom = region.min(dim=dim).values.clamp(eps, 1 - eps)
                total = total - (alpha * top.log() + (1 - alpha) * torch.log(1 - bottom)).sum()
            sizes += (y1 - y0 + 1) + (x1 - x0 + 1)
    return total / sizes


# --------------------------------------------------------------------------- random cases
def random_box(rng: np.random.Generator, h: int, w: int, c: int) -> list[int]:
    kind = rng.integers(0, 6)
    if kind == 0:  # one pixel
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        return [x, y, x, y, c]
    if kind == 1:  # whole map: touches every border
        return [0, 0, w - 1, h - 1, c]
    if kind == 2:  # one row / one column line
        x0, x1 = sorted(rng.integers(0, w, 2).tolist())
        y = int(rng.integers(0, h))
        return [x0, y, x1, y, c] if rng.random() < 0.5 else [y % w, 0, y % w, h - 1, c]
    if kind == 3:  # touches the right/bottom border
        return [int(rng.integers(0, w)), int(rng.integers(0, h)), w - 1, h - 1, c]
    x0, x1 = sorted(rng.integers(0, w, 2).tolist())
    y0, y1 = sorted(rng.integers(0, h, 2).tolist())
    return [x0, y0, x1, y1, c]


def random_case(seed: int, std: float = 3.0, box_class: str = "random"):
    """Random logits (standard deviation ``std``), labels, padded boxes and loss parameters.

    ``box_class``: "random" leaves the logits as drawn; "absent" lowers each image's box
    classes by ``6 std + 10`` everywhere (no pixel of the class scores high: line maxima of P far
    below 1e-6, where a clamp zeroed the gradient); "dominant" raises them by as much (line
    minima of P round to 1, where ``log(1 - P)`` is -inf when taken literally).
    """
    rng = np.random.default_rng(seed)
    b_count = int(rng.integers(1, 4))
    c_count = int(rng.integers(2, 6))
    h, w = int(rng.integers(1, 14)), int(rng.integers(1, 14))
    m = int(rng.integers(0, 6))
    boxes = np.full((b_count, m, 5), -1, dtype=np.int64)
    boxes[..., :4] = rng.integers(0, 3, (b_count, m, 4))  # padding rows carry junk corners
    for b in range(b_count):
        n = int(rng.integers(0, m + 1))  # some images have no box at all
        for k in range(n):
            boxes[b, k] = random_box(rng, h, w, int(rng.integers(0, c_count)))
        if n > 1 and rng.random() < 0.5:  # a nested copy shrunk by one pixel
            x0, y0, x1, y1, c = boxes[b, 0]
            boxes[b, n - 1] = [x0, y0, max(x0, x1 - 1), max(y0, y1 - 1), c]
        rng.shuffle(boxes[b])  # padding rows anywhere
    labels = rng.integers(0, c_count, (b_count, h, w))
    labels[rng.random((b_count, h, w)) < 0.2] = 255
    if rng.random() < 0.1:
        labels[:] = 255
    logits = torch.as_tensor(rng.normal(0, std, (b_count, c_count, h, w)), dtype=torch.float64)
    shift = {"random": 0.0, "absent": -(6 * std + 10), "dominant": 6 * std + 10}[box_class]
    for b in range(b_count):
        for c in set(boxes[b, :, 4].tolist()) - {-1}:
            logits[b, c] += shift
    params = dict(
        lamb=float(rng.uniform(0, 1)),
        alpha=float(rng.uniform(0, 1)),
        tau=float(rng.uniform(0, 8)),
        radius=int(rng.integers(0, 7)),
        sigma=float(rng.uniform(0.5, 3)),
    )
    if seed % 3 == 0:
        params = dict(DEFAULTS)
    return logits, torch.as_tensor(labels), torch.as_tensor(boxes), params


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-12)


# --------------------------------------------------------------------------- value tests
@pytest.mark.parametrize("box_search", ["auto", "dense"])
@pytest.mark.parametrize("seed", range(40))
def test_matches_naive_value_and_gradient(seed: int, box_search: str) -> None:
    logits, labels, boxes, params = random_case(seed)
    z1 = logits.clone().requires_grad_(True)
    z2 = logits.clone().requires_grad_(True)
    parts = PIPLoss(**params, box_search=box_search).forward_parts(z1, labels, boxes)
    loss, box, pixel = naive_pip(z2, labels, boxes, **params)
    assert parts["loss"].dtype == torch.float64
    assert_close(parts["box"], box)
    assert_close(parts["pixel"], pixel)
    assert_close(parts["loss"], loss)
    # Every output carries its own gradient (the backward is hand-written for all three).
    (parts["loss"] + 0.3 * parts["box"] - 0.7 * parts["pixel"]).backward()
    (loss + 0.3 * box - 0.7 * pixel).backward()
    assert_close(z1.grad, z2.grad)


def assert_matches_oracle(logits: torch.Tensor, labels, boxes, params, box_search: str) -> None:
    """Value and gradient of all three outputs against :func:`naive_pip` on the float64 copy of
    ``logits``; float32 and lower within float32 rounding (relative to the gradient's scale)."""
    z1 = logits.detach().clone().requires_grad_(True)
    z2 = logits.detach().double().clone().requires_grad_(True)
    parts = PIPLoss(**params, box_search=box_search).forward_parts(z1, labels, boxes)
    expected = naive_pip(z2, labels, boxes, **params)
    (parts["loss"] + 0.3 * parts["box"] - 0.7 * parts["pixel"]).backward()
    (expected[0] + 0.3 * expected[1] - 0.7 * expected[2]).backward()
    if logits.dtype == torch.float64:
        for name, value in zip(("loss", "box", "pixel"), expected, strict=True):
            assert_close(parts[name], value)
        assert_close(z1.grad, z2.grad)
        return
    for name, value in zip(("loss", "box", "pixel"), expected, strict=True):
        torch.testing.assert_close(parts[name].double(), value, rtol=2e-6, atol=1e-6)
    scale = z2.grad.abs().max().item()
    torch.testing.assert_close(z1.grad.double(), z2.grad, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("box_search", SEARCHES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("box_class", ["random", "absent", "dominant"])
@pytest.mark.parametrize("std", [1.0, 3.0, 10.0])
@pytest.mark.parametrize("seed", [100, 101, 102])
def test_matches_unclamped_oracle_at_every_logit_scale(
    seed: int, std: float, box_class: str, dtype: torch.dtype, box_search: str
) -> None:
    logits, labels, boxes, params = random_case(seed, std=std, box_class=box_class)
    assert_matches_oracle(logits.to(dtype), labels, boxes, params, box_search)


@pytest.mark.parametrize("box_class", ["random", "dominant"])
def test_the_accelerator_path_takes_every_line_in_row_form(
    box_class: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off the CPU every line minimum goes through the [K, C] row form, masked (no host sync):
    the same loss and gradient as the CPU's selection, against the oracle."""
    import pipseg.losses.pip as pip_module

    logits, labels, boxes, params = random_case(105, std=10.0, box_class=box_class)
    monkeypatch.setattr(
        pip_module, "_row_lines", lambda high: torch.arange(high.numel(), device=high.device)
    )
    for box_search in SEARCHES:
        assert_matches_oracle(logits, labels, boxes, params, box_search)
        assert_matches_oracle(logits.float(), labels, boxes, params, box_search)


@pytest.mark.parametrize("box_search", SEARCHES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lines_below_the_old_clamp_get_their_gradient(dtype: torch.dtype, box_search: str) -> None:
    """The 0.1.0 failure: every line of a box whose class scores low everywhere has max P below
    the clamp's 1e-6, so the clamp zeroed the whole box term's gradient. It must not be zero."""
    torch.manual_seed(13)
    logits = torch.randn(1, 3, 5, 6, dtype=torch.float64)
    logits[0, 1] -= 20.0  # P(class 1) about 1e-9 everywhere
    labels = torch.full((1, 5, 6), 255)  # no pixel term: only the box term acts
    boxes = torch.tensor([[[1, 0, 4, 3, 1]]])
    assert torch.softmax(logits, 1)[0, 1].max() < 1e-6
    z = logits.clone().requires_grad_(True)
    published_clamped_box(z, boxes, alpha=0.5, eps=1e-6).backward()
    assert (z.grad == 0).all()  # what the clamp did: no gradient at all
    assert_matches_oracle(logits.to(dtype), labels, boxes, DEFAULTS, box_search)
    z = logits.to(dtype).requires_grad_(True)
    PIPLoss(box_search=box_search)(z, labels, boxes).backward()
    # Every line pulls its maximum of class 1 up: 4 rows + 4 columns, each at least one entry.
    assert (z.grad[0, 1, 0:4, 1:5] < 0).sum() >= 4


@pytest.mark.parametrize("box_search", SEARCHES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("std", [30.0, 100.0, 1e4])
def test_any_logit_scale_gives_finite_nonzero_gradients(
    std: float, dtype: torch.dtype, box_search: str
) -> None:
    for box_class in ("random", "absent", "dominant"):
        logits, labels, boxes, params = random_case(7, std=std, box_class=box_class)
        z = logits.to(dtype).requires_grad_(True)
        parts = PIPLoss(**params, box_search=box_search).forward_parts(z, labels, boxes)
        parts["box"].backward()
        assert all(torch.isfinite(v) for v in parts.values()), box_class
        assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0, box_class


def test_default_case_at_training_size() -> None:
    """41x41 grid, several classes and boxes, the paper's parameters."""
    rng = np.random.default_rng(7)
    logits = torch.as_tensor(rng.normal(0, 2, (2, 21, 41, 41)))
    labels = torch.as_tensor(rng.integers(0, 21, (2, 41, 41)))
    boxes = torch.as_tensor(
        [[[3, 4, 30, 40, 5], [0, 0, 40, 40, 12], [10, 10, 12, 11, 5]],
         [[20, 0, 40, 20, 1], [-1, -1, -1, -1, -1], [-1, -1, -1, -1, -1]]]
    )  # fmt: skip
    parts = PIPLoss().forward_parts(logits, labels, boxes)
    _, box, pixel = naive_pip(logits, labels, boxes, **DEFAULTS)
    assert_close(parts["box"], box)
    assert_close(parts["pixel"], pixel)


def test_gradcheck() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 5, 6))
    labels[0, 0, :3] = 255
    boxes = torch.tensor([[[0, 0, 3, 2, 1], [2, 1, 5, 4, 2]], [[1, 1, 1, 1, 2], [0, 0, 0, 0, -1]]])
    loss_fn = PIPLoss(radius=2, sigma=1.0)
    assert torch.autograd.gradcheck(lambda z: loss_fn(z, labels, boxes), (logits,))


@pytest.mark.parametrize("m", [0, 3])
def test_no_boxes_gives_zero_box_term_and_uniform_weights(m: int) -> None:
    torch.manual_seed(1)
    logits = torch.randn(3, 4, 6, 7, dtype=torch.float64)
    labels = torch.randint(0, 4, (3, 6, 7))
    labels[1, 2:4] = 255
    boxes = torch.full((3, m, 5), -1, dtype=torch.long)
    parts = PIPLoss().forward_parts(logits, labels, boxes)
    assert parts["box"].item() == 0.0 and math.copysign(1.0, parts["box"].item()) == 1.0
    # No box: every weight is 1, so L_pix is the CE mean over all pixels, ignored ones as 0.
    ce = F.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    assert_close(parts["pixel"], ce.mean())
    assert_close(parts["loss"], ce.mean())


def test_all_ignore_labels_leave_only_the_box_term() -> None:
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    labels = torch.full((2, 8, 8), 255)
    boxes = torch.tensor([[[1, 2, 5, 6, 1]], [[0, 0, 7, 7, 2]]])
    loss_fn = PIPLoss(lamb=0.7)
    parts = loss_fn.forward_parts(logits, labels, boxes)
    assert parts["pixel"].item() == 0.0
    _, box, _ = naive_pip(logits, labels, boxes, **{**DEFAULTS, "lamb": 0.7})
    assert_close(parts["loss"], 0.7 * box)
    parts["loss"].backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("hw", [(1, 1), (1, 9), (2, 13), (5, 5), (6, 3)])
def test_maps_not_larger_than_the_radius(hw: tuple[int, int]) -> None:
    h, w = hw
    torch.manual_seed(3)
    logits = torch.randn(2, 3, h, w, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, h, w))
    boxes = torch.tensor([[[0, 0, w - 1, h - 1, 1], [w // 2, h // 2, w - 1, h - 1, 2]],
                          [[w - 1, 0, w - 1, h - 1, 2], [0, 0, 0, 0, -1]]])  # fmt: skip
    parts = PIPLoss(radius=5).forward_parts(logits, labels, boxes)
    _, box, pixel = naive_pip(logits, labels, boxes, **DEFAULTS)
    assert_close(parts["box"], box)
    assert_close(parts["pixel"], pixel)


def test_saturated_probabilities_stay_finite_and_exact() -> None:
    logits = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    logits[0, 1] = 200.0  # P(class 1) == 1 to double precision: log(1 - min) would be -inf
    logits[0, 1, 0, 0] = -200.0  # and P == 0 at one pixel
    logits.requires_grad_(True)
    labels = torch.ones(1, 4, 4, dtype=torch.long)
    boxes = torch.tensor([[[0, 0, 3, 3, 1]]])
    parts = PIPLoss().forward_parts(logits, labels, boxes)
    assert torch.isfinite(parts["loss"])
    _, box, _ = naive_pip(logits, labels, boxes, **DEFAULTS)
    assert_close(parts["box"], box)
    parts["loss"].backward()
    assert torch.isfinite(logits.grad).all()


def test_boxes_without_area_are_skipped() -> None:
    torch.manual_seed(4)
    logits = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    labels = torch.randint(0, 3, (1, 6, 6))
    good = torch.tensor([[[1, 1, 4, 3, 2]]])
    with_empty = torch.tensor([[[1, 1, 4, 3, 2], [4, 1, 2, 3, 1], [1, 5, 2, 4, 1]]])
    a = PIPLoss().forward_parts(logits, labels, good)
    b = PIPLoss().forward_parts(logits, labels, with_empty)
    assert_close(b["loss"], a["loss"])


def test_float32_matches_float64() -> None:
    logits, labels, boxes, params = random_case(5)
    loss_fn = PIPLoss(**params)
    torch.testing.assert_close(
        loss_fn(logits.float(), labels, boxes).double(),
        loss_fn(logits, labels, boxes),
        rtol=1e-5,
        atol=1e-7,
    )


def test_autocast_bfloat16_runs_in_float32() -> None:
    torch.manual_seed(5)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    images = torch.randn(2, 3, 10, 10)
    labels = torch.randint(0, 4, (2, 10, 10))
    boxes = torch.tensor([[[1, 1, 8, 8, 1]], [[0, 0, 9, 4, 3]]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(images)
        assert logits.dtype == torch.bfloat16
        parts = PIPLoss().forward_parts(logits, labels, boxes)
    assert all(v.dtype == torch.float32 for v in parts.values())
    assert torch.isfinite(parts["loss"])
    parts["loss"].backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    # The bf16 logits, computed in float32 outside autocast, give the same value.
    torch.testing.assert_close(
        parts["loss"].detach(), PIPLoss()(logits.detach().float(), labels, boxes)
    )


@pytest.mark.parametrize("box_search", SEARCHES)
def test_autocast_bfloat16_matches_the_oracle_at_large_scale(box_search: str) -> None:
    logits, labels, boxes, params = random_case(104, std=10.0, box_class="absent")
    z = logits.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = PIPLoss(**params, box_search=box_search).forward_parts(z, labels, boxes)
    assert all(v.dtype == torch.float32 for v in parts.values())
    parts["loss"].backward()
    assert z.grad.dtype == torch.bfloat16 and torch.isfinite(z.grad).all()
    # The loss ran in float32 on the bf16 values: that is what the oracle sees too.
    exact = logits.to(torch.bfloat16).double().requires_grad_(True)
    loss, _, _ = naive_pip(exact, labels, boxes, **params)
    loss.backward()
    torch.testing.assert_close(parts["loss"].double(), loss, rtol=2e-6, atol=1e-6)
    scale = exact.grad.abs().max().item()
    # The gradient is handed back in bf16 (8 bits of mantissa).
    torch.testing.assert_close(z.grad.double(), exact.grad, rtol=1e-2, atol=1e-2 * scale)


def test_forward_has_no_data_dependent_host_sync() -> None:
    """On the meta device every .item()/.tolist()/boolean indexing fails: the loss must not."""
    logits = torch.empty(3, 5, 9, 7, device="meta", requires_grad=True)
    labels = torch.empty(3, 9, 7, dtype=torch.long, device="meta")
    boxes = torch.empty(3, 4, 5, dtype=torch.long, device="meta")
    parts = PIPLoss().forward_parts(logits, labels, boxes)
    parts["loss"].backward()
    assert logits.grad.shape == logits.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("box_search", ["auto", "dense"])
def test_cuda_matches_cpu(box_search: str) -> None:
    logits, labels, boxes, params = random_case(11)
    loss_fn = PIPLoss(**params, box_search=box_search)
    z_cpu = logits.clone().requires_grad_(True)
    z_gpu = logits.cuda().requires_grad_(True)
    cpu = loss_fn(z_cpu, labels, boxes)
    gpu = loss_fn.cuda()(z_gpu, labels.cuda(), boxes.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu.detach(), rtol=1e-6, atol=1e-12)
    cpu.backward()
    gpu.backward()
    torch.testing.assert_close(z_gpu.grad.cpu(), z_cpu.grad, rtol=1e-6, atol=1e-12)


# --------------------------------------------------------------------------- box search
def naive_line_extremes(log_probs: np.ndarray, boxes: np.ndarray) -> list[tuple[float, float]]:
    """(max, min) of log P along every row, then every column, of every box, in box order."""
    out = []
    for b in range(boxes.shape[0]):
        for x0, y0, x1, y1, c in boxes[b]:
            if c < 0 or x1 < x0 or y1 < y0:
                continue
            region = log_probs[b, c, y0 : y1 + 1, x0 : x1 + 1]
            out += [(row.max(), row.min()) for row in region]
            out += [(col.max(), col.min()) for col in region.T]
    return out


@pytest.mark.parametrize("seed", range(12))
def test_both_box_searches_find_the_true_extremes(seed: int) -> None:
    logits, labels, boxes, _ = random_case(seed)
    log_probs = logits.float().log_softmax(1)  # float32, as in training
    b, c, h, w = log_probs.shape
    expected = naive_line_extremes(log_probs.numpy(), boxes.numpy())
    geometry = BoxGeometry.from_boxes(boxes, h, w)
    found = {
        "compiled": compiled_box_extremes(log_probs, boxes),
        "dense": dense_box_extremes(log_probs, geometry.cls, geometry.row_in, geometry.col_in),
    }
    flat = log_probs.view(-1)
    for name, extremes in found.items():
        index, pixel = extremes.index, extremes.pixel
        if extremes.keep is not None:  # dense: one slot per box column/row, masked
            index, pixel = index[:, extremes.keep], pixel[:, extremes.keep]
        log_p = extremes.log_p if extremes.keep is None else extremes.log_p[:, extremes.keep]
        assert torch.equal(log_p, flat[index]), name
        # index and pixel name the same (image, y, x)
        assert torch.equal(index // (c * h * w), pixel // (h * w)), name
        assert torch.equal(index % (h * w), pixel % (h * w)), name
        got = sorted(zip(flat[index[0]].tolist(), flat[index[1]].tolist(), strict=True))
        assert got == sorted((float(hi), float(lo)) for hi, lo in expected), name
    assert found["compiled"].keep is None


@pytest.mark.parametrize("box_search", ["auto", "dense"])
def test_boxes_that_leave_the_grid_count_as_clipped(box_search: str) -> None:
    torch.manual_seed(12)
    logits = torch.randn(2, 4, 6, 7, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 6, 7))
    inside = torch.tensor([[[0, 2, 6, 5, 1], [3, 0, 3, 0, 2]], [[0, 0, 6, 5, 3], [1, 1, 2, 2, 1]]])
    outside = torch.tensor(
        [[[-3, 2, 9, 8, 1], [3, -5, 3, 0, 2]], [[-1, -1, 60, 50, 3], [1, 1, 2, 2, 1]]]
    )
    loss_fn = PIPLoss(box_search=box_search)
    a = loss_fn.forward_parts(logits, labels, inside)
    b = loss_fn.forward_parts(logits, labels, outside)
    assert_close(b["box"], a["box"])
    assert_close(b["pixel"], a["pixel"])
    # A box wholly off the grid is no box.
    gone = torch.tensor([[[7, 0, 9, 3, 1]], [[0, 6, 3, 8, 2]]])
    none = torch.full((2, 1, 5), -1)
    c = loss_fn.forward_parts(logits, labels, gone)
    d = loss_fn.forward_parts(logits, labels, none)
    assert c["box"].item() == 0.0
    assert_close(c["pixel"], d["pixel"])


@pytest.mark.parametrize("box_search", ["auto", "dense"])
def test_ties_give_equal_values_and_a_valid_subgradient(box_search: str) -> None:
    """Constant logits: every entry of every line ties. The value matches the oracle, and the
    gradient of each line goes to one of its tied entries, so the totals per image agree."""
    logits = torch.zeros(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.zeros(1, 3, 3, dtype=torch.long)
    boxes = torch.tensor([[[0, 0, 2, 2, 1]]])
    params = {**DEFAULTS, "alpha": 0.3}
    box = PIPLoss(**params, box_search=box_search).forward_parts(logits, labels, boxes)["box"]
    _, expected, _ = naive_pip(logits.detach(), labels, boxes, **params)
    assert_close(box, expected)
    box.backward()
    # Any subgradient of a sum of line maxima has the same total per class plane.
    z = logits.detach().clone().requires_grad_(True)
    naive_pip(z, labels, boxes, **params)[1].backward()
    assert_close(logits.grad.sum(dim=(2, 3)), z.grad.sum(dim=(2, 3)))


@pytest.mark.parametrize("box_search", ["auto", "dense"])
def test_minus_inf_logits_stay_finite(box_search: str) -> None:
    logits = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    logits[0, 1, 0, 1] = -math.inf  # P(class 1) = 0 there: inside the box below
    logits[0, 0, 1, 1] = -math.inf  # and P(class 0) = 0 at an ignored pixel labelled 0
    labels = torch.tensor([[[0, 0], [1, 255]]])
    boxes = torch.tensor([[[0, 0, 1, 0, 1]]])
    parts = PIPLoss(box_search=box_search).forward_parts(logits, labels, boxes)
    assert all(math.isfinite(v.item()) for v in parts.values())
    # Both searches count the P = 0 line alike.
    assert_close(parts["box"], PIPLoss(box_search="dense").forward_parts(logits, labels, boxes)["box"])
    z = logits.clone().requires_grad_(True)
    PIPLoss(box_search=box_search)(z, labels, boxes).backward()
    assert torch.isfinite(z.grad).all()


def test_box_classes_must_exist_in_the_logits() -> None:
    logits, labels = torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)
    for box_search in ("auto", "dense"):
        with pytest.raises(ValueError, match="class 3"):
            PIPLoss(box_search=box_search)(logits, labels, torch.tensor([[[0, 0, 1, 1, 3]]]))
    log_probs = logits.log_softmax(1)
    with pytest.raises(ValueError, match="class"):
        compiled_box_extremes(log_probs, torch.tensor([[[0, 0, 1, 1, 3]]]))
    with pytest.raises(ValueError, match=r"\[B,M,5\]"):  # batch sizes disagree
        compiled_box_extremes(torch.randn(4, 3, 4, 4), torch.tensor([[[0, 0, 1, 1, 1]]]))
    with pytest.raises(ValueError, match="non-empty"):
        PIPLoss()(torch.randn(0, 3, 4, 4), torch.zeros(0, 4, 4, dtype=torch.long),
                  torch.zeros(0, 0, 5, dtype=torch.long))  # fmt: skip


def test_auto_search_is_compiled_on_cpu() -> None:
    """Numba is a declared dependency, so the fast CPU search is the one that runs here."""
    assert compiled_search_available()
    logits, labels, boxes, _ = random_case(1)
    geometry = BoxGeometry.from_boxes(boxes, *logits.shape[-2:])
    log_probs = logits.log_softmax(1)
    assert PIPLoss()._box_extremes(log_probs, boxes, geometry).keep is None
    assert PIPLoss(box_search="dense")._box_extremes(log_probs, boxes, geometry).keep is not None
    with pytest.raises(ValueError, match="box_search"):
        PIPLoss(box_search="fast")


def test_channels_last_logits_give_the_same_loss_and_gradient() -> None:
    logits, labels, boxes, params = random_case(4)
    z1 = logits.clone().requires_grad_(True)
    z2 = logits.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    loss_fn = PIPLoss(**params)
    a, b = loss_fn(z1, labels, boxes), loss_fn(z2, labels, boxes)
    assert_close(b, a)
    a.backward()
    b.backward()
    assert_close(z2.grad, z1.grad)


def test_backward_twice_with_retain_graph() -> None:
    logits, labels, boxes, params = random_case(2)
    z = logits.clone().requires_grad_(True)
    loss = PIPLoss(**params)(z, labels, boxes)
    loss.backward(retain_graph=True)
    first = z.grad.clone()
    loss.backward()
    assert_close(z.grad, 2 * first)


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError):
        PIPLoss()(
            torch.randn(1, 2, 4, 4),
            torch.zeros(1, 4, 5, dtype=torch.long),
            torch.zeros(1, 0, 5, dtype=torch.long),
        )
    with pytest.raises(ValueError):
        PIPLoss()(
            torch.randn(1, 2, 4, 4),
            torch.zeros(1, 4, 4, dtype=torch.long),
            torch.zeros(1, 0, 4, dtype=torch.long),
        )


def test_ignore_index_is_the_losses_own_setting() -> None:
    logits, labels, boxes, params = random_case(6)
    relabelled = labels.masked_fill(labels == 255, 7)
    pip = PIPLoss(**params, ignore_index=7).forward_parts(logits, relabelled, boxes)
    expected = PIPLoss(**params).forward_parts(logits, labels, boxes)
    assert_close(pip["loss"], expected["loss"])
    ce = CrossEntropyLoss(ignore_index=7)(logits, relabelled)
    assert_close(ce, torch.nn.CrossEntropyLoss(ignore_index=255)(logits, labels))


def test_losses_import_nothing_else_from_pipseg() -> None:
    """The loss is a leaf: no data, config or engine import (``pipseg.errors`` is allowed)."""
    import pipseg.losses

    folder = Path(pipseg.losses.__file__).parent
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):  # relative: "." is pipseg.losses, ".." pipseg
                parent = ["", "pipseg.losses.", "pipseg."][min(node.level, 2)]
                names = [parent + (node.module or "")]
            for name in names:
                allowed = name.startswith("pipseg.losses") or name == "pipseg.errors"
                assert not name.startswith("pipseg") or allowed, f"{path.name} imports {name}"


# --------------------------------------------------------------------------- CE baseline
def test_cross_entropy_baseline() -> None:
    torch.manual_seed(6)
    logits = torch.randn(2, 5, 6, 6, dtype=torch.float64)
    labels = torch.randint(0, 5, (2, 6, 6))
    labels[0, :3] = 255
    parts = CrossEntropyLoss().forward_parts(logits, labels, torch.zeros(2, 0, 5, dtype=torch.long))
    expected = torch.nn.CrossEntropyLoss(ignore_index=255)(logits, labels)
    assert_close(parts["loss"], expected)
    assert_close(parts["pixel"], expected)
    assert parts["box"].item() == 0.0
    all_ignored = CrossEntropyLoss()(logits, torch.full_like(labels, 255))
    assert all_ignored.item() == 0.0


def test_build_loss() -> None:
    assert isinstance(build_loss(LossConfig(kind="ce")), CrossEntropyLoss)
    loss = build_loss(
        LossConfig(kind="pip", lamb=0.3, alpha=0.4, tau=2.0, radius=3, sigma=1.5, eps=1e-5)
    )
    assert isinstance(loss, PIPLoss)
    assert (loss.lamb, loss.alpha, loss.tau, loss.radius, loss.sigma) == (0.3, 0.4, 2.0, 3, 1.5)
    assert loss.kernel.numel() == 7
    assert loss.box_search == "auto"
    assert build_loss(LossConfig(kind="pip", box_search="dense")).box_search == "dense"
    # The data's ignore id reaches both losses.
    assert loss.ignore_index == 255 and build_loss(LossConfig(kind="ce")).ignore_index == 255


def test_old_eps_settings_load_and_change_nothing() -> None:
    """``loss.eps`` (a clamp in 0.1.0) still validates, from 0 up, and builds the same loss."""
    logits, labels, boxes, _ = random_case(3, std=10.0, box_class="absent")
    values = []
    for eps in (0.0, 1e-12, 1e-6, 0.1):
        loss_fn = build_loss(LossConfig(kind="pip", eps=eps))
        z = logits.float().requires_grad_(True)
        loss = loss_fn(z, labels, boxes)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
        values.append(loss.item())
    assert len(set(values)) == 1
    with pytest.raises(ValueError):
        LossConfig(eps=-1e-6)


# --------------------------------------------------------------------------- to_logit_grid
def test_to_logit_grid_321_to_41() -> None:
    rng = np.random.default_rng(8)
    labels = torch.as_tensor(rng.integers(0, 21, (2, 321, 321)))
    labels[0, :50] = 255
    boxes = torch.tensor(
        [[[0, 0, 320, 320, 3], [160, 7, 200, 319, 5], [-1, -1, -1, -1, -1]],
         [[8, 16, 24, 39, 1], [0, 0, 0, 0, 2], [5, 6, 7, 8, -1]]]
    )  # fmt: skip
    grid_labels, grid_boxes = to_logit_grid(labels, boxes, (41, 41))
    # Nearest at pixel centres: output i reads input floor((i + 0.5) * 321 / 41).
    src = [((2 * i + 1) * 321) // 82 for i in range(41)]
    assert torch.equal(grid_labels, labels[:, src][:, :, src])
    # x * 41 / 321: 320 -> 40.87 -> 40; 160 -> 20.44 -> 20; 7 -> 0.89 -> 1; 200 -> 25.55 -> 26;
    # 319 -> 40.74 -> 41 clipped to 40; 8 -> 1.02 -> 1; 16 -> 2.04 -> 2; 24 -> 3.07 -> 3; 39 -> 4.98 -> 5.
    expected = torch.tensor(
        [[[0, 0, 40, 40, 3], [20, 1, 26, 40, 5], [-1, -1, -1, -1, -1]],
         [[1, 2, 3, 5, 1], [0, 0, 0, 0, 2], [5, 6, 7, 8, -1]]]
    )  # fmt: skip
    assert torch.equal(grid_boxes, expected)
    assert grid_boxes.dtype == torch.long and grid_labels.dtype == labels.dtype


def test_to_logit_grid_rounds_half_to_even_and_scales_axes_apart() -> None:
    labels = torch.arange(10 * 20).reshape(1, 10, 20) % 255  # crop h=10, w=20
    # x scale 5/20: 2 -> 0.5 -> 0; 6 -> 1.5 -> 2; 10 -> 2.5 -> 2; 14 -> 3.5 -> 4; 19 -> 4.75 -> clip 4.
    # y scale 4/10: 5 -> 2.0; 9 -> 3.6 -> 4 clipped to 3; 0 -> 0; 1 -> 0.4 -> 0.
    boxes = torch.tensor([[[2, 5, 6, 9, 1], [10, 0, 14, 1, 2], [19, 0, 19, 0, 1]]])
    grid_labels, grid_boxes = to_logit_grid(labels, boxes, (4, 5))
    assert torch.equal(
        grid_boxes, torch.tensor([[[0, 2, 2, 3, 1], [2, 0, 4, 0, 2], [4, 0, 4, 0, 1]]])
    )
    # Rows read floor((i + .5) * 10 / 4) = 1, 3, 6, 8; columns floor((j + .5) * 4) = 2, 6, 10, 14, 18.
    assert torch.equal(grid_labels, labels[:, [1, 3, 6, 8]][:, :, [2, 6, 10, 14, 18]])


def test_to_logit_grid_without_boxes() -> None:
    labels = torch.zeros(3, 17, 17, dtype=torch.long)
    grid_labels, grid_boxes = to_logit_grid(labels, torch.zeros(3, 0, 5, dtype=torch.long), (3, 3))
    assert grid_labels.shape == (3, 3, 3) and grid_boxes.shape == (3, 0, 5)


def test_pip_loss_on_grid_output_end_to_end() -> None:
    """to_logit_grid output feeds PIPLoss directly and matches the oracle."""
    rng = np.random.default_rng(9)
    labels = torch.as_tensor(rng.integers(0, 4, (2, 65, 65)))
    boxes = torch.tensor(
        [[[0, 0, 64, 64, 1], [30, 10, 50, 60, 2]], [[5, 5, 5, 5, 3], [-1, -1, -1, -1, -1]]]
    )
    grid_labels, grid_boxes = to_logit_grid(labels, boxes, (9, 9))
    logits = torch.as_tensor(rng.normal(0, 2, (2, 4, 9, 9)))
    _, box, pixel = naive_pip(logits, grid_labels, grid_boxes, **DEFAULTS)
    parts = PIPLoss().forward_parts(logits, grid_labels, grid_boxes)
    assert_close(parts["box"], box)
    assert_close(parts["pixel"], pixel)
    assert math.isfinite(parts["loss"].item())


def test_one_module_on_several_grid_sizes() -> None:
    """The per-size blur cache must not leak between grid sizes."""
    loss_fn = PIPLoss(**DEFAULTS)
    for seed in (20, 21, 22, 23):
        logits, labels, boxes, _ = random_case(seed)
        _, box, pixel = naive_pip(logits, labels, boxes, **DEFAULTS)
        parts = loss_fn.forward_parts(logits, labels, boxes)
        assert_close(parts["box"], box)
        assert_close(parts["pixel"], pixel)
