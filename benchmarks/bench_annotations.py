"""Annotation reading alone: a generated COCO instances file against the same boxes as VOC XML.

    .venv/bin/python benchmarks/bench_annotations.py [--images 10000] [--repeats 5] [--quick]

Both datasets hold the same images (empty placeholder files: reading annotations opens no image)
and the same 1..6 boxes per image in 20 classes. Each reader runs ``--repeats`` times in this
process, alternating, after one untimed warm-up (so both read from a warm page cache); the table
gives the median per run and per image, and checks that both gave identical boxes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipseg.config import VOC_CLASSES
from pipseg.data.annotations import read_annotations
from pipseg.data.synthetic import voc_xml

WIDTH, HEIGHT = 500, 375


def generate(root: Path, count: int, seed: int = 0) -> None:
    """``images/``, ``Annotations/<id>.xml`` and ``instances.json`` for ``count`` images."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "Annotations").mkdir()
    images, anns = [], []
    for k in range(count):
        sample_id = f"img_{k:06d}"
        n = int(rng.integers(1, 7))
        x0, y0 = rng.integers(0, WIDTH - 40, n), rng.integers(0, HEIGHT - 40, n)
        x1 = np.minimum(x0 + rng.integers(10, 200, n), WIDTH - 1)
        y1 = np.minimum(y0 + rng.integers(10, 200, n), HEIGHT - 1)
        cls = rng.integers(1, len(VOC_CLASSES), n)
        boxes = np.stack([x0, y0, x1, y1, cls], 1)
        (root / "images" / f"{sample_id}.jpg").touch()
        (root / "Annotations" / f"{sample_id}.xml").write_text(
            voc_xml(sample_id, boxes, WIDTH, HEIGHT, list(VOC_CLASSES))
        )
        images.append({"id": k, "file_name": f"{sample_id}.jpg", "width": WIDTH, "height": HEIGHT})
        for a, b, c, d, e in boxes.tolist():
            anns.append({"id": len(anns), "image_id": k, "category_id": 3 * e,  # ids with gaps
                         "bbox": [a, b, c + 1 - a, d + 1 - b], "area": 0, "iscrowd": 0})  # fmt: skip
    categories = [{"id": 3 * i, "name": n} for i, n in enumerate(VOC_CLASSES) if i]
    (root / "instances.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": categories})
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1,000 images, 3 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.repeats = 1_000, 3
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        generate(root, args.images)
        print(f"generated {args.images} images in {time.perf_counter() - start:.1f} s\n")
        readers = {
            "COCO instances JSON": lambda: read_annotations(
                "coco", root / "instances.json", root / "images", list(VOC_CLASSES)),
            "VOC XML folder": lambda: read_annotations(
                "voc", root / "Annotations", root / "images", list(VOC_CLASSES)),
        }  # fmt: skip
        results = {name: read() for name, read in readers.items()}  # warm-up, and the check
        same = all(
            np.array_equal(results["COCO instances JSON"].records[i].boxes, r.boxes)
            for i, r in results["VOC XML folder"].records.items()
        )
        times: dict[str, list[float]] = {name: [] for name in readers}
        for _ in range(args.repeats):
            for name, read in readers.items():
                start = time.perf_counter()
                read()
                times[name].append(time.perf_counter() - start)
    print("| reader | images | boxes | median s per run | µs per image |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f"| {name} | {args.images} | {results[name].objects} | {median:.3f} | "
              f"{1e6 * median / args.images:.1f} |")  # fmt: skip
    coco, voc = (statistics.median(t) for t in times.values())
    print(f"\nVOC / COCO time per image: {voc / coco:.1f}x; identical boxes: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
