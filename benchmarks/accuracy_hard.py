"""The hard accuracy benchmark (`make bench-accuracy`): which label source, loss and rounds get
box supervision to full supervision when box-derived labels are as wrong as VOC's?

Data: `pipseg.data.synthetic_hard` (photo backgrounds, real textures, look-alike clutter, soft
edges, occlusion, thin / concave / holed objects). Settings: ``full`` (ground-truth masks, CE)
and ``<source>-<loss>`` for the label sources box, grabcut, crf, consensus, refine-1, refine-2
and the losses ce, pip (lambda 0.2) and pip-l1 (lambda 1). ``refine-k`` is self-training round k
(`pipseg.refine.relabel`): the same seed's ``refine-(k-1)-pip`` model (``crf-pip`` for k = 1)
relabels the train images, constrained to the boxes and refined by DenseCRF. Every setting is
trained from scratch and from a pretrained start (tiny_deeplab trained once with full masks on
the shapes dataset, other classes and shapes, classifier re-initialised; cached in
``<workdir>/pretrain``), and scored without and with DenseCRF at test time.

``--grid core`` (the default, ~22 min on 2 cores) runs the settings that decide the recommended
pipeline; ``--grid full`` every source x loss (~50 min). ``refine-1-pip-l1+agree`` is round 1
with ``pipseg refine --agree``. ``crf-pip-l3`` (lambda 3) and ``crf-pip-l1+pairwise[0.3]`` (the
colour-affinity term, ``loss.pairwise`` 1 or 0.3) run only when named in ``--only``.
Runs go ``--jobs`` at a time, one thread each, and are resumable: a finished run is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
SOURCES = ["box", "grabcut", "crf", "consensus", "refine-1", "refine-2"]
LOSSES: dict[str, dict[str, object]] = {
    "ce": {"loss.kind": "ce"},
    "pip": {"loss.kind": "pip", "loss.lamb": 0.2},
    "pip-l1": {"loss.kind": "pip", "loss.lamb": 1.0},
}
AGREE = "+agree"  # a chain whose rounds keep only labels agreeing with the previous round's
EXPLORE: dict[str, dict[str, object]] = {  # beyond the grid
    "crf-pip-l3": {"data.label_source": "crf", "loss.kind": "pip", "loss.lamb": 3.0},
    "refine-1-pip-l1+agree": {"data.label_source": "refine-1", **LOSSES["pip-l1"]},
    "crf-pip-l1+pairwise": {"data.label_source": "crf", **LOSSES["pip-l1"], "loss.pairwise": 1.0},
    "crf-pip-l1+pairwise0.3": {"data.label_source": "crf", **LOSSES["pip-l1"], "loss.pairwise": 0.3},
}
CORE = [
    "full",
    "crf-ce",
    "crf-pip",
    "crf-pip-l1",
    "consensus-pip",
    "refine-1-pip-l1",
    "refine-2-pip-l1",
    "refine-1-pip-l1+agree",
]
REFERENCE = "crf-pip"  # what every added part must beat by more than the seed spread


def all_settings() -> dict[str, dict[str, object]]:
    """``full`` plus ``<source>-<loss>`` for every source and loss."""
    settings: dict[str, dict[str, object]] = {
        "full": {"data.label_source": "gt", "loss.kind": "ce"}
    }
    for source in SOURCES:
        for loss, spec in LOSSES.items():
            settings[f"{source}-{loss}"] = {"data.label_source": source, **spec}
    return {**settings, **EXPLORE}


def round_of(name: str) -> int:
    """Self-training round a setting trains in (0 for the prepared sources)."""
    return int(name.split("-")[1]) if name.startswith("refine-") else 0


def loss_of(name: str) -> str:
    """The loss part of a ``<source>-<loss>`` setting (with `AGREE` for such refine chains)."""
    if name == "full":
        return "ce"
    return name.split("-", 2)[2] if name.startswith("refine-") else name.split("-", 1)[1]


def teacher_of(k: int, loss: str) -> str:
    """The setting whose model makes the labels of round ``k`` of the ``loss`` chain: each chain
    trains with one loss throughout (crf labels, then refine-1, refine-2, ...)."""
    return f"crf-{loss.removesuffix(AGREE)}" if k == 1 else f"refine-{k - 1}-{loss}"


def refine_source(k: int, loss: str, start: str, seed: int) -> str:
    """The label source of round ``k`` of a chain, per start and seed."""
    return f"refine-{k}-{loss.replace(AGREE, '-agree')}-{start}-s{seed}"


def with_teachers(names: list[str]) -> list[str]:
    """``names`` plus every run the refine rounds among them need, in order."""
    needed = set(names)
    for name in names:
        for k in range(round_of(name), 0, -1):
            needed.add(teacher_of(k, loss_of(name)))
    return [n for n in all_settings() if n in needed]


def base_sets(workdir: Path, start: str, seed: int, out_dir: Path) -> list[str]:
    from pipseg.data.synthetic_hard import HARD_CLASSES

    init = str(workdir / "pretrain" / "init.pt") if start == "pretrained" else "none"
    return [f"data.root={workdir / 'data'}", f"data.classes=[{', '.join(HARD_CLASSES)}]",
            f"runtime.out_dir={out_dir}", f"runtime.seed={seed}", "runtime.device=cpu",
            "data.workers=0", f"model.init={init}", "eval.pad_size=128"]  # fmt: skip


def run_dir(workdir: Path, start: str, name: str, seed: int) -> Path:
    return workdir / "runs" / start / f"{name}-s{seed}"


def run_hard(workdir: str, start: str, name: str, seed: int, extra: list[str]) -> dict:
    """Train one setting with one seed and start (one thread); val mIoU without and with CRF."""
    import torch

    torch.set_num_threads(1)
    from pipseg.config import load_config
    from pipseg.engine.trainer import train
    from pipseg.evaluate import evaluate_checkpoint
    from pipseg.refine import round_config

    out_dir = run_dir(Path(workdir), start, name, seed)
    done = out_dir / "bench.json"
    if done.is_file():
        return {**json.loads(done.read_text()), "reused": True}
    spec = all_settings()[name]
    source = str(spec["data.label_source"])
    if source.startswith("refine-"):  # each chain, seed and start self-trains on its own labels
        source = refine_source(round_of(name), loss_of(name), start, seed)
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


def relabel_round(
    workdir: str, start: str, k: int, loss: str, seed: int, extra: list[str]
) -> tuple[str, tuple[float, float | None]]:
    """Label source ``refine-<k>-<loss>-<start>-s<seed>`` from the seed's teacher run; its mIoU
    against ground truth (on its labelled pixels) and its coverage."""
    import torch

    torch.set_num_threads(1)
    from pipseg.config import load_config
    from pipseg.refine import relabel, source_quality

    teacher = run_dir(Path(workdir), start, teacher_of(k, loss), seed)
    previous = json.loads((teacher / "bench.json").read_text())["source"]
    cfg = load_config(CONFIG, base_sets(Path(workdir), start, seed, teacher) + extra)
    source = refine_source(k, loss, start, seed)
    relabel(cfg, teacher / "last.pt", previous, source, workers=1, agree=loss.endswith(AGREE))
    return source, source_quality(cfg, source)


def prepare_hard(
    workdir: Path, n_train: int, n_val: int, size: tuple[int, int]
) -> dict[str, tuple[float, float | None]]:
    """Generate the hard dataset and its pseudo labels; each source's mIoU vs ground truth (on
    its labelled pixels) and coverage (share of pixels not ignored)."""
    from pipseg.config import CRFConfig
    from pipseg.data.prepare import prepare_dataset
    from pipseg.data.synthetic_hard import HARD_CLASSES, make_hard_voc

    kinds = ["box", "grabcut", "crf", "consensus"]
    root = make_hard_voc(workdir / "data", n_train=n_train, n_val=n_val, image_size=size, seed=0)
    report = prepare_dataset(
        root, pseudo=kinds, classes=list(HARD_CLASSES), crf=CRFConfig(), workers=2
    )
    return {k: (s.miou.get("train", float("nan")), s.coverage) for k, s in report.sources.items()
            if k in kinds}  # fmt: skip


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


def run_all(workdir: Path, names: list[str], starts: list[str], seeds: range, jobs: int,
            extra: list[str]) -> tuple[list[dict], dict[str, float]]:  # fmt: skip
    """Every (start, seed, setting) run; a seed's round k starts as soon as its teacher is done."""
    from concurrent.futures import FIRST_COMPLETED, wait

    chains = sorted({(round_of(n), loss_of(n)) for n in names if round_of(n) > 0})
    results: list[dict] = []
    label_miou: dict[str, tuple[float, float | None]] = {}
    first = [n for n in names if round_of(n) == 0]
    teachers = {teacher_of(k, loss) for k, loss in chains}
    first.sort(key=lambda n: n not in teachers)  # their rounds can start early
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        pending = {pool.submit(run_hard, str(workdir), st, n, s, extra): ("run", st, n, s)
                   for s in seeds for n in first for st in starts}  # fmt: skip
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                kind, st, what, seed = pending.pop(future)
                if kind == "run":
                    r = future.result()
                    results.append(r)
                    print(f"  {st:<10} {what:<15} seed {seed}  val mIoU {100 * r['miou']:.1f}"
                          f"  (+CRF {100 * r['miou_crf']:.1f})  {r['time_s']:.0f} s", flush=True)  # fmt: skip
                    for k, loss in chains:
                        if teacher_of(k, loss) == what:
                            job = pool.submit(relabel_round, str(workdir), st, k, loss, seed, extra)
                            pending[job] = ("relabel", st, (k, loss), seed)
                else:
                    source, miou = future.result()
                    label_miou[source] = miou
                    for n in (n for n in names if (round_of(n), loss_of(n)) == what):
                        pending[pool.submit(run_hard, str(workdir), st, n, seed, extra)] = (
                            "run",
                            st,
                            n,
                            seed,
                        )
    return results, label_miou


def label_score(name: str, runs: list[dict], pseudo: dict, label_miou: dict) -> str:
    """Pseudo-label mIoU of a setting's source (mean over seeds for refine rounds) and coverage."""
    if name == "full":
        return "-"
    scores = [label_miou[r["source"]] for r in runs if r["source"] in label_miou]
    if scores:  # refine rounds: the mean over seeds
        miou = statistics.mean(m for m, _ in scores)
        covered = [c for _, c in scores if c is not None]
        coverage = statistics.mean(covered) if covered else None
    else:
        miou, coverage = pseudo.get(runs[0]["source"], (float("nan"), None))
    return f"{100 * miou:.1f}" + (
        f" ({100 * coverage:.0f}% labelled)" if coverage and coverage < 1 else ""
    )


def summarise_hard(results: list[dict], pseudo: dict, label_miou: dict, names: list[str],
                   start: str) -> str:  # fmt: skip
    """Markdown table of one start: mean, spread, share of full and difference to `REFERENCE`."""
    by = {n: [r for r in results if r["start"] == start and r["name"] == n] for n in names}
    by = {n: sorted(runs, key=lambda r: r["seed"]) for n, runs in by.items() if runs}
    mean = {n: statistics.mean(r["miou"] for r in runs) for n, runs in by.items()}
    spread = {
        n: max(r["miou"] for r in runs) - min(r["miou"] for r in runs) for n, runs in by.items()
    }
    full = mean.get("full", float("nan"))
    lines = [f"start: {start}", "",
             "| setting | pseudo-label mIoU (train) | val mIoU mean | per seed | % of full | "
             f"vs {REFERENCE} | + test-time CRF (mean) |", "|---|---:|---:|---|---:|---:|---:|"]  # fmt: skip
    for n, runs in by.items():
        diff = "-"
        if REFERENCE in mean and n != REFERENCE:
            delta = mean[n] - mean[REFERENCE]
            beyond = abs(delta) > max(spread[n], spread[REFERENCE])
            diff = f"{100 * delta:+.1f}" + (" **beyond spread**" if beyond else "")
        seeds = " / ".join(f"{100 * r['miou']:.1f}" for r in runs)
        crf = statistics.mean(r["miou_crf"] for r in runs)
        lines.append(f"| {n} | {label_score(n, runs, pseudo, label_miou)} | {100 * mean[n]:.1f} | {seeds} | "
                     f"{100 * mean[n] / full:.0f}% | {diff} | {100 * crf:.1f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("runs/accuracy-hard"))
    parser.add_argument("--grid", choices=["core", "full"], default="core")
    parser.add_argument(
        "--only", nargs="+", help="run only these settings (and the runs they need)"
    )
    parser.add_argument(
        "--starts", nargs="+", default=["scratch", "pretrained"], choices=["scratch", "pretrained"]
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=1000, help="optim.iters of every run")
    parser.add_argument("--crop", type=int, default=80, help="data.crop_size of every run")
    parser.add_argument("--size", type=int, default=112, help="image width (height 6/7 of it)")
    parser.add_argument("--n-train", type=int, default=160)
    parser.add_argument("--n-val", type=int, default=100)
    parser.add_argument("--pretrain-iters", type=int, default=600)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], help="extra config override"
    )
    parser.add_argument("--json", type=Path, help="write all results here")
    args = parser.parse_args(argv)

    unknown = set(args.only or []) - set(all_settings())
    if unknown:
        parser.error(f"unknown settings {sorted(unknown)}; choose from {list(all_settings())}")
    grid = CORE if args.grid == "core" else [n for n in all_settings() if n not in EXPLORE]
    names = with_teachers(args.only or grid)
    started = time.perf_counter()
    size = (args.size, round(args.size * 6 / 7))
    pseudo = prepare_hard(args.workdir, args.n_train, args.n_val, size)
    extra = [f"optim.iters={args.iters}", f"data.crop_size={args.crop}", *args.sets]
    if "pretrained" in args.starts:
        pretrain(args.workdir, args.pretrain_iters)
    results, label_miou = run_all(
        args.workdir, names, args.starts, range(args.seeds), args.jobs, extra
    )
    print(f"\n{time.strftime('%Y-%m-%d')}, hard benchmark ({'chosen settings' if args.only else args.grid + ' grid'}), {len(results)} runs, "
          f"{time.perf_counter() - started:.0f} s, {args.jobs} parallel runs of one thread; images "
          f"{size[0]}x{size[1]}, {args.n_train} train / {args.n_val} val; overrides: {extra}\n")  # fmt: skip
    print("pseudo-label mIoU vs ground truth (train, on labelled pixels): "
          + ", ".join(f"{k} {100 * m:.1f}" + (f" (coverage {100 * c:.0f}%)" if c and c < 1 else "")
                      for k, (m, c) in pseudo.items()) + "\n")  # fmt: skip
    print(
        "'beyond spread': the difference of means exceeds both settings' min..max range over seeds.\n"
    )
    for st in args.starts:
        print(summarise_hard(results, pseudo, label_miou, names, st) + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "pseudo_miou": pseudo,
            "refine_label_miou": label_miou,
            "results": results,
            "overrides": extra,
        }
        args.json.write_text(json.dumps(doc, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
