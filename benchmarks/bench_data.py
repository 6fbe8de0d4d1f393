"""Data pipeline throughput: decode + augment + collate, in images/s, against decode alone.

Generates VOC-sized (500x375) synthetic JPEGs, prepares box pseudo labels, then times:
decode only (OpenCV, this process), the full pipeline in this process (SegDataset + collate),
and DataLoader with 1 and 2 workers. Prints a markdown table.

    .venv/bin/python benchmarks/bench_data.py [--images 96] [--crop 321] [--batch 10] [--root DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import torch
from torch.utils.data import DataLoader

from pipseg.config import DataConfig
from pipseg.data.dataset import SegDataset, collate_batch
from pipseg.data.images import read_image
from pipseg.data.prepare import prepare_dataset
from pipseg.data.synthetic import SYNTHETIC_CLASSES, make_synthetic_voc


def _rate(fn: Callable[[], int], repeats: int = 2) -> float:
    """Best images/s over ``repeats`` runs of ``fn`` (which returns how many images it did)."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - start))
    return best


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--crop", type=int, default=321)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument(
        "--root", type=Path, default=None, help="dataset cache folder (default: temp)"
    )
    parser.add_argument("--quick", action="store_true", help="24 images (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images = 24

    tmp = None
    if args.root is None:
        tmp = tempfile.TemporaryDirectory()
        args.root = Path(tmp.name)
    root = make_synthetic_voc(
        args.root / "voc500", n_train=args.images, n_val=0, image_size=(500, 375)
    )
    prepare_dataset(root, pseudo=["box"], classes=SYNTHETIC_CLASSES, workers=1)
    cfg = DataConfig(root=root, classes=list(SYNTHETIC_CLASSES), crop_size=args.crop)
    ds = SegDataset(cfg, "train", "box", train=True)
    paths = [root / "JPEGImages" / f"{i}.jpg" for i in ds.ids]

    cv2.setNumThreads(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # data workers run single-threaded; restored below for run_all

    def decode_only() -> int:
        for p in paths:
            read_image(p)
        return len(paths)

    def in_process() -> int:
        for start in range(0, len(ds), args.batch):
            collate_batch([ds[i] for i in range(start, min(start + args.batch, len(ds)))])
        return len(ds)

    def loader(workers: int) -> Callable[[], int]:
        def run() -> int:
            dl = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=workers,
                            collate_fn=collate_batch, persistent_workers=False)  # fmt: skip
            return sum(len(b["ids"]) for b in dl)

        return run

    rows = [
        ("decode only (cv2, this process)", 1, _rate(decode_only)),
        ("decode + augment + collate (this process)", 1, _rate(in_process)),
        ("DataLoader, num_workers=1", 1, _rate(loader(1))),
        ("DataLoader, num_workers=2", 2, _rate(loader(2))),
    ]
    lines = [
        f"Data pipeline, {len(ds)} synthetic 500x375 JPEGs, crop {args.crop}, batch {args.batch} "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
        f"torch {torch.__version__}, OpenCV {cv2.__version__})",
        "",
        "| pipeline | workers | images/s | images/s per worker |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {w} | {rate:.0f} | {rate / w:.0f} |" for name, w, rate in rows]
    table = "\n".join(lines)
    print(table)
    if tmp is not None:
        tmp.cleanup()
    torch.set_num_threads(threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
