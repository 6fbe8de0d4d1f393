"""Segment Anything labels: seconds to load a checkpoint and to label one image, against the
package's own predictor prompted one box at a time.

Without ``--checkpoint`` a randomly initialised official-layout model of ``--model`` is saved to a
temp file first (speed does not depend on the weights; label quality needs the public ones).
Images are VOC-sized (500x375) random pictures with ``--boxes`` boxes each; SAM resizes every
image to 1024 on its long side, so the time per image hardly depends on the image size. Prints
a markdown table of medians (the first image of each row is a warm-up and left out); the
rows take turns image by image, so a shared machine's load falls on all of them alike.

    .venv/bin/python benchmarks/bench_sam.py [--model vit_b] [--images 3] [--boxes 3]
        [--checkpoint FILE] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from segment_anything import SamPredictor

from pipseg.data.prepare import LabelItem
from pipseg.labels.sam import SAM_BUILDERS, SamLabeller, SamSource, load_sam


def _interleaved(
    fns: list[Callable[[np.ndarray], object]], images: list[np.ndarray]
) -> list[list[float]]:
    """Seconds per image for each of ``fns``, taking turns image by image (in a rotating order)
    so that a shared machine's changing load falls on all of them alike."""
    out: list[list[float]] = [[] for _ in fns]
    for i, image in enumerate(images):
        for k in (np.arange(len(fns)) + i) % len(fns):
            start = time.perf_counter()
            fns[k](image)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            out[k].append(time.perf_counter() - start)
    return out


def _row(name: str, times: list[float]) -> str:
    rest = times[1:] or times
    cells = [times[0], statistics.median(rest), min(rest), max(rest)]
    return f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + " |"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SAM_BUILDERS), default="vit_b")
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="a real checkpoint (default: random weights)"
    )
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--boxes", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="2 images (smoke run)")
    args = parser.parse_args(argv)
    images_n = 2 if args.quick else max(2, args.images)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.checkpoint
        if path is None:
            torch.manual_seed(0)
            path = Path(tmp) / f"sam_{args.model}_random.pth"
            torch.save(SAM_BUILDERS[args.model]().state_dict(), path)
        start = time.perf_counter()
        model = load_sam(path, None if args.checkpoint else args.model, args.device)
        load_s = time.perf_counter() - start

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (375, 500, 3), dtype=np.uint8) for _ in range(images_n)]
    x0 = rng.integers(0, 250, args.boxes)
    y0 = rng.integers(0, 180, args.boxes)
    boxes = np.stack([x0, y0, x0 + 200, y0 + 150, 1 + np.arange(args.boxes) % 20], 1)
    labeller = SamLabeller(model)
    predictor = SamPredictor(model)

    work = Path(tempfile.mkdtemp(prefix="bench_sam_"))
    source = SamSource(labeller)

    def prepare_path(image: np.ndarray) -> None:
        """What `prepare --pseudo sam` does per image: read, label, write (crf on fallback)."""
        n = len(list(work.glob("*.png")))
        Image.fromarray(image).save(work / f"im{n}.png")
        source([LabelItem(f"im{n}", work / f"im{n}.png", boxes)], work / "out")

    def per_box(image: np.ndarray) -> None:
        predictor.set_image(image)
        for box in boxes[:, :4]:
            predictor.predict(box=box, multimask_output=True)

    names = [
        "prepare --pseudo sam path (SamSource: read, label, write)",
        "SamLabeller: all boxes in one batch, painted",
        "package SamPredictor, one predict() per box",
        "image embedding alone (set_image)",
    ]
    fns = [prepare_path, lambda im: labeller(im, boxes), per_box, predictor.set_image]
    rows = list(zip(names, _interleaved(fns, images), strict=True))
    print(f"SAM {args.model} on {model.device}, {torch.get_num_threads()} torch threads, "
          f"{images_n} images 500x375 with {args.boxes} boxes; load {load_s:.2f} s "
          f"({'given' if args.checkpoint else 'random'} checkpoint)\n")  # fmt: skip
    print("| what | first image s | median s/image | min | max |")
    print("|---|---|---|---|---|")
    for name, times in rows:
        print(_row(name, times))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
