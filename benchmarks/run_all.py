"""Run every benchmark in this folder in turn and print their markdown tables (`make bench`).

Each benchmark measures a candidate against a baseline in the same process and reports
medians and ratios; `--quick` shrinks sizes and repeats for a fast smoke run.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
from pathlib import Path

import torch

BENCHMARKS = ["bench_loss", "bench_model", "bench_data", "bench_train", "bench_inference", "bench_annotations"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--only", nargs="*", choices=BENCHMARKS, help="run only these")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    print(f"# pipseg benchmarks, {time.strftime('%Y-%m-%d')}")
    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}\n")  # fmt: skip
    failed = []
    for name in args.only or BENCHMARKS:
        module = importlib.import_module(name)
        print(f"## {name}\n", flush=True)
        rc = module.main(["--quick"] if args.quick else [])
        if rc:
            failed.append(name)
        print(flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
