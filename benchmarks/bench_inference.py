"""Inference-side throughput: DenseCRF folder runner (1 vs 2 processes), eager PyTorch vs
onnxruntime at 513x513, and folder evaluation (parallel reader vs a serial read-and-count loop).

All inputs are generated (random weights, synthetic images and label maps), so the numbers
measure speed only. Prints a markdown table of medians; "CPU-s per wall-s" (this process plus
its worker processes) shows how much parallelism a case actually got, which on a shared machine
(see the load average in the header) can be far below the number of workers.

    .venv/bin/python benchmarks/bench_inference.py [--quick] [--crf-images 12] [--eval-pairs 1449]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipseg.crf import DenseCRF, save_probs
from pipseg.crf.folder import crf_folder
from pipseg.data.labels import read_label, write_label
from pipseg.evaluate import evaluate_folders
from pipseg.export import SegmentationExport, export_model
from pipseg.models import build_model

VOC_W, VOC_H, NUM_CLASSES = 500, 375, 21


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs (seconds)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def smooth_probs(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    low = torch.from_numpy(rng.normal(0, 3, (1, NUM_CLASSES, h // 16 + 1, w // 16 + 1))).float()
    up = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return up.softmax(1)[0].numpy()


def bench_crf(root: Path, n: int, h: int, w: int) -> list[tuple[str, str, str, str]]:
    rng = np.random.default_rng(0)
    images, probs = root / "crf_images", root / "crf_probs"
    for i in range(n):
        images.mkdir(parents=True, exist_ok=True)
        # Flat colour regions + mild noise, like a photo (pure noise makes the lattice explode).
        blocks = rng.integers(0, 256, (h // 40 + 1, w // 40 + 1, 3))
        image = np.kron(blocks, np.ones((40, 40, 1)))[:h, :w] + rng.normal(0, 6, (h, w, 3))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(images / f"{i:04d}.png")
        save_probs(probs / f"{i:04d}.npz", smooth_probs(rng, h, w))
    rates, busy = {}, {}
    for workers in (1, 2):
        out = root / f"crf_out{workers}"
        start, cpu = time.perf_counter(), cpu_seconds()
        summary = crf_folder(images, probs, out, DenseCRF(), workers=workers)
        wall = time.perf_counter() - start
        rates[workers], busy[workers] = n / wall, (cpu_seconds() - cpu) / wall
        assert summary.written == n, summary
    return [
        (f"CRF {w}x{h}, {NUM_CLASSES} classes, 10 iters, 1 process", f"{rates[1]:.2f} img/s", "1.00x",
         f"{busy[1]:.2f}"),
        ("CRF same, 2 processes (`crf_folder`)", f"{rates[2]:.2f} img/s", f"{rates[2] / rates[1]:.2f}x",
         f"{busy[2]:.2f}"),
    ]  # fmt: skip


def bench_runtime(root: Path, name: str, size: int, repeats: int) -> list[tuple[str, str, str, str]]:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES).eval()
    wrapper = SegmentationExport(model, model.input_convention).eval()
    images = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8).float()
    with torch.inference_mode():
        wrapper(images)  # warm-up
        eager = median_time(lambda: wrapper(images), repeats)
    path = root / f"{name}.onnx"
    export_model(model, {"classes": [str(i) for i in range(NUM_CLASSES)]}, path, example_size=65, check=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"images": images.numpy()}
    session.run(None, feed)  # warm-up
    onnx = median_time(lambda: session.run(None, feed), repeats)
    return [
        (f"{name} {size}x{size}, eager PyTorch", f"{1 / eager:.2f} img/s", "1.00x", ""),
        (f"{name} {size}x{size}, onnxruntime", f"{1 / onnx:.2f} img/s", f"{eager / onnx:.2f}x", ""),
    ]


def bench_eval(root: Path, n: int, repeats: int) -> list[tuple[str, str, str, str]]:
    rng = np.random.default_rng(0)
    gt_dir, pred_dir = root / "gt", root / "pred"
    for i in range(n):
        # Blocky maps like real segmentations (compress like VOC PNGs, unlike pure noise).
        gt = np.kron(rng.integers(0, NUM_CLASSES, (VOC_H // 25 + 1, VOC_W // 25 + 1)), np.ones((25, 25)))
        gt = gt[:VOC_H, :VOC_W].astype(np.uint8)
        pred = np.roll(gt, 7, axis=1)
        gt[:2] = 255
        write_label(gt_dir / f"{i:05d}.png", gt)
        write_label(pred_dir / f"{i:05d}.png", pred)
    ids = [f"{i:05d}" for i in range(n)]

    def serial() -> np.ndarray:
        total = np.zeros(NUM_CLASSES * NUM_CLASSES, np.int64)
        for sample_id in ids:
            gt, pred = read_label(gt_dir / f"{sample_id}.png"), read_label(pred_dir / f"{sample_id}.png")
            keep = gt != 255
            total += np.bincount(gt[keep].astype(np.int64) * NUM_CLASSES + pred[keep], minlength=NUM_CLASSES**2)
        return total

    cpu = cpu_seconds()
    base = median_time(serial, repeats)
    busy = (cpu_seconds() - cpu) / (base * repeats)
    rows = [(f"eval {n} pairs {VOC_W}x{VOC_H}, serial read + bincount", f"{n / base:.0f} pairs/s", "1.00x",
             f"{busy:.2f}")]  # fmt: skip
    for workers in (2, 4):
        cpu = cpu_seconds()
        t = median_time(lambda w=workers: evaluate_folders(pred_dir, gt_dir, num_classes=NUM_CLASSES, workers=w), repeats)
        busy = (cpu_seconds() - cpu) / (t * repeats)
        rows.append((f"eval same, `evaluate_folders` {workers} processes", f"{n / t:.0f} pairs/s",
                     f"{base / t:.2f}x", f"{busy:.2f}"))  # fmt: skip
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks and print the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (smoke run)")
    parser.add_argument("--crf-images", type=int, default=12)
    parser.add_argument("--eval-pairs", type=int, default=1449)
    parser.add_argument("--size", type=int, default=513, help="network input size")
    parser.add_argument("--skip", nargs="*", default=[], choices=["crf", "runtime", "eval"])
    args = parser.parse_args(argv)
    if args.quick:
        args.crf_images, args.eval_pairs, args.size = 4, 100, 257
    crf_hw = (VOC_H, VOC_W) if not args.quick else (120, 160)
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "crf" not in args.skip:
            rows += bench_crf(root, args.crf_images, *crf_hw)
        if "runtime" not in args.skip:
            rows += bench_runtime(root, "tiny_deeplab", args.size, repeats=5 if not args.quick else 2)
            rows += bench_runtime(root, "vgg16_largefov", args.size, repeats=3 if not args.quick else 1)
        if "eval" not in args.skip:
            rows += bench_eval(root, args.eval_pairs, repeats=3 if not args.quick else 1)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {os.cpu_count()} CPUs "
          f"(load average {load}), torch {torch.__version__}, {torch.get_num_threads()} torch threads\n")  # fmt: skip
    print("| case | throughput | vs baseline | CPU-s per wall-s |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
