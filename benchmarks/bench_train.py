"""Training throughput (images/s) of `pipseg.engine.train` on this machine.

    .venv/bin/python benchmarks/bench_train.py [--models tiny_deeplab vgg16_largefov]
        [--crop 321] [--batch 2] [--iters 4] [--workers 1 2] [--device cpu] [--quick]

Each cell is a real training run (data loading, augmentation, forward, loss, backward, SGD) on a
generated VOC-layout dataset with box pseudo labels, from scratch (no download needed). The
figure is the median of the engine's own per-iteration images/s after ``--warmup`` iterations
(validation and checkpoints are outside the timed intervals). PIP and plain cross-entropy run on
the same data, so their ratio is the loss's overhead; ``workers`` is ``data.workers``.
The runs of CE and PIP alternate ``--repeats`` times, and each cell reports the best and the
median per-iteration rate: on a shared machine other processes only ever slow an iteration down,
so the best rate is the stable figure. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pipseg.config import validate_config
from pipseg.data.prepare import prepare_dataset
from pipseg.data.synthetic import SYNTHETIC_CLASSES, make_synthetic_voc
from pipseg.engine import train


def make_dataset(root: Path, n_train: int, image_size: tuple[int, int]) -> Path:
    """A synthetic VOC-layout dataset, prepared with box pseudo labels."""
    make_synthetic_voc(root, n_train, 2, image_size, seed=0)
    prepare_dataset(root, pseudo=["box"], classes=list(SYNTHETIC_CLASSES), workers=1)
    return root


def measure(root: Path, out_dir: Path, model: str, loss: str, workers: int, args: argparse.Namespace) -> list[float]:
    """Per-iteration training images/s of one run, after the warm-up iterations."""
    cfg = validate_config({
        "data": {"root": str(root), "classes": list(SYNTHETIC_CLASSES), "crop_size": args.crop,
                 "label_source": "box", "train_split": "train", "workers": workers},
        "model": {"name": model, "init": "none"},
        "loss": {"kind": loss},
        "optim": {"iters": args.warmup + args.iters, "batch_size": args.batch},
        "runtime": {"device": args.device, "out_dir": str(out_dir), "log_every": 1,
                    "val_every": 10**6, "ckpt_every": 10**6, "val_max_images": 1},
        "eval": {"pad_size": args.crop},
    })  # fmt: skip
    rates: list[float] = []

    def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "log" and event["iteration"] > args.warmup:
            rates.append(event["images_per_s"])

    train(cfg, force=True, progress=on_event)
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny_deeplab", "vgg16_largefov"])
    parser.add_argument("--crop", type=int, default=321)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per cell (CE and PIP alternate)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first iterations")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--quick", action="store_true", help="tiny_deeplab, crop 161, 2 iterations, 1 run")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.crop, args.iters, args.repeats = ["tiny_deeplab"], 161, 2, 1

    print(f"training throughput, {time.strftime('%Y-%m-%d %H:%M')}, device {args.device}, "
          f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}), {torch.get_num_threads()} "
          f"torch threads, crop {args.crop}, batch {args.batch}, {args.repeats} x {args.iters} timed "
          f"iterations per cell after {args.warmup} warm-up; images/s best (median)\n")  # fmt: skip
    print("| model | data workers | CE images/s | PIP images/s | PIP overhead (best) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="pipseg-bench-train-") as tmp:
        side = round(args.crop * 1.25)
        n_train = args.batch * (args.warmup + args.iters + 1)
        root = make_dataset(Path(tmp) / "VOC", n_train, (side, round(side * 0.85)))
        for model in args.models:
            for workers in args.workers:
                rates: dict[str, list[float]] = {"ce": [], "pip": []}
                for _ in range(args.repeats):
                    for loss in rates:
                        rates[loss] += measure(root, Path(tmp) / "run", model, loss, workers, args)
                ce, pip = (f"{max(r):.2f} ({statistics.median(r):.2f})" for r in rates.values())
                overhead = max(rates["ce"]) / max(rates["pip"]) - 1
                print(f"| {model} | {workers} | {ce} | {pip} | {100 * overhead:+.1f}% |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
