"""Accuracy benchmark: does PIP close the gap between box pseudo labels and full supervision?

Same synthetic data, same small model, same schedule; several seeds per setting:

    full        cross-entropy on ground-truth masks            (upper bound)
    box-ce      cross-entropy on filled-box pseudo labels      (the baseline PIP should beat)
    box-pip     PIP on filled-box pseudo labels
    grabcut-ce  cross-entropy on GrabCut pseudo labels
    grabcut-pip PIP on GrabCut pseudo labels
  ablations (with --ablations):
    box-pixel   PIP pixel weighting alone (lambda = 0)
    box-boxterm PIP box term alone (tau = 0: uniform pixel weights)
    box-pip-l1  PIP with lambda = 1.0
    crf-ce / crf-pip  the same on DenseCRF-refined pseudo labels

Runs go two at a time (one thread each) and are resumable: a finished run's summary is reused.
The shapes are too easy to tell label sources apart (DenseCRF labels match full masks): the
hard benchmark (`benchmarks/accuracy_hard.py`, `make bench-accuracy`) does that.
Prints a markdown table of val mIoU (mean and spread over seeds) against ground truth, and the
fraction of the (box-ce -> full) gap that each setting closes. `make bench-accuracy-shapes`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

SETTINGS: dict[str, dict[str, object]] = {
    "full": {"data.label_source": "gt", "loss.kind": "ce"},
    "box-ce": {"data.label_source": "box", "loss.kind": "ce"},
    "box-pip": {"data.label_source": "box", "loss.kind": "pip", "loss.lamb": 0.2},
    "grabcut-ce": {"data.label_source": "grabcut", "loss.kind": "ce"},
    "grabcut-pip": {"data.label_source": "grabcut", "loss.kind": "pip", "loss.lamb": 0.2},
}
ABLATIONS: dict[str, dict[str, object]] = {
    "box-pixel": {"data.label_source": "box", "loss.kind": "pip", "loss.lamb": 0.0},
    "box-boxterm": {"data.label_source": "box", "loss.kind": "pip", "loss.lamb": 0.2, "loss.tau": 0.0},
    "box-pip-l1": {"data.label_source": "box", "loss.kind": "pip", "loss.lamb": 1.0},
    "box-pip-l3": {"data.label_source": "box", "loss.kind": "pip", "loss.lamb": 3.0},
    "crf-ce": {"data.label_source": "crf", "loss.kind": "ce"},
    "crf-pip": {"data.label_source": "crf", "loss.kind": "pip", "loss.lamb": 0.2},
}
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def run_one(workdir: str, name: str, overrides: dict[str, object], seed: int, extra: list[str]) -> dict:
    """Train one setting with one seed (one thread) and return its final val metrics."""
    import torch

    torch.set_num_threads(1)
    from pipseg.config import load_config
    from pipseg.engine.trainer import train

    out_dir = Path(workdir) / "runs" / f"{name}-s{seed}"
    summary_path = out_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("finished"):
            return {"name": name, "seed": seed, **summary["metrics"], "reused": True}
    sets = [f"data.root={Path(workdir) / 'data'}", f"runtime.out_dir={out_dir}",
            f"runtime.seed={seed}", "runtime.device=cpu", "data.workers=0"]  # fmt: skip
    sets += [f"{k}={v}" for k, v in overrides.items()] + extra
    cfg = load_config(CONFIG, sets)
    cfg.runtime.val_every = cfg.optim.iters  # score once, at the end
    started = time.perf_counter()
    result = train(cfg, resume=(out_dir / "last.pt").is_file(), force=False)
    metrics = dict(result.metrics or {})
    return {"name": name, "seed": seed, **metrics, "time_s": time.perf_counter() - started}


def prepare_data(workdir: Path, kinds: list[str], n_train: int, n_val: int) -> dict[str, float]:
    """Generate the dataset and its pseudo labels; return each source's mIoU vs ground truth."""
    from pipseg.config import CRFConfig
    from pipseg.data.prepare import prepare_dataset
    from pipseg.data.synthetic import SYNTHETIC_CLASSES, make_synthetic_voc

    root = make_synthetic_voc(workdir / "data", n_train=n_train, n_val=n_val, seed=0)
    report = prepare_dataset(root, pseudo=kinds, classes=list(SYNTHETIC_CLASSES), crf=CRFConfig())
    return {k: s.miou.get("train", float("nan")) for k, s in report.sources.items() if k in kinds}


def summarise(results: list[dict], pseudo_miou: dict[str, float], names: list[str]) -> str:
    """Markdown table: mean and spread of val mIoU per setting, and the gap PIP closes."""
    by_name = {n: [r["miou"] for r in results if r["name"] == n] for n in names}
    mean = {n: statistics.mean(v) for n, v in by_name.items() if v}
    lines = ["| setting | label source | loss | pseudo-label mIoU (train) | val mIoU mean | "
             "spread (min..max) | seeds | gap closed vs box-ce |",
             "|---|---|---|---:|---:|---|---:|---:|"]  # fmt: skip
    gap = mean.get("full", float("nan")) - mean.get("box-ce", float("nan"))
    for n in names:
        vals = by_name.get(n) or []
        if not vals:
            continue
        spec = {**SETTINGS, **ABLATIONS}[n]
        source, loss = str(spec["data.label_source"]), str(spec["loss.kind"])
        knobs = [f"{k.split('.')[1]}={v}" for k, v in spec.items() if k.startswith("loss.") and k != "loss.kind"]
        loss_text = f"{loss} ({', '.join(knobs)})" if knobs else loss
        pseudo = f"{100 * pseudo_miou[source]:.1f}" if source in pseudo_miou else "-"
        closed = "-" if n == "full" or not gap or gap != gap else f"{100 * (mean[n] - mean['box-ce']) / gap:+.0f}%"
        lines.append(f"| {n} | {source} | {loss_text} | {pseudo} | {100 * mean[n]:.1f} | "
                     f"{100 * min(vals):.1f}..{100 * max(vals):.1f} | {len(vals)} | {closed} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("runs/accuracy"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=400, help="optim.iters of every run (0: the config's)")
    parser.add_argument("--ablations", action="store_true", help="also run the ablations")
    parser.add_argument("--only", nargs="*", help="run only these settings")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--n-train", type=int, default=160)
    parser.add_argument("--n-val", type=int, default=40)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra config override")
    parser.add_argument("--json", type=Path, help="write all results here")
    args = parser.parse_args(argv)
    settings = {**SETTINGS, **(ABLATIONS if args.ablations else {})}
    if args.only:
        settings = {k: v for k, v in {**SETTINGS, **ABLATIONS}.items() if k in args.only}
    kinds = sorted({str(s["data.label_source"]) for s in settings.values()} - {"gt"})
    started = time.perf_counter()
    pseudo_miou = prepare_data(args.workdir, kinds, args.n_train, args.n_val)
    extra = list(args.sets) + ([f"optim.iters={args.iters}"] if args.iters else [])
    jobs = [(name, spec, seed) for seed in range(args.seeds) for name, spec in settings.items()]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, str(args.workdir), n, s, seed, extra) for n, s, seed in jobs]
        results = []
        for f in futures:
            r = f.result()
            results.append(r)
            print(f"  {r['name']:<12} seed {r['seed']}  val mIoU {100 * r['miou']:.1f}", flush=True)
    print(f"\n{time.strftime('%Y-%m-%d')}, {len(jobs)} runs, {time.perf_counter() - started:.0f} s, "
          f"{args.jobs} parallel runs of one thread; extra overrides: {extra or 'none'}\n")  # fmt: skip
    print(summarise(results, pseudo_miou, list(settings)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"pseudo_miou": pseudo_miou, "results": results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
