"""Scoring folders of predicted label maps against ground truth (PIP.md section 4 metrics).

Worker processes read chunks of prediction / ground-truth pairs and return their confusion
counts, so files are decoded in parallel and only ``C x C`` integers travel back. (Threads do not
help here: decoding a small palette PNG is dominated by Python-level work under the GIL.)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipseg.crf import default_workers, pool_context
from pipseg.data.labels import IGNORE_INDEX, read_label
from pipseg.errors import PipsegError

if TYPE_CHECKING:
    import torch

    from pipseg.config import Config

CHUNK = 32  # pairs per task: amortises inter-process traffic, keeps progress updates flowing


def read_id_list(path: str | os.PathLike[str]) -> list[str]:
    """Ids from a text file, one per line (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise PipsegError(f"{path}: cannot read the id list ({e.strerror or e})") from None
    ids = [line.split()[0] for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not ids:
        raise PipsegError(f"{path}: the id list is empty")
    return ids


def gt_ids(gt_dir: Path) -> list[str]:
    """Every ``<id>.png`` under ``gt_dir`` (subfolders become part of the id)."""
    return sorted(p.relative_to(gt_dir).with_suffix("").as_posix() for p in gt_dir.rglob("*.png"))


def pair_counts(
    pred_path: Path, gt_path: Path, sample_id: str, num_classes: int, crop_padded: bool = False
) -> np.ndarray:
    """Confusion counts ``[C * C]`` int64 (row = ground truth) of one prediction / GT pair."""
    if not pred_path.is_file():
        raise PipsegError(f"{sample_id}: no prediction {pred_path}; predict every listed id first")
    gt = read_label(gt_path)
    pred = read_label(pred_path)
    if pred.shape != gt.shape:
        larger = pred.shape[0] >= gt.shape[0] and pred.shape[1] >= gt.shape[1]
        if not (crop_padded and larger):
            hint = " (pass --crop-padded if predictions are padded bottom/right)" if larger else ""
            raise PipsegError(
                f"{sample_id}: prediction is {pred.shape[1]}x{pred.shape[0]} but the ground truth is "
                f"{gt.shape[1]}x{gt.shape[0]}{hint}"
            )
        pred = pred[: gt.shape[0], : gt.shape[1]]
    valid = gt != IGNORE_INDEX
    bad_gt = valid & (gt >= num_classes)
    if bad_gt.any():
        raise PipsegError(f"{sample_id}: ground truth holds class {int(gt[bad_gt].max())}, outside 0..{num_classes - 1} (and 255)")
    if int(pred.max(initial=0)) >= num_classes:
        raise PipsegError(f"{sample_id}: prediction holds class {int(pred.max())}, outside 0..{num_classes - 1}")
    index = gt[valid].astype(np.int64) * num_classes + pred[valid]
    return np.bincount(index, minlength=num_classes * num_classes)


def confusion_from_folders(
    pred_dir: str | os.PathLike[str],
    gt_dir: str | os.PathLike[str],
    *,
    ids: Sequence[str] | None = None,
    num_classes: int = 21,
    crop_padded: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Confusion matrix ``[C, C]`` int64 (rows = ground truth) of ``pred_dir/<id>.png`` vs ``gt_dir/<id>.png``.

    ``ids`` defaults to every PNG in ``gt_dir``. Files are read by ``workers`` processes (default:
    all cores; one process when a pool cannot start). Raises `PipsegError` naming the id with a
    missing prediction, a size mismatch or an out-of-range class.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for name, folder in (("prediction", pred_dir), ("ground-truth", gt_dir)):
        if not folder.is_dir():
            raise PipsegError(f"{folder}: {name} folder not found")
    ids = list(ids) if ids is not None else gt_ids(gt_dir)
    if not ids:
        raise PipsegError(f"{gt_dir}: no ground-truth PNGs to score")
    missing_gt = [i for i in ids if not (gt_dir / f"{i}.png").is_file()]
    if missing_gt:
        raise PipsegError(f"{missing_gt[0]}: no ground truth {gt_dir / (missing_gt[0] + '.png')}")

    workers = max(1, workers or default_workers())
    size = max(1, min(CHUNK, -(-len(ids) // (4 * workers))))  # >= 4 tasks per worker to balance
    chunks = [ids[i : i + size] for i in range(0, len(ids), size)]
    args = [(pred_dir, gt_dir, chunk, num_classes, crop_padded) for chunk in chunks]
    total = np.zeros(num_classes * num_classes, dtype=np.int64)
    done = 0

    def add(counts: np.ndarray, n: int) -> None:
        nonlocal done, total
        total += counts
        done += n
        if progress is not None:
            progress(done, len(ids))

    pending = list(range(len(chunks)))
    if workers > 1 and len(chunks) > 1:
        try:
            with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=pool_context()) as pool:
                for index, counts in enumerate(pool.map(_chunk_counts, args)):
                    pending.remove(index)
                    add(counts, len(chunks[index]))
        except (OSError, PermissionError, BrokenProcessPool):
            pass  # no process pool here (sandbox): the loop below reads the rest in this process
    for index in pending:
        add(_chunk_counts(args[index]), len(chunks[index]))
    return total.reshape(num_classes, num_classes)


def _chunk_counts(args: tuple[Path, Path, list[str], int, bool]) -> np.ndarray:
    pred_dir, gt_dir, ids, num_classes, crop_padded = args
    total = np.zeros(num_classes * num_classes, dtype=np.int64)
    for sample_id in ids:
        total += pair_counts(pred_dir / f"{sample_id}.png", gt_dir / f"{sample_id}.png", sample_id, num_classes, crop_padded)
    return total


def scores_from_matrix(matrix: np.ndarray) -> dict[str, Any]:
    """The figures of `pipseg.metrics.ConfusionMatrix.compute` for a ``[C, C]`` count matrix."""
    import torch

    from pipseg.metrics import ConfusionMatrix

    cm = ConfusionMatrix(matrix.shape[0])
    cm.matrix = torch.as_tensor(matrix, dtype=torch.int64)
    return dict(cm.compute())


def evaluate_folders(
    pred_dir: str | os.PathLike[str],
    gt_dir: str | os.PathLike[str],
    *,
    ids: Sequence[str] | None = None,
    num_classes: int = 21,
    crop_padded: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Scores of a prediction folder against ground truth: `ConfusionMatrix.compute()` + ``num_images``."""
    ids = list(ids) if ids is not None else None
    matrix = confusion_from_folders(
        pred_dir, gt_dir, ids=ids, num_classes=num_classes, crop_padded=crop_padded,
        workers=workers, progress=progress,
    )  # fmt: skip
    result = scores_from_matrix(matrix)
    result["num_images"] = len(ids) if ids is not None else len(gt_ids(Path(gt_dir)))
    return result


def evaluate_checkpoint(
    cfg: Config,
    checkpoint: str | os.PathLike[str],
    *,
    crf: bool = False,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int | None], None] | None = None,
    source: str = "<config>",
) -> tuple[dict[str, Any], list[str]]:
    """Predict and score ``cfg.data.val_split`` against ground truth with a checkpoint.

    Returns the scores (`ConfusionMatrix.compute()` + ``num_images``; with ``crf`` a ``"crf"``
    sub-dict holds the same figures after DenseCRF) and the class names.
    """
    from pipseg.crf import DenseCRF
    from pipseg.data.dataset import SegDataset
    from pipseg.inference import evaluate_model
    from pipseg.models import model_from_checkpoint
    from pipseg.models.convention import mean_rgb255

    model, meta = model_from_checkpoint(checkpoint, device)
    if meta["num_classes"] != len(cfg.data.classes):
        raise PipsegError(
            f"{checkpoint}: the model has {meta['num_classes']} classes but data.classes in {source} "
            f"lists {len(cfg.data.classes)}; use the config the checkpoint was trained with"
        )
    dataset = SegDataset(cfg.data, cfg.data.val_split, "gt", train=False,
                         pad_rgb=mean_rgb255(model.input_convention))  # fmt: skip
    results = evaluate_model(
        model, dataset, num_classes=meta["num_classes"], pad_size=cfg.eval.pad_size, device=device,
        crf=DenseCRF.from_config(cfg.crf) if crf else None, progress=progress,
        batch_size=cfg.eval.batch_size,
    )  # fmt: skip
    results["num_images"] = len(dataset)
    return results, list(cfg.data.classes)
