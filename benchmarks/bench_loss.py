"""Forward + backward time of the vectorised PIPLoss against the published per-box loop.

    .venv/bin/python benchmarks/bench_loss.py [--repeats 21] [--boxes 1 4 16] [--device cpu]

Both losses see the same inputs in the same process (batch 30, 21 classes, 41x41 logits by
default) and their values are checked to agree before timing. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from pipseg.losses import PIPLoss


class NaiveLoopPIP(torch.nn.Module):
    """The published loss structure: Python loops over images and boxes, per-box tensor
    indexing (each comparison and slice bound is a host sync), unguarded logs as published
    (finite at these logit scales; PIPLoss needs no clamp either, so the two agree)."""

    def __init__(self, lamb=0.2, alpha=0.5, tau=5.0, r=5, sigma=2.0) -> None:
        super().__init__()
        self.lamb, self.alpha, self.tau, self.r = lamb, alpha, tau, r
        x = torch.arange(-r, r + 1, dtype=torch.float32)
        g = torch.exp(-(x**2) / (2 * sigma**2))
        g = g / g.sum()
        self.register_buffer("kernel", (g[:, None] * g[None, :])[None, None])

    def forward(self, logits, labels, bboxes):
        alpha = self.alpha
        num_rc = 1e-5
        loss_rc = torch.zeros([1], device=logits.device)
        soft = logits.softmax(dim=1)
        for i in range(bboxes.shape[0]):
            for j in range(bboxes.shape[1]):
                if bboxes[i, j, -1] == -1:
                    continue
                x_min, y_min, x_max, y_max, cls_id = bboxes[i][j]
                h, w = y_max - y_min + 1, x_max - x_min + 1
                if h * w == 0:
                    continue
                region = soft[i, cls_id, y_min : y_max + 1, x_min : x_max + 1]
                loss_rc -= (
                    alpha * torch.log(region.max(dim=0).values).sum()
                    + (1 - alpha) * torch.log(1 - region.min(dim=0).values).sum()
                    + alpha * torch.log(region.max(dim=1).values).sum()
                    + (1 - alpha) * torch.log(1 - region.min(dim=1).values).sum()
                )
                num_rc += h + w

        b, _, hh, ww = logits.shape
        nop = torch.ones((b, hh, ww), device=logits.device)
        dis = torch.zeros((b, hh, ww), device=logits.device)
        for i in range(bboxes.shape[0]):
            for j in range(bboxes.shape[1]):
                if bboxes[i, j, -1] == -1:
                    continue
                x_min, y_min, x_max, y_max, _ = bboxes[i, j]
                tmp = torch.zeros((hh, ww), device=logits.device)
                tmp[y_min : y_max + 1, x_min : x_max + 1] = 1
                nop[i] += tmp
                tmp[y_min + 1 : y_max, x_min + 1 : x_max] = 0
                dis[i] += tmp
        r = self.r
        dis = F.pad(dis[:, None], (r, r, r, r), mode="reflect")
        dis = F.conv2d(dis, self.kernel)[:, 0] + 1
        s = nop * dis
        gamma = (torch.sigmoid(s / s.max()) - 0.5) * self.tau + 1
        g_map = gamma / gamma.sum(dim=(1, 2), keepdim=True) * hh * ww
        ce = F.cross_entropy(logits, labels, ignore_index=255, reduction="none")
        return (self.lamb * loss_rc / num_rc + (g_map * ce).mean())[0]


def make_inputs(batch: int, classes: int, size: int, boxes: int, seed: int, device: str):
    """Random logits, labels (10% ignore) and ``boxes`` random boxes per image."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, size, size, generator=g) * 2
    labels = torch.randint(0, classes, (batch, size, size), generator=g)
    labels[torch.rand(batch, size, size, generator=g) < 0.1] = 255
    xy = torch.randint(0, size, (batch, boxes, 4), generator=g)
    x0, x1 = torch.minimum(xy[..., 0], xy[..., 2]), torch.maximum(xy[..., 0], xy[..., 2])
    y0, y1 = torch.minimum(xy[..., 1], xy[..., 3]), torch.maximum(xy[..., 1], xy[..., 3])
    cls = torch.randint(1, classes, (batch, boxes), generator=g)
    box = torch.stack([x0, y0, x1, y1, cls], dim=-1)
    return logits.to(device), labels.to(device), box.to(device)


def time_once(loss_fn: Callable, logits, labels, boxes, device: str) -> tuple[float, float]:
    """Wall and CPU seconds of one forward + backward. CPU time (all threads of this process)
    is robust to other processes on a shared machine; wall time is what a user waits.
    On CUDA the CPU column is meaningless."""
    z = logits.detach().clone().requires_grad_(True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start, start_cpu = time.perf_counter(), time.process_time()
    loss_fn(z, labels, boxes).backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - start_cpu


def interleaved_medians(
    losses: dict[str, Callable], cases: dict[int, tuple], repeats: dict[str, int], device: str
) -> dict[tuple[str, int], tuple[float, float]]:
    """Median (wall, CPU) seconds per (loss, boxes per image). Rounds visit every loss and
    every case in turn, so a slow spell of a shared machine hits them all alike."""
    times: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for loss_fn in losses.values():  # warm-up: compilation, allocator, caches
        for case in cases.values():
            time_once(loss_fn, *case, device)
    for round_ in range(max(repeats.values())):
        for name, loss_fn in losses.items():
            if round_ >= repeats[name]:
                continue
            for m, case in cases.items():
                times.setdefault((name, m), []).append(time_once(loss_fn, *case, device))
    return {
        key: (statistics.median(t[0] for t in runs), statistics.median(t[1] for t in runs))
        for key, runs in times.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=30)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--size", type=int, default=41)
    parser.add_argument("--boxes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--naive-repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.naive_repeats = 3, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    losses = {"pip": PIPLoss().to(args.device), "naive": NaiveLoopPIP().to(args.device)}
    if args.device == "cpu":  # the device-agnostic search, for comparison with the compiled one
        losses["dense"] = PIPLoss(box_search="dense")
    cases = {
        m: make_inputs(args.batch, args.classes, args.size, m, args.seed, args.device)
        for m in args.boxes
    }
    for m, case in cases.items():
        values = {name: loss_fn(*case) for name, loss_fn in losses.items()}
        for name, value in values.items():
            if not torch.allclose(value, values["naive"], rtol=1e-4):
                raise AssertionError(
                    f"{name} {value.item()} != naive loop {values['naive'].item()} at {m} boxes"
                )
    repeats = {name: args.repeats for name in losses} | {"naive": args.naive_repeats}
    medians = interleaved_medians(losses, cases, repeats, args.device)

    first = args.boxes[0]
    print(
        f"PIPLoss forward+backward, batch {args.batch}, {args.classes} classes, "
        f"{args.size}x{args.size}, device {args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; median of {args.repeats} (PIPLoss) / "
        f"{args.naive_repeats} (loop) interleaved runs; wall / CPU-time milliseconds"
    )
    print()
    print(
        "| boxes/image | PIPLoss wall | loop wall | speedup wall | PIPLoss CPU | loop CPU "
        f"| speedup CPU | PIPLoss vs {first} box (wall / CPU) |"
        + (" dense search wall (vs its 1 box) |" if "dense" in losses else "")
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if "dense" in losses else ""))
    for m in args.boxes:
        (pip_wall, pip_cpu), (loop_wall, loop_cpu) = medians["pip", m], medians["naive", m]
        base_wall, base_cpu = medians["pip", first]
        row = (
            f"| {m} | {pip_wall * 1e3:.1f} | {loop_wall * 1e3:.0f} | {loop_wall / pip_wall:.0f}x "
            f"| {pip_cpu * 1e3:.1f} | {loop_cpu * 1e3:.0f} | {loop_cpu / pip_cpu:.0f}x "
            f"| {pip_wall / base_wall:.2f}x / {pip_cpu / base_cpu:.2f}x |"
        )
        if "dense" in losses:
            dense_wall = medians["dense", m][0]
            row += f" {dense_wall * 1e3:.1f} ({dense_wall / medians['dense', first][0]:.2f}x) |"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
