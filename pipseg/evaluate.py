"""Every evaluation loop of pipseg (docs/METHOD.md section 4 metrics), counted by `pipseg.metrics`.

- `evaluate_model`: a model on labelled images with the test recipe (``eval`` and training's
  validation), sharded across torch.distributed ranks.
- `evaluate_checkpoint`: a checkpoint on a config's val split.
- `evaluate_folders` / `confusion_from_folders`: folders of predicted label maps against ground
  truth. Worker processes (`pipseg.parallel.run_tasks`) read chunks of pairs and return their
  confusion counts, so files are decoded in parallel and only ``C x C`` integers travel back.
  (Threads do not help: decoding a small palette PNG is dominated by Python work under the GIL.)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipseg.config import Config
from pipseg.crf import DenseCRF
from pipseg.data.dataset import SegDataset
from pipseg.data.labels import IGNORE_INDEX, read_label
from pipseg.errors import PipsegError
from pipseg.inference import (
    Image,
    LargeImages,
    Prediction,
    model_device,
    padded_size,
    predict_image,
    predict_probs_batch,
    to_chw_tensor,
    to_hwc_uint8,
    unwrap_model,
)
from pipseg.metrics import ConfusionMatrix, confusion_counts, scores_from_matrix
from pipseg.models import model_from_checkpoint
from pipseg.models.convention import mean_rgb255
from pipseg.models.weights import generic_class_names
from pipseg.parallel import default_workers, run_tasks

CHUNK = 32  # pairs per task: amortises inter-process traffic, keeps progress updates flowing

Sample = tuple[Image, Any, str]  # image, label [H, W] (255 ignored), id
CRF = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (image HWC uint8, probs CHW float32) -> labels
OnImage = Callable[[str, np.ndarray, np.ndarray, np.ndarray], None]  # (id, image, target, label)


# ---------------------------------------------------------------------------------------------
# A model on labelled images


def evaluate_model(
    model: nn.Module,
    samples: Iterable[Any],
    *,
    num_classes: int,
    pad_size: int = 513,
    device: torch.device | str | None = None,
    crf: CRF | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    batch_size: int = 1,
    tta: bool = False,
    amp_dtype: torch.dtype | None = None,
    shard: bool = True,
    large: LargeImages | None = None,
    crf_canvas: str = "image",
    on_image: OnImage | None = None,
) -> dict[str, Any]:
    """Score a model on labelled images with the test recipe; returns `ConfusionMatrix.compute()`
    and the matrix itself under ``confusion`` (rows = ground truth, a list of lists).

    ``samples``: ``(image, label, id)`` tuples or `SegDataset(train=False)` dicts (``image`` uint8
    RGB numpy ``[H, W, 3]`` or tensor ``[3, H, W]``, ``label`` ``[H, W]`` with 255 ignored).
    ``crf(image_hwc_uint8, probs_chw_float32) -> labels`` (e.g. `pipseg.crf.DenseCRF`) adds a
    ``"crf"`` sub-dict with the same figures after CRF; the top level is always without CRF.
    ``crf_canvas="padded"`` runs it on the padded canvas, then crops (`pipseg.crf.refine_on_canvas`).
    ``large`` (`LargeImages`) predicts each image on its own, downscaled and / or tiled.
    ``on_image(id, image, target, label)`` hears each image with its final label map (after CRF
    when ``crf``), numpy on the CPU. ``progress(done, total)`` is called after each image (total
    is None for plain iterables). Consecutive images with the same padded size run as one batch
    of up to ``batch_size``. Under torch.distributed each rank scores every world-size-th sample
    (pass ``shard=False`` when ``samples`` is already split per rank, e.g. a loader with a
    DistributedSampler) and the matrices are summed, so every rank returns the full result.
    Batches from a loader with `collate_list` (lists of dicts) are accepted too. The model's
    train/eval mode is restored.
    """
    net = unwrap_model(model)
    device = torch.device(device) if device is not None else model_device(net)
    rank, world = _dist_rank_world()
    shard_rank, shards = (rank, world) if shard else (0, 1)
    total = len(samples) if hasattr(samples, "__len__") else None  # type: ignore[arg-type]
    tally = _Tally(num_classes, device, crf, progress,
                   len(range(shard_rank, total, shards)) if total is not None else None, on_image)  # fmt: skip
    canvas = crf is not None and crf_canvas == "padded"
    triples = _triples(_shard(samples, shard_rank, shards), tally)
    if large is not None and large.active:
        for sample in triples:
            tally.add(sample, predict_image(net, to_hwc_uint8(sample[0]), pad_size=pad_size, device=device, tta=tta,
                                            amp_dtype=amp_dtype, canvas=canvas, need_probs=crf is not None,
                                            **large.kwargs()))  # fmt: skip
    else:
        predict = partial(predict_probs_batch, net, pad_size=pad_size, device=device, tta=tta,
                          amp_dtype=amp_dtype, crop=not canvas)  # fmt: skip
        for batch in _same_size_batches(triples, pad_size, batch_size):
            for sample, prob in zip(batch, predict([image for image, _, _ in batch]), strict=True):
                tally.add(sample, _prediction(sample[0], prob, canvas, need_image=crf is not None or on_image is not None))
    return tally.result(distributed=world > 1)


def _prediction(image: Image, prob: torch.Tensor, canvas: bool, need_image: bool) -> Prediction:
    """A batch member as a `Prediction` (the canvas kept when ``canvas``)."""
    h, w = to_chw_tensor(image).shape[-2:]
    hwc = to_hwc_uint8(image) if need_image else np.empty((0, 0, 3), np.uint8)
    if canvas:
        return Prediction(prob[:, :h, :w], hwc, (h, w), prob)
    return Prediction(prob, hwc, (h, w))


class _Tally:
    """The confusion matrices of one `evaluate_model` call (plain and after CRF) and its progress."""

    def __init__(
        self,
        num_classes: int,
        device: torch.device,
        crf: CRF | None,
        progress: Callable[[int, int | None], None] | None,
        total: int | None,
        on_image: OnImage | None = None,
    ) -> None:
        self.plain = ConfusionMatrix(num_classes)
        self.refined = ConfusionMatrix(num_classes) if crf is not None else None
        for cm in self.matrices():  # on the device even for an empty shard: NCCL reduces CUDA tensors only
            cm.matrix = cm.matrix.to(device)
        self.device, self.crf, self.progress, self.on_image = device, crf, progress, on_image
        self.total: int | None = total
        self.done = 0

    def matrices(self) -> list[ConfusionMatrix]:
        return [self.plain] + ([self.refined] if self.refined is not None else [])

    def add(self, sample: Sample, pred: Prediction) -> None:
        """Count one image's prediction (and its CRF refinement) against its label."""
        image, label, sample_id = sample
        target = _label_tensor(label, self.device)
        if tuple(target.shape) != tuple(pred.size):
            raise PipsegError(
                f"{sample_id}: label size {tuple(target.shape)} != image size "
                f"{tuple(pred.size)}; labels must match their images"
            )
        if pred.probs is not None and tuple(pred.probs.shape[-2:]) == tuple(pred.size):
            plain = pred.probs.argmax(0)  # on the device: no round trip
        else:
            plain = torch.from_numpy(pred.label()).to(self.device)
        self.plain.update(plain, target)
        final = plain
        if self.refined is not None:
            final = torch.from_numpy(pred.refined(self.crf)).to(self.device)  # type: ignore[arg-type]
            self.refined.update(final, target)
        if self.on_image is not None:
            self.on_image(sample_id, to_hwc_uint8(image), target.cpu().numpy().astype(np.uint8),
                          final.to(torch.uint8).cpu().numpy())  # fmt: skip
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)

    def result(self, distributed: bool) -> dict[str, Any]:
        """The scores, summed over all ranks when ``distributed``."""
        if distributed:
            for cm in self.matrices():
                cm.reduce_from_all_processes()
        result = dict(self.plain.compute(), confusion=self.plain.matrix.cpu().tolist())
        if self.refined is not None:
            result["crf"] = dict(self.refined.compute(), confusion=self.refined.matrix.cpu().tolist())
        return result


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _shard(samples: Iterable[Any] | Sequence[Any], rank: int, world: int) -> Iterator[Any]:
    """This rank's samples: every ``world``-th, starting at ``rank`` (indexable: no wasted loads)."""
    if world == 1:
        yield from samples
    elif hasattr(samples, "__len__") and hasattr(samples, "__getitem__"):
        for i in range(rank, len(samples), world):  # type: ignore[arg-type]
            yield samples[i]  # type: ignore[index]
    else:
        for i, sample in enumerate(samples):
            if i % world == rank:
                yield sample


def _triples(items: Iterable[Any], tally: _Tally) -> Iterator[Sample]:
    """``(image, label, id)`` of every sample, unpacking `collate_list` batches (lists of dicts)."""
    for item in items:
        batch = isinstance(item, list) and item and isinstance(item[0], dict)
        if batch:
            tally.total = None  # len(samples) counted batches, not images
        for sample in item if batch else [item]:
            if isinstance(sample, dict):
                yield sample["image"], sample["label"], str(sample["id"])
            else:
                image, label, sample_id = sample
                yield image, label, str(sample_id)


def _same_size_batches(samples: Iterable[Sample], pad_size: int, batch_size: int) -> Iterator[list[Sample]]:
    """Runs of consecutive samples sharing one padded size, at most ``batch_size`` long."""
    pending: list[Sample] = []
    key = None
    for sample in samples:
        sample_key = padded_size(*to_chw_tensor(sample[0]).shape[-2:], pad_size)
        if pending and (sample_key != key or len(pending) >= batch_size):
            yield pending
            pending = []
        pending.append(sample)
        key = sample_key
    if pending:
        yield pending


def _label_tensor(label: Any, device: torch.device) -> torch.Tensor:
    if isinstance(label, np.ndarray):
        label = torch.from_numpy(np.ascontiguousarray(label))
    return label.to(device=device, dtype=torch.long, non_blocking=True)


def evaluate_checkpoint(
    cfg: Config,
    checkpoint: str | os.PathLike[str],
    *,
    crf: bool = False,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int | None], None] | None = None,
    source: str = "<config>",
    large: LargeImages | None = None,
    names: Sequence[str] | None = None,
    show: Callable[[list[str]], OnImage] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Predict and score ``cfg.data.val_split`` against ground truth with a checkpoint.

    Returns the scores (`ConfusionMatrix.compute()` + ``confusion`` + ``num_images``; with ``crf``
    a ``"crf"`` sub-dict holds the same figures after DenseCRF, run where ``cfg.eval.crf_canvas``
    says) and the class names: ``names`` (``--classes``), else the checkpoint's, else the prepared
    dataset's. ``show(names)`` gives the ``on_image`` callback of `evaluate_model` once the names
    are known (e.g. `pipseg.report.ShowWriter.bind`).
    """
    model, meta = model_from_checkpoint(checkpoint, device)
    dataset = SegDataset(cfg.data, cfg.data.val_split, "gt", train=False,
                         pad_rgb=mean_rgb255(model.input_convention))  # fmt: skip
    if meta["num_classes"] != len(dataset.classes):
        raise PipsegError(
            f"{checkpoint}: the model has {meta['num_classes']} classes but data.classes in {source} "
            f"lists {len(dataset.classes)}; use the config the checkpoint was trained with"
        )
    names = _checkpoint_names(names, meta, dataset.classes)
    results = evaluate_model(
        model, dataset, num_classes=meta["num_classes"], pad_size=cfg.eval.pad_size, device=device,
        crf=DenseCRF.from_config(cfg.crf) if crf else None, progress=progress,
        batch_size=cfg.eval.batch_size, large=large, crf_canvas=cfg.eval.crf_canvas,
        on_image=show(names) if show is not None else None,
    )  # fmt: skip
    results["num_images"] = len(dataset)
    return results, names


def _checkpoint_names(names: Sequence[str] | None, meta: dict[str, Any], prepared: Sequence[str]) -> list[str]:
    """``names`` when given (their count checked), else the checkpoint's recorded names, else ``prepared``."""
    if names is not None:
        if len(names) != meta["num_classes"]:
            raise PipsegError(f"--classes: lists {len(names)} names but the checkpoint has {meta['num_classes']} classes")
        return list(names)
    recorded = meta["classes"] != generic_class_names(meta["num_classes"])
    return list(meta["classes"] if recorded else prepared)


# ---------------------------------------------------------------------------------------------
# Folders of label maps


def gt_ids(gt_dir: Path) -> list[str]:
    """Every ``<id>.png`` under ``gt_dir`` (subfolders become part of the id)."""
    return sorted(p.relative_to(gt_dir).with_suffix("").as_posix() for p in gt_dir.rglob("*.png"))


def pair_counts(
    pred_path: Path, gt_path: Path, sample_id: str, num_classes: int, crop_padded: bool = False
) -> np.ndarray:
    """Confusion counts ``[C, C]`` int64 (row = ground truth) of one prediction / GT pair."""
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
    bad_gt = (gt != IGNORE_INDEX) & (gt >= num_classes)
    if bad_gt.any():
        raise PipsegError(f"{sample_id}: ground truth holds class {int(gt[bad_gt].max())}, outside 0..{num_classes - 1} (and 255)")
    if int(pred.max(initial=0)) >= num_classes:
        raise PipsegError(f"{sample_id}: prediction holds class {int(pred.max())}, outside 0..{num_classes - 1}")
    return confusion_counts(pred, gt, num_classes, IGNORE_INDEX)


def confusion_from_folders(
    pred_dir: str | os.PathLike[str],
    gt_dir: str | os.PathLike[str],
    *,
    ids: Sequence[str] | None = None,
    num_classes: int = 21,
    crop_padded: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Confusion matrix ``[C, C]`` int64 (rows = ground truth) of ``pred_dir/<id>.png`` vs ``gt_dir/<id>.png``.

    ``ids`` defaults to every PNG in ``gt_dir``. Files are read by ``workers`` processes (default:
    all cores); when a pool cannot start the rest is read here and ``on_warning`` (default:
    `warnings.warn`) hears one line. Raises `PipsegError` naming the id with a missing prediction,
    a size mismatch or an out-of-range class.
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
    tasks = [(pred_dir, gt_dir, chunk, num_classes, crop_padded) for chunk in chunks]
    total = np.zeros((num_classes, num_classes), dtype=np.int64)
    done = 0
    for index, counts in run_tasks(_chunk_counts, tasks, workers=workers, on_warning=on_warning):
        total += counts
        done += len(chunks[index])
        if progress is not None:
            progress(done, len(ids))
    return total


def _chunk_counts(task: tuple[Path, Path, list[str], int, bool]) -> np.ndarray:
    pred_dir, gt_dir, ids, num_classes, crop_padded = task
    total = np.zeros((num_classes, num_classes), dtype=np.int64)
    for sample_id in ids:
        total += pair_counts(pred_dir / f"{sample_id}.png", gt_dir / f"{sample_id}.png", sample_id, num_classes, crop_padded)
    return total


def evaluate_folders(
    pred_dir: str | os.PathLike[str],
    gt_dir: str | os.PathLike[str],
    *,
    ids: Sequence[str] | None = None,
    num_classes: int = 21,
    crop_padded: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Scores of a prediction folder against ground truth: `ConfusionMatrix.compute()` + ``num_images``."""
    ids = list(ids) if ids is not None else None
    matrix = confusion_from_folders(
        pred_dir, gt_dir, ids=ids, num_classes=num_classes, crop_padded=crop_padded,
        workers=workers, progress=progress, on_warning=on_warning,
    )  # fmt: skip
    result = dict(scores_from_matrix(matrix), confusion=matrix.tolist())
    result["num_images"] = len(ids) if ids is not None else len(gt_ids(Path(gt_dir)))
    return result
