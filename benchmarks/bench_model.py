"""Training-step time of the models with the PIP loss vs plain cross-entropy.

One step = forward, labels and boxes onto the logit grid, loss, backward (SGD update left out:
it is the same for both losses). PIP and CE steps alternate so machine load hits both alike.
Also timed alone: each loss's own forward + backward on fixed logits (minimum of repeats); on a
loaded machine "(PIP alone - CE alone) / CE step" is the steadier estimate of what PIP adds to
a step, the paired step ratio the direct one. Goal: PIP adds at most 5% to a vgg16_largefov step.

    .venv/bin/python benchmarks/bench_model.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from pipseg.losses import CrossEntropyLoss, PIPLoss, to_logit_grid
from pipseg.models import build_model


def synthetic_batch(batch: int, size: int, num_classes: int, device: torch.device, seed: int = 0):
    """Random images, a label map with a few boxes painted in, and those boxes (padded to M=4)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    labels = torch.zeros(batch, size, size, dtype=torch.long)
    boxes = torch.full((batch, 4, 5), -1, dtype=torch.long)
    for b in range(batch):
        for m in range(3):
            x0, y0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
            x1, y1 = x0 + size // 4 + 8 * m, y0 + size // 3
            cls = 1 + (b + m) % (num_classes - 1)
            labels[b, y0 : y1 + 1, x0 : x1 + 1] = cls
            boxes[b, m] = torch.tensor([x0, y0, min(x1, size - 1), min(y1, size - 1), cls])
    labels[:, :, -3:] = 255
    return images.to(device), labels.to(device), boxes.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def bench(name: str, batch: int, size: int, repeats: int, device: torch.device) -> dict:
    """Step times (medians) and loss-alone times (minima) of one model under both losses."""
    num_classes = 21
    model = build_model(name, num_classes).to(device).train()
    images, labels, boxes = synthetic_batch(batch, size, num_classes, device)
    losses = {"ce": CrossEntropyLoss().to(device), "pip": PIPLoss().to(device)}
    with torch.no_grad():
        out_hw = tuple(model(images).shape[-2:])
    grid_labels, grid_boxes = to_logit_grid(labels, boxes, out_hw)

    def step(loss_fn: nn.Module) -> None:
        model.zero_grad(set_to_none=True)
        logits = model(images)
        lab, box = to_logit_grid(labels, boxes, tuple(logits.shape[-2:]))
        loss_fn(logits, lab, box).backward()

    fixed = torch.randn(batch, num_classes, *out_hw, device=device)

    def loss_only(loss_fn: nn.Module) -> None:
        logits = fixed.clone().requires_grad_(True)
        loss_fn(logits, grid_labels, grid_boxes).backward()

    steps: dict[str, list[float]] = {key: [] for key in losses}
    alone: dict[str, list[float]] = {key: [] for key in losses}
    for i in range(repeats + 1):  # the first round warms up
        for key, fn in losses.items():
            t_step = timed(lambda fn=fn: step(fn), device)
            t_alone = min(timed(lambda fn=fn: loss_only(fn), device) for _ in range(5))
            if i > 0:
                steps[key].append(t_step)
                alone[key].append(t_alone)
    ce_step, pip_step = statistics.median(steps["ce"]), statistics.median(steps["pip"])
    ce_alone, pip_alone = min(alone["ce"]), min(alone["pip"])
    paired = statistics.median(p / c for p, c in zip(steps["pip"], steps["ce"], strict=True))
    return {
        "model": name, "input": f"{batch}x3x{size}x{size}", "logits": f"{out_hw[0]}x{out_hw[1]}",
        "ce_step_ms": 1e3 * ce_step, "pip_step_ms": 1e3 * pip_step,
        "paired_pct": 100 * (paired - 1),
        "ce_loss_ms": 1e3 * ce_alone, "pip_loss_ms": 1e3 * pip_alone,
        "alone_pct": 100 * (pip_alone - ce_alone) / ce_step,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer repeats")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed steps per loss (default 7, quick 2)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    repeats = args.repeats or (2 if args.quick else 7)
    big = device.type == "cuda"
    cases = [
        ("vgg16_largefov", 10 if big else (1 if args.quick else 2), 161 if args.quick else 321),
        ("tiny_deeplab", 8, 113),
    ]
    if big:
        cases.insert(1, ("deeplabv2_resnet101", 10, 321))
    rows = [bench(name, batch, size, repeats, device) for name, batch, size in cases]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{repeats} timed steps per loss, 1-min load average at the end {load:.1f}\n"
    )
    print(
        "| model | input | logits | CE step (ms) | PIP step (ms) | PIP vs CE step (median of paired ratios) "
        "| CE loss alone (ms) | PIP loss alone (ms) | PIP extra loss time / CE step |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['input']} | {r['logits']} | {r['ce_step_ms']:.1f} | "
            f"{r['pip_step_ms']:.1f} | {r['paired_pct']:+.1f}% | {r['ce_loss_ms']:.2f} | "
            f"{r['pip_loss_ms']:.2f} | {r['alone_pct']:+.2f}% |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
