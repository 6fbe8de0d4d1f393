"""The hard accuracy benchmark (`python benchmarks/accuracy.py --hard`): which label source, loss
and rounds get box supervision to full supervision when box-derived labels are as wrong as VOC's?

Data: `pipseg.data.synthetic_hard` (photo backgrounds, real textures, look-alike clutter, soft
edges, occlusion, thin / concave / holed objects). Rows: full masks (CE), then each label source
(box, grabcut, crf, consensus when `prepare` makes it, refine-1) x each loss (ce, pip at lambda
0.2, pip at lambda 1). ``refine-1`` is one self-training round (`pipseg.refine.relabel`) from
the same seed's ``crf-pip`` model. Each row is trained from scratch and from a pretrained start:
tiny_deeplab trained once with full masks on the shapes dataset (other classes, other shapes),
its classifier re-initialised (cached in ``<workdir>/pretrain``). Every run is also scored with
DenseCRF at test time. Runs go ``--jobs`` at a time (one thread each) and are resumable.
"""

from __future__ import annotations

import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
LOSSES: dict[str, dict[str, object]] = {
    "ce": {"loss.kind": "ce"},
    "pip": {"loss.kind": "pip", "loss.lamb": 0.2},
    "pip-l1": {"loss.kind": "pip", "loss.lamb": 1.0},
}
REFINE_FROM = "crf-pip"  # the round-0 run whose model makes refine-1


def hard_settings(sources: list[str]) -> dict[str, dict[str, object]]:
    """``full`` plus ``<source>-<loss>`` for every source and loss."""
    settings: dict[str, dict[str, object]] = {
        "full": {"data.label_source": "gt", "loss.kind": "ce"}
    }
    for source in sources:
        for loss, spec in LOSSES.items():
            settings[f"{source}-{loss}"] = {"data.label_source": source, **spec}
    return settings


def base_sets(workdir: Path, start: str, seed: int, out_dir: Path) -> list[str]:
    from pipseg.data.synthetic_hard import HARD_CLASSES

    init = str(workdir / "pretrain" / "init.pt") if start == "pretrained" else "none"
    return [f"data.root={workdir / 'data'}", f"data.classes=[{', '.join(HARD_CLASSES)}]",
            f"runtime.out_dir={out_dir}", f"runtime.seed={seed}", "runtime.device=cpu",
            "data.workers=0", f"model.init={init}", "eval.pad_size=128"]  # fmt: skip


def run_hard(
    workdir: str, start: str, name: str, spec: dict[str, object], seed: int, extra: list[str]
) -> dict:
    """Train one setting with one seed and start (one thread); val mIoU without and with CRF."""
    import torch

    torch.set_num_threads(1)
    from pipseg.config import load_config
    from pipseg.engine.trainer import train
    from pipseg.evaluate import evaluate_checkpoint
    from pipseg.refine import round_config

    out_dir = Path(workdir) / "runs" / start / f"{name}-s{seed}"
    done = out_dir / "bench.json"
    if done.is_file():
        return {**json.loads(done.read_text()), "reused": True}
    source = str(spec["data.label_source"])
    sets = base_sets(Path(workdir), start, seed, out_dir)
    sets += [f"{k}={v}" for k, v in spec.items() if k != "data.label_source"] + extra
    cfg = round_config(load_config(CONFIG, sets), source, out_dir)  # refine-* is no config literal
    cfg.runtime.val_every = cfg.optim.iters
    started = time.perf_counter()
    result = train(cfg, resume=(out_dir / "last.pt").is_file(), force=False)
    scores, _ = evaluate_checkpoint(cfg, result.last_checkpoint, crf=True)
    row = {"start": start, "name": name, "seed": seed, "source": source, "miou": result.metrics["miou"],
           "miou_crf": scores["crf"]["miou"], "time_s": time.perf_counter() - started}  # fmt: skip
    done.write_text(json.dumps(row))
    return row


def prepare_hard(
    workdir: Path, n_train: int, n_val: int, size: tuple[int, int]
) -> tuple[dict[str, float], list[str]]:
    """Generate the hard dataset and its pseudo labels; each source's mIoU vs ground truth."""
    from pipseg.config import CRFConfig
    from pipseg.data.prepare import prepare_dataset
    from pipseg.data.pseudo import PSEUDO_KINDS
    from pipseg.data.synthetic_hard import HARD_CLASSES, make_hard_voc

    kinds = [k for k in ("box", "grabcut", "crf", "consensus") if k in PSEUDO_KINDS]
    root = make_hard_voc(workdir / "data", n_train=n_train, n_val=n_val, image_size=size, seed=0)
    report = prepare_dataset(
        root, pseudo=kinds, classes=list(HARD_CLASSES), crf=CRFConfig(), workers=2
    )
    return {
        k: s.miou.get("train", float("nan")) for k, s in report.sources.items() if k in kinds
    }, kinds


def pretrain(workdir: Path, iters: int) -> Path:
    """tiny_deeplab trained with full masks on the shapes dataset, classifier re-initialised:
    the ``model.init`` file of the pretrained start (made once)."""
    import torch

    from pipseg.config import load_config
    from pipseg.data.prepare import prepare_dataset
    from pipseg.data.synthetic import SYNTHETIC_CLASSES, make_synthetic_voc
    from pipseg.data.synthetic_hard import HARD_CLASSES
    from pipseg.engine.trainer import train
    from pipseg.io import atomic_write
    from pipseg.models import build_model, model_from_checkpoint

    init = workdir / "pretrain" / "init.pt"
    if init.is_file():
        return init
    root = make_synthetic_voc(workdir / "pretrain" / "data", n_train=160, n_val=8, seed=1000)
    prepare_dataset(root, classes=list(SYNTHETIC_CLASSES), workers=2)
    sets = [f"data.root={root}", f"runtime.out_dir={workdir / 'pretrain' / 'run'}", "runtime.seed=1000",
            "runtime.device=cpu", "data.label_source=gt", "loss.kind=ce", f"optim.iters={iters}"]  # fmt: skip
    cfg = load_config(CONFIG, sets)
    cfg.runtime.val_every = cfg.optim.iters
    result = train(cfg, resume=(Path(cfg.runtime.out_dir) / "last.pt").is_file())
    source, _ = model_from_checkpoint(result.last_checkpoint)
    torch.manual_seed(1000)
    fresh = build_model("tiny_deeplab", len(HARD_CLASSES))
    state = {
        k: (fresh.state_dict()[k] if k.startswith("classifier.") else v)
        for k, v in source.state_dict().items()
    }
    doc = {"model": state, "input_convention": source.input_convention.as_dict()}
    atomic_write(init, lambda tmp: torch.save(doc, tmp))
    return init


def make_refine_labels(
    workdir: Path, start: str, seed: int, extra: list[str], workers: int
) -> tuple[str, float]:
    """Label source ``refine-1-<start>-s<seed>`` from that seed's `REFINE_FROM` run; its mIoU."""
    from pipseg.config import load_config
    from pipseg.refine import relabel, source_miou

    out_dir = workdir / "runs" / start / f"{REFINE_FROM}-s{seed}"
    cfg = load_config(CONFIG, base_sets(workdir, start, seed, out_dir) + extra)
    source = f"refine-1-{start}-s{seed}"
    relabel(cfg, out_dir / "last.pt", "crf", source, workers=workers)
    return source, source_miou(cfg, source)  # type: ignore[return-value]


def run_pool(workdir: Path, jobs: list[tuple], n: int, extra: list[str]) -> list[dict]:
    results = []
    with ProcessPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(run_hard, str(workdir), *job, extra) for job in jobs]
        for f in futures:
            r = f.result()
            results.append(r)
            print(f"  {r['start']:<10} {r['name']:<16} seed {r['seed']}  val mIoU {100 * r['miou']:.1f}"
                  f"  (+CRF {100 * r['miou_crf']:.1f})", flush=True)  # fmt: skip
    return results


def summarise_hard(
    results: list[dict], pseudo: dict[str, float], names: list[str], start: str
) -> str:
    """Markdown table of one start: mean, spread and share of full supervision per setting."""
    rows = [r for r in results if r["start"] == start]
    by = {n: [r for r in rows if r["name"] == n] for n in names}
    full = statistics.mean(r["miou"] for r in by["full"]) if by.get("full") else float("nan")
    lines = [f"start: {start}", "",
             "| setting | pseudo-label mIoU (train) | val mIoU mean | spread (min..max) | seeds | "
             "% of full | + test-time CRF (mean) |", "|---|---:|---:|---|---:|---:|---:|"]  # fmt: skip
    for n in names:
        runs = by.get(n) or []
        if not runs:
            continue
        vals = [r["miou"] for r in runs]
        scored = (
            [pseudo[s] for s in {r["source"] for r in runs} if s in pseudo] if n != "full" else []
        )
        p = f"{100 * statistics.mean(scored):.1f}" if scored else "-"
        mean = statistics.mean(vals)
        lines.append(f"| {n} | {p} | {100 * mean:.1f} | {100 * min(vals):.1f}..{100 * max(vals):.1f} | "
                     f"{len(vals)} | {100 * mean / full:.0f}% | "
                     f"{100 * statistics.mean(r['miou_crf'] for r in runs):.1f} |")  # fmt: skip
    return "\n".join(lines)


def main_hard(args: Any) -> int:
    """Run the hard benchmark with the parsed options of `accuracy.py`."""
    workdir: Path = args.workdir
    started = time.perf_counter()
    size = (args.size, round(args.size * 6 / 7))
    pseudo, kinds = prepare_hard(workdir, args.n_train, args.n_val, size)
    settings = hard_settings(kinds + ["refine-1"])
    if args.only:
        settings = {k: v for k, v in settings.items() if k in args.only}
    extra = list(args.sets) + ([f"optim.iters={args.iters}"] if args.iters else [])
    if "pretrained" in args.starts:
        pretrain(workdir, args.pretrain_iters)
    plain = [(n, s) for n, s in settings.items() if s["data.label_source"] != "refine-1"]
    refined = [(n, s) for n, s in settings.items() if s["data.label_source"] == "refine-1"]
    if refined and REFINE_FROM not in dict(plain):
        plain.append((REFINE_FROM, hard_settings(["crf"])[REFINE_FROM]))
    seeds = range(args.seeds)
    results = run_pool(workdir, [(st, n, s, seed) for st in args.starts for seed in seeds for n, s in plain],
                       args.jobs, extra)  # fmt: skip
    jobs = []
    for st in args.starts if refined else []:
        for seed in seeds:
            source, miou = make_refine_labels(workdir, st, seed, extra, args.jobs)
            pseudo[source] = miou
            jobs += [(st, n, {**s, "data.label_source": source}, seed) for n, s in refined]
    results += run_pool(workdir, jobs, args.jobs, extra)
    print(f"\n{time.strftime('%Y-%m-%d')}, hard benchmark, {len(results)} runs, "
          f"{time.perf_counter() - started:.0f} s, {args.jobs} parallel runs of one thread; images "
          f"{size[0]}x{size[1]}, {args.n_train} train / {args.n_val} val; overrides: {extra or 'none'}\n")  # fmt: skip
    print("pseudo-label mIoU vs ground truth (train): "
          + ", ".join(f"{k} {100 * v:.1f}" for k, v in pseudo.items()) + "\n")  # fmt: skip
    names = list(dict.fromkeys([*settings, *(n for n, _ in plain)]))
    for st in args.starts:
        print(summarise_hard(results, pseudo, names, st) + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"pseudo_miou": pseudo, "results": results}, indent=2, default=str)
        )
    return 0
