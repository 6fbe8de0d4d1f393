"""Forward + backward time of the vectorised PIPLoss against the published per-box loop.

    .venv/bin/python benchmarks/bench_loss.py [--repeats 7] [--boxes 1 4 16] [--device cpu]

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
    indexing (each comparison and slice bound is a host sync). Clamped like PIPLoss so the two
    give the same value."""

    def __init__(self, lamb=0.2, alpha=0.5, tau=5.0, r=5, sigma=2.0, eps=1e-6) -> None:
        super().__init__()
        self.lamb, self.alpha, self.tau, self.r, self.eps = lamb, alpha, tau, r, eps
        x = torch.arange(-r, r + 1, dtype=torch.float32)
        g = torch.exp(-(x**2) / (2 * sigma**2))
        g = g / g.sum()
        self.register_buffer("kernel", (g[:, None] * g[None, :])[None, None])

    def forward(self, logits, labels, bboxes):
        alpha, eps = self.alpha, self.eps
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
                    alpha * torch.log(region.max(dim=0).values.clamp(eps, 1 - eps)).sum()
                    + (1 - alpha)
                    * torch.log(1 - region.min(dim=0).values.clamp(eps, 1 - eps)).sum()
                    + alpha * torch.log(region.max(dim=1).values.clamp(eps, 1 - eps)).sum()
                    + (1 - alpha)
                    * torch.log(1 - region.min(dim=1).values.clamp(eps, 1 - eps)).sum()
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


def time_fwd_bwd(
    loss_fn: Callable, logits, labels, boxes, repeats: int, device: str
) -> tuple[float, float]:
    """Median wall and CPU seconds of forward + backward over ``repeats`` runs (after one
    warm-up run). CPU time (all threads of this process) is robust to other processes on a
    shared machine; wall time is what a user waits. On CUDA the CPU column is meaningless."""
    wall, cpu = [], []
    for k in range(repeats + 1):
        z = logits.detach().clone().requires_grad_(True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        loss_fn(z, labels, boxes).backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if k:
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=30)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--size", type=int, default=41)
    parser.add_argument("--boxes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=7)
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

    pip = PIPLoss().to(args.device)
    naive = NaiveLoopPIP().to(args.device)
    rows = []
    for m in args.boxes:
        logits, labels, boxes = make_inputs(
            args.batch, args.classes, args.size, m, args.seed, args.device
        )
        a, b = pip(logits, labels, boxes), naive(logits, labels, boxes)
        if not torch.allclose(a, b, rtol=1e-4):
            raise AssertionError(f"PIPLoss {a.item()} != naive loop {b.item()} at {m} boxes/image")
        t_pip = time_fwd_bwd(pip, logits, labels, boxes, args.repeats, args.device)
        t_naive = time_fwd_bwd(naive, logits, labels, boxes, args.naive_repeats, args.device)
        rows.append((m, t_pip, t_naive))

    (_, (base_wall, base_cpu), _) = rows[0]
    print(
        f"PIPLoss forward+backward, batch {args.batch}, {args.classes} classes, "
        f"{args.size}x{args.size}, device {args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; median of {args.repeats} (PIPLoss) / "
        f"{args.naive_repeats} (loop) runs; wall / CPU-time milliseconds"
    )
    print()
    print(
        "| boxes/image | PIPLoss wall | loop wall | speedup wall | PIPLoss CPU | loop CPU "
        f"| speedup CPU | PIPLoss vs {rows[0][0]} box (wall / CPU) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m, (pip_wall, pip_cpu), (loop_wall, loop_cpu) in rows:
        print(
            f"| {m} | {pip_wall * 1e3:.1f} | {loop_wall * 1e3:.0f} | {loop_wall / pip_wall:.0f}x "
            f"| {pip_cpu * 1e3:.1f} | {loop_cpu * 1e3:.0f} | {loop_cpu / pip_cpu:.0f}x "
            f"| {pip_wall / base_wall:.2f}x / {pip_cpu / base_cpu:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
