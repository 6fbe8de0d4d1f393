"""Self-training rounds (`pipseg refine`): train, relabel the train images inside their boxes with
the model and DenseCRF, register the labels as a new source, train again (SDI's rounds, from boxes).

Round 0 trains on ``data.label_source`` into ``<runtime.out_dir>/round-0``. Round ``k >= 1``
predicts the train split with round ``k - 1``'s final model, keeps each class only inside boxes
of that class (background everywhere), refines with `pipseg.crf.DenseCRF` (``crf`` settings),
applies the boxes again, and falls back to the previous labels inside a box the model all but
missed (less than `pipseg.data.pseudo.MIN_KEEP` of it). With ``agree``, pixels inside a box
where the new label differs from the previous one become ignore (255). The maps go to
``<prepared>/pseudo/refine-<k>`` and the manifest gains the label source ``refine-<k>``
(scored against ground truth where masks exist); then round ``k`` trains on them.

Resumable: ``<runtime.out_dir>/refine.json`` records each finished round (a rerun skips it); a
round stopped while training resumes from its ``last.pt``; finished label maps are reused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipseg.config import Config, CRFConfig
from pipseg.crf import DenseCRF
from pipseg.data.images import read_image
from pipseg.data.labels import IGNORE_INDEX, read_label, write_label
from pipseg.data.manifest import (
    MANIFEST_NAME,
    folder_bases,
    load_manifest,
    read_prepared_images,
    read_split,
    source_dirs,
)
from pipseg.data.pseudo import MIN_KEEP
from pipseg.device import resolve_device
from pipseg.engine import train
from pipseg.engine.checkpoint import LAST
from pipseg.errors import PipsegError
from pipseg.inference import predict_probs
from pipseg.io import atomic_write_json, file_digest
from pipseg.metrics import confusion_counts, scores_from_matrix
from pipseg.models import model_from_checkpoint
from pipseg.parallel import run_tasks

SOURCE_PREFIX = "refine-"
STATE_NAME = "refine.json"
_CHUNK = 32  # images predicted before their CRFs run (bounds the probabilities held in memory)


@dataclass(frozen=True)
class RoundResult:
    """One round: its label source, that source's mIoU against ground truth (None without
    masks), the final val mIoU, the wall time (labels and training) and whether it was reused."""

    round: int
    label_source: str
    pseudo_miou: float | None
    val_miou: float | None
    wall_time_s: float
    out_dir: str
    reused: bool = False
    coverage: float | None = None
    agree: bool = False


def source_name(k: int) -> str:
    """The label source round ``k`` trains on (``k >= 1``)."""
    return f"{SOURCE_PREFIX}{k}"


def refine(
    cfg: Config,
    rounds: int,
    *,
    force: bool = False,
    agree: bool = False,
    workers: int | None = None,
    on_round: Callable[[RoundResult], None] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[RoundResult]:
    """Run rounds ``0..rounds`` (see the module docstring); returns one `RoundResult` per round.

    ``force`` redoes finished rounds; ``agree`` keeps only labels agreeing with the previous
    round's inside boxes; ``workers`` processes run the CRFs; ``on_round`` is called after each
    round, ``progress`` gets the training events of `pipseg.engine.train`.
    """
    if rounds < 0:
        raise PipsegError(f"--rounds: {rounds} is negative; pass 0 (a plain run) or more")
    base = Path(cfg.runtime.out_dir).expanduser()
    state = {} if force else _read_state(base)
    results: list[RoundResult] = []
    for k in range(rounds + 1):
        done = state.get(str(k))
        if done is not None and k > 0 and done.get("agree", False) != agree:
            raise PipsegError(
                f"{base / STATE_NAME}: round {k} was made {'with' if not agree else 'without'} "
                "--agree; pass the same option, or --force to redo the rounds"
            )
        if done is not None:
            result = RoundResult(**{**done, "reused": True})
        else:
            result = _run_round(cfg, k, base, force, agree, workers, progress)
            state[str(k)] = asdict(result)
            atomic_write_json(base / STATE_NAME, state)
        results.append(result)
        if on_round is not None:
            on_round(result)
    return results


def _run_round(
    cfg: Config, k: int, base: Path, force: bool, agree: bool, workers: int | None,
    progress: Callable[[dict[str, Any]], None] | None,
) -> RoundResult:  # fmt: skip
    started = time.perf_counter()
    source = cfg.data.label_source if k == 0 else source_name(k)
    if k > 0:
        previous = cfg.data.label_source if k == 1 else source_name(k - 1)
        relabel(cfg, base / f"round-{k - 1}" / LAST, previous, source, workers=workers, agree=agree)
    out_dir = base / f"round-{k}"
    run_cfg = round_config(cfg, source, out_dir)
    resume = not force and (out_dir / LAST).is_file()
    result = train(run_cfg, resume=resume, force=force and not resume, progress=progress)
    if not result.finished:
        raise PipsegError(
            f"{out_dir}: round {k} stopped before optim.iters; rerun `pipseg refine` to resume it"
        )
    val = float(result.metrics["miou"]) if result.metrics else None
    miou, coverage = source_quality(cfg, source)
    return RoundResult(
        k, source, miou, val, time.perf_counter() - started, str(out_dir),
        coverage=coverage, agree=agree and k > 0,
    )  # fmt: skip


def round_config(cfg: Config, source: str, out_dir: Path) -> Config:
    """``cfg`` training on label source ``source`` into ``out_dir``.

    ``model_copy`` skips validation on purpose: ``data.label_source`` lists the sources
    `pipseg prepare` makes, and ``refine-<k>`` sources are registered by this module.
    """
    data = cfg.data.model_copy(update={"label_source": source})
    runtime = cfg.runtime.model_copy(update={"out_dir": out_dir})
    return cfg.model_copy(update={"data": data, "runtime": runtime})


def _read_state(base: Path) -> dict[str, Any]:
    import json

    path = base / STATE_NAME
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PipsegError(
            f"{path}: unreadable ({e}); delete it or pass --force to redo every round"
        ) from None
    return state if isinstance(state, dict) else {}


def source_quality(cfg: Config, source: str) -> tuple[float | None, float | None]:
    """The manifest's mIoU of ``source`` against ground truth and its share of labelled pixels
    (None when not recorded)."""
    entry = load_manifest(cfg.data.prepared_dir).get("sources", {}).get(source, {})
    scores = entry.get("miou") or {}
    return (float(next(iter(scores.values()))) if scores else None), entry.get("coverage")


# ------------------------------------------------------------------------------ relabelling


@dataclass(frozen=True)
class RelabelTask:
    """One train image to relabel: model probabilities ``[C, H, W]`` and where things are."""

    image: np.ndarray
    probs: np.ndarray
    boxes: np.ndarray
    previous: Path | None
    gt: Path | None
    out: Path
    crf: CRFConfig
    agree: bool = False


def relabel(
    cfg: Config,
    checkpoint: Path,
    previous: str,
    source: str,
    *,
    workers: int | None = None,
    agree: bool = False,
) -> Path:
    """Write label source ``source`` for ``data.train_split`` from ``checkpoint``'s predictions
    (constrained to the boxes, refined by DenseCRF) and register it in the manifest; labels of
    ``previous`` fill the boxes the model missed, and with ``agree`` only pixels agreeing with
    them keep a label inside boxes (the rest 255). Reuses a complete earlier result."""
    prepared = cfg.data.prepared_dir
    manifest = load_manifest(prepared)
    bases = folder_bases(manifest, prepared, cfg.data.root)
    ids = read_split(prepared, manifest, cfg.data.train_split)
    folder = prepared / "pseudo" / source
    if not checkpoint.is_file():
        raise PipsegError(
            f"{checkpoint}: the previous round left no checkpoint; pass --force to redo the rounds"
        )
    origin = {
        "checkpoint": str(checkpoint.resolve()),
        "sha256": file_digest(checkpoint),
        "from": previous,
        "agree": agree,
    }
    entry = manifest.get("sources", {}).get(source, {})
    if entry.get("refine") == origin and all((folder / f"{i}.png").is_file() for i in ids):
        return folder  # made by this very model from these labels
    images = read_prepared_images(prepared, manifest, bases)
    prev = _label_index(source_dirs(manifest, previous, bases, where=str(prepared / MANIFEST_NAME)))
    gt = (
        _label_index(source_dirs(manifest, "gt", bases))
        if "gt" in manifest.get("sources", {})
        else {}
    )
    device = resolve_device(cfg.runtime.device, option="runtime.device")
    model, meta = model_from_checkpoint(checkpoint, device)
    c = int(meta["num_classes"])
    matrix = np.zeros((c, c), np.int64)
    labelled = total = 0
    for chunk in _chunks(ids, _CHUNK):
        tasks = [
            _task(model, images[i], prev.get(i), gt.get(i), folder / f"{i}.png", cfg, agree)
            for i in chunk
        ]
        for _, (counts, kept, pixels) in run_tasks(relabel_image, tasks, workers=workers):
            labelled, total = labelled + kept, total + pixels
            if counts is not None:
                matrix += counts
    miou = float(scores_from_matrix(matrix)["miou"]) if matrix.sum() else None
    coverage = labelled / total if total else None
    register_source(prepared, source, ids, cfg.data.train_split, miou, origin, coverage)
    return folder


def _chunks(ids: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def _label_index(dirs: list[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in dirs:
        if d.is_dir():
            for p in sorted(d.glob("*.png")):
                found.setdefault(p.stem, p)
    return found


def _task(
    model: torch.nn.Module,
    image: Any,
    previous: Path | None,
    gt: Path | None,
    out: Path,
    cfg: Config,
    agree: bool,
) -> RelabelTask:
    rgb = read_image(image.path)
    probs = predict_probs(model, rgb, pad_size=cfg.eval.pad_size).float().cpu().numpy()
    return RelabelTask(rgb, probs, image.boxes, previous, gt, out, cfg.crf, agree)


def allowed_classes(boxes: np.ndarray, num_classes: int, height: int, width: int) -> np.ndarray:
    """``bool [C, H, W]``: background everywhere, class ``c`` only inside boxes of class ``c``."""
    allowed = np.zeros((num_classes, height, width), bool)
    allowed[0] = True
    for x0, y0, x1, y1, cls in boxes.tolist():
        allowed[cls, y0 : y1 + 1, x0 : x1 + 1] = True
    return allowed


def relabel_image(task: RelabelTask) -> tuple[np.ndarray | None, int, int]:
    """Constrain, refine, constrain again, fall back per box, keep only agreement if asked;
    write the map. Returns its confusion counts against ground truth on its labelled pixels
    (None without a mask), its labelled pixels and all its pixels."""
    c, h, w = task.probs.shape
    allowed = allowed_classes(task.boxes, c, h, w)
    probs = np.where(allowed, np.maximum(task.probs, 1e-6), 0.0).astype(np.float32)
    probs /= probs.sum(0, keepdims=True)
    refined = DenseCRF.from_config(task.crf).refine(task.image, probs)
    label = np.where(allowed, refined, -1.0).argmax(0).astype(np.uint8)
    previous = read_label(task.previous) if task.previous is not None else None
    for x0, y0, x1, y1, cls in task.boxes.tolist():
        region = label[y0 : y1 + 1, x0 : x1 + 1]
        if (region == cls).sum() < MIN_KEEP * region.size:
            fill = previous[y0 : y1 + 1, x0 : x1 + 1] == cls if previous is not None else True
            region[fill] = cls
    if task.agree and previous is not None:
        label[allowed[1:].any(0) & (label != previous)] = IGNORE_INDEX
    write_label(task.out, label)
    kept = label != IGNORE_INDEX
    counts = (
        confusion_counts(label[kept], read_label(task.gt)[kept], c, IGNORE_INDEX)
        if task.gt is not None
        else None
    )
    return counts, int(kept.sum()), label.size


def register_source(
    prepared: Path,
    source: str,
    ids: list[str],
    split: str,
    miou: float | None,
    origin: dict[str, Any],
    coverage: float | None = None,
) -> None:
    """Add (or replace) ``source`` (``prepared:pseudo/<source>``, labels for ``ids`` of ``split``)
    in the manifest, atomically."""
    manifest = load_manifest(prepared)
    have = set(ids)
    counts, missing = {}, {}
    for name in manifest.get("splits", {}):
        split_ids = read_split(prepared, manifest, name)
        counts[name] = sum(i in have for i in split_ids)
        missing[name] = len(split_ids) - counts[name] if name == split else 0
    manifest.setdefault("sources", {})[source] = {
        "dirs": [{"base": "prepared", "path": f"pseudo/{source}"}], "counts": counts,
        "for_splits": [split], "missing": missing, "miou": {split: miou} if miou is not None else {},
        "coverage": coverage, "refine": origin,
    }  # fmt: skip
    atomic_write_json(prepared / MANIFEST_NAME, manifest)
