"""The training loop of ``pipseg train``: the recipe of PIP.md section 3, one process or torchrun.

Read top to bottom, :func:`train` is: device and ranks, run folder, data, model, DDP, optimiser,
resume, loop. One iteration (:func:`train_step`) is ``optim.accumulate`` micro-batches of
``batch_size / (accumulate * world_size)`` crops each, then one SGD step with the poly lr.

Exact resume: every random draw of the data pipeline is a function of ``(seed, epoch, index)``
(the shuffle of each epoch, and each sample's augmentation through its own seed), and the
checkpoint stores the loader position and every RNG state, so a run stopped and resumed ends
with the same weights as a run that never stopped.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from pipseg.config import Config, dump_config
from pipseg.data.dataset import SegDataset, collate_batch
from pipseg.engine import runlog
from pipseg.engine.checkpoint import (
    BEST,
    LAST,
    read_training_checkpoint,
    rng_state,
    run_progress,
    save_checkpoint,
    set_rng_state,
)
from pipseg.engine.criterion import build_loss
from pipseg.engine.distributed import (
    DistInfo,
    all_gather_objects,
    barrier,
    cleanup_distributed,
    dist_info_from_env,
    init_distributed,
    reduce_mean,
)
from pipseg.errors import PipsegError
from pipseg.evaluate import evaluate_model
from pipseg.io import atomic_write_json, atomic_write_text, file_digest
from pipseg.losses import to_logit_grid
from pipseg.models import (
    CHECKPOINT_FORMAT,
    build_model,
    imagenet_weight_file,
    init_from_imagenet,
    load_weights,
    prepare_images,
)
from pipseg.models.convention import mean_rgb255

ProgressFn = Callable[[dict[str, Any]], None]
AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DOWNLOAD_NAMES = {"vgg16_largefov": "vgg16", "deeplabv2_resnet101": "resnet101"}


@dataclass
class TrainResult:
    """What a call to :func:`train` did (the same on every rank)."""

    out_dir: Path
    iteration: int
    finished: bool
    best_miou: float | None
    metrics: dict[str, Any] | None  # the last validation
    last_checkpoint: Path
    best_checkpoint: Path | None
    summary: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Schedule, device, model


def poly_lr(base_lr: float, iteration: int, max_iter: int, power: float) -> float:
    """``base * (1 - iteration / max_iter) ** power`` (iteration counts from 0)."""
    return base_lr * (1.0 - iteration / max_iter) ** power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every param group's lr to ``lr`` times its ``lr_mult``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """``auto``/``cpu``/``cuda`` as a device; one GPU per process (``cuda:LOCAL_RANK``)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise PipsegError(
            "runtime.device: 'cuda' requested but no CUDA GPU is available; "
            "use --set runtime.device=cpu (or auto)"
        )
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", info.local_rank)


def build_initialised_model(cfg: Config) -> tuple[nn.Module, dict[str, Any]]:
    """The configured model with its initial weights, and a record of where they came from."""
    name = cfg.model.name
    model = build_model(name, len(cfg.data.classes))
    if cfg.model.init == "none":
        return model, {"kind": "none", "file": None, "sha256": None}
    if cfg.model.init == "imagenet":
        file_name = imagenet_weight_file(name)
        if file_name is None:
            raise PipsegError(
                f"model.init: {name} has no ImageNet weights; use --set model.init=none (or a checkpoint path)"
            )
        path = Path(cfg.model.weights_dir).expanduser() / file_name
        if not path.is_file():
            raise PipsegError(
                f"{path}: ImageNet weights for {name} not found; run `pipseg download "
                f"{DOWNLOAD_NAMES.get(name, name)}` (or set model.init to none or a weight file)"
            )
        init_from_imagenet(model, path)
        return model, {"kind": "imagenet", "file": str(path), "sha256": file_digest(path)}
    path = Path(cfg.model.init).expanduser()
    if not path.is_file():
        raise PipsegError(f"model.init: {path}: no such file; use 'imagenet', 'none' or a weight file")
    if path.name == imagenet_weight_file(name):
        init_from_imagenet(model, path)
    else:
        load_weights(model, path)
    return model, {"kind": "file", "file": str(path), "sha256": file_digest(path)}


def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.SGD:
    """SGD with momentum and weight decay; the classifier group has ``classifier_lr_mult``."""
    o = cfg.optim
    groups = [
        {"params": list(model.backbone_parameters()), "lr_mult": 1.0},
        {"params": list(model.classifier_parameters()), "lr_mult": o.classifier_lr_mult},
    ]
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def sync_batchnorm(model: nn.Module, device: torch.device, info: DistInfo) -> nn.Module:
    """SyncBatchNorm for trainable BatchNorm under multi-GPU DDP, so statistics span the global
    batch as in one process. Frozen BN (ResNet-101) stays as is; on CPU (gloo) torch has no
    SyncBatchNorm, so each rank normalises over its own micro-batch."""
    trainable_bn = any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and any(p.requires_grad for p in m.parameters())
        for m in model.modules()
    )
    if info.enabled and device.type == "cuda" and trainable_bn:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


# --------------------------------------------------------------------------------------------
# Data: a resumable, deterministic stream of micro-batches


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of dataset item ``index`` in ``epoch`` (independent of ranks)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SeededSamples(Dataset):
    """Item ``(index, seed)`` is ``dataset[index]`` drawn with torch's RNG seeded by ``seed``.

    The global RNG is forked, so loading in the main process (``workers=0``) leaves the
    training RNG (dropout) untouched, and workers need no seeding of their own.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class EpochSampler(DistributedSampler):
    """DistributedSampler (shuffle seeded by ``seed + epoch``) that can start mid-epoch at
    ``start`` and yields ``(index, sample_seed)`` pairs for :class:`SeededSamples`."""

    def __init__(self, dataset: Dataset, info: DistInfo, seed: int) -> None:
        super().__init__(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)
        self.start = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())[self.start :]
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


class TrainBatches:
    """Micro-batches forever, one sampler pass per epoch; ``(epoch, samples)`` is the position
    (samples drawn in this epoch over all ranks), saved in checkpoints and restored on resume."""

    def __init__(self, loader: DataLoader, sampler: EpochSampler, world_size: int, position: dict[str, int]) -> None:
        self.loader, self.sampler, self.world_size = loader, sampler, world_size
        self.epoch, self.samples = int(position["epoch"]), int(position["samples"])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            self.sampler.set_epoch(self.epoch)
            self.sampler.start = self.samples // self.world_size
            for batch in self.loader:
                self.samples += len(batch["ids"]) * self.world_size
                yield batch
            self.epoch, self.samples = self.epoch + 1, 0

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "samples": self.samples}


def make_train_batches(
    dataset: Dataset, micro_batch: int, cfg: Config, info: DistInfo, device: torch.device, position: dict[str, int]
) -> TrainBatches:
    """The training stream for this rank."""
    sampler = EpochSampler(dataset, info, cfg.runtime.seed)
    if sampler.num_samples < micro_batch:
        raise PipsegError(
            f"data.train_split: {len(dataset)} images cannot fill a micro-batch of {micro_batch} on "  # type: ignore[arg-type]
            f"each of {info.world_size} process(es); lower optim.batch_size"
        )
    loader = DataLoader(
        SeededSamples(dataset),
        batch_size=micro_batch,
        sampler=sampler,
        num_workers=cfg.data.workers,
        collate_fn=collate_batch,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=cfg.data.workers > 0,
        # Own generator: creating a loader iterator must not draw from the global RNG.
        generator=torch.Generator().manual_seed(cfg.runtime.seed + info.rank),
    )
    return TrainBatches(loader, sampler, info.world_size, position)


# --------------------------------------------------------------------------------------------
# One iteration, validation


def sync_grads(model: nn.Module, sync: bool) -> AbstractContextManager:
    """DDP's ``no_sync`` on non-final micro-steps (gradients all-reduce once per iteration)."""
    return model.no_sync() if isinstance(model, DistributedDataParallel) and not sync else nullcontext()


def train_step(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    micro_batches: Sequence[dict[str, Any]],
    device: torch.device,
    amp_dtype: torch.dtype | None,
    memory_format: torch.memory_format,
) -> Tensor:
    """One SGD step over ``micro_batches``; returns ``[loss, box, pixel]`` (a tensor, no sync)."""
    convention = getattr(model, "module", model).input_convention
    parts_sum = torch.zeros(3, device=device)
    steps = len(micro_batches)
    for i, batch in enumerate(micro_batches):
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True).long()
        boxes = batch["boxes"].to(device, non_blocking=True)
        x = prepare_images(images, convention).contiguous(memory_format=memory_format)
        with sync_grads(model, sync=i == steps - 1):
            with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                logits = model(x)
            labels, boxes = to_logit_grid(labels, boxes, logits.shape[-2:])
            parts = criterion.forward_parts(logits.float(), labels, boxes)
            scaler.scale(parts["loss"] / steps).backward()
        parts_sum += torch.stack([parts["loss"], parts["box"], parts["pixel"]]).detach()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return parts_sum / steps


def validation_set(cfg: Config) -> Dataset:
    """Ground-truth labels of ``data.val_split`` (never pseudo labels), at most val_max_images."""
    val_set = SegDataset(cfg.data, cfg.data.val_split, "gt", train=False)
    limit = cfg.runtime.val_max_images
    return Subset(val_set, range(min(limit, len(val_set)))) if limit else val_set


def validate(model: nn.Module, val_set: Dataset, cfg: Config, device: torch.device, amp_dtype: torch.dtype | None) -> dict[str, Any]:
    """mIoU and friends on ``val_set`` with the test recipe (every rank scores its shard)."""
    return evaluate_model(
        model, val_set, num_classes=len(cfg.data.classes), pad_size=cfg.eval.pad_size,
        device=device, batch_size=cfg.eval.batch_size, amp_dtype=amp_dtype,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Run folder


def resume_source(out_dir: Path, resume: Path | bool | None, force: bool) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run; refuses to clobber a run."""
    if resume:
        path = out_dir / LAST if resume is True else Path(resume).expanduser()
        if not path.is_file():
            raise PipsegError(f"{path}: no checkpoint to resume from; start without --resume")
        return path
    if force:
        return None
    progress = run_progress(out_dir)
    if progress is None:
        return None
    done, iters = progress
    if done >= iters:
        raise PipsegError(
            f"{out_dir}: holds a finished run ({done} iterations); use --force to overwrite it "
            "or set runtime.out_dir to another folder"
        )
    raise PipsegError(
        f"{out_dir}: holds a partial run (iteration {done} of {iters}); use --resume to continue "
        "it or --force to start over"
    )


def clear_run(out_dir: Path) -> None:
    """Remove the files a previous run left (``--force``), so no stale best.pt survives."""
    for name in (LAST, BEST, runlog.LOG_NAME, runlog.CURVES_NAME, runlog.SUMMARY_NAME):
        (out_dir / name).unlink(missing_ok=True)


def plain(obj: Any) -> Any:
    """``obj`` as JSON types (no numpy scalars), so checkpoints load with weights_only=True."""
    return json.loads(json.dumps(obj, default=float))


def _worker_error_line(e: PipsegError) -> PipsegError:
    """A PipsegError re-raised by a DataLoader worker carries a traceback; keep its one line."""
    text = str(e)
    marker = "PipsegError: "
    return PipsegError(text.rsplit(marker, 1)[-1].strip()) if marker in text else e


# --------------------------------------------------------------------------------------------
# The run


def train(
    cfg: Config,
    *,
    resume: Path | bool | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
    stop_at: int | None = None,
) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` as PIP.md section 3, writing into ``runtime.out_dir``.

    Args:
        cfg: the resolved config.
        resume: True to continue from ``out_dir/last.pt``, or a checkpoint path.
        force: overwrite a run already in ``out_dir``.
        progress: called on rank 0 with event dicts (``event`` = start / iter / log / val / end).
        stop_at: stop after this iteration (saving last.pt) as if interrupted; the poly schedule
            still runs to ``optim.iters`` and a later ``resume`` continues exactly.

    Returns:
        A :class:`TrainResult`. Under torchrun every rank returns it; only rank 0 writes files.
    """
    info = dist_info_from_env()
    device = resolve_device(cfg.runtime.device, info)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created_group = init_distributed(info, device)
    try:
        return _train(cfg, info, device, resume, force, progress or (lambda event: None), stop_at)
    except PipsegError as e:
        raise _worker_error_line(e) from None
    except torch.OutOfMemoryError:
        raise PipsegError(
            f"CUDA out of memory with {cfg.optim.batch_size // cfg.optim.accumulate // info.world_size} "
            f"crops of {cfg.data.crop_size} per process; use a smaller optim.batch_size or a larger "
            "optim.accumulate (or runtime.amp=bf16)"
        ) from None
    finally:
        cleanup_distributed(created_group)


def _train(
    cfg: Config,
    info: DistInfo,
    device: torch.device,
    resume: Path | bool | None,
    force: bool,
    emit: ProgressFn,
    stop_at: int | None,
) -> TrainResult:
    o, rt = cfg.optim, cfg.runtime
    out_dir = Path(rt.out_dir).expanduser()
    if o.batch_size % (o.accumulate * info.world_size):
        raise PipsegError(
            f"optim.batch_size: {o.batch_size} is not divisible by optim.accumulate ({o.accumulate}) "
            f"x processes ({info.world_size}); pick a batch size that is"
        )
    micro_batch = o.batch_size // (o.accumulate * info.world_size)
    amp_dtype = AMP_DTYPES[rt.amp]
    memory_format = torch.channels_last if rt.channels_last else torch.contiguous_format
    ckpt_path = resume_source(out_dir, resume, force)
    barrier()  # every rank has checked the folder before rank 0 changes it

    # Model first: its input convention sets the padding colour of the crops.
    start = read_training_checkpoint(ckpt_path) if ckpt_path else None
    if start is None:
        torch.manual_seed(rt.seed)  # the same initial weights on every rank
        model, init = build_initialised_model(cfg)
    else:
        if start["iteration"] >= o.iters:
            raise PipsegError(
                f"{ckpt_path}: the run already finished ({start['iteration']} iterations); raise "
                "optim.iters to train further, or use --force without --resume to start over"
            )
        model = load_weights(build_model(cfg.model.name, len(cfg.data.classes)), start, source=str(ckpt_path))
        init = start["init"]
    train_set = SegDataset(
        cfg.data, cfg.data.train_split, cfg.data.label_source, train=True,
        pad_rgb=mean_rgb255(model.input_convention),
    )  # fmt: skip
    if len(train_set) == 0:
        raise PipsegError(f"data.train_split: split '{cfg.data.train_split}' has no images; check `pipseg prepare`")
    val_set = validation_set(cfg)
    if len(val_set) == 0:  # type: ignore[arg-type]
        raise PipsegError(f"data.val_split: split '{cfg.data.val_split}' has no images; check `pipseg prepare`")

    model = sync_batchnorm(model, device, info).to(device, memory_format=memory_format)
    model_without_ddp = model
    if info.enabled:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    criterion = build_loss(cfg.loss).to(device)
    optimizer = make_optimizer(model_without_ddp, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=rt.amp == "fp16")

    iteration, best_miou, metrics, position = 0, None, None, {"epoch": 0, "samples": 0}
    seed_everything(rt.seed + info.rank)  # dropout etc.; augmentation has its own seeds
    if start is not None:
        optimizer.load_state_dict(start["optimizer"])
        if start.get("scaler"):
            scaler.load_state_dict(start["scaler"])
        iteration, best_miou, metrics = int(start["iteration"]), start.get("best_miou"), start.get("metrics")
        position = start["data_position"]
        states = [start["rng"], *start["rng"].get("other_ranks", [])]
        if len(states) == info.world_size:  # else: a new world size, fresh per-rank seeds
            set_rng_state(states[info.rank])
    stream = make_train_batches(train_set, micro_batch, cfg, info, device, position)
    batches = iter(stream)

    log_path = out_dir / runlog.LOG_NAME
    header = {
        "model": cfg.model.name, "init": init, "label_source": cfg.data.label_source,
        "train_split": cfg.data.train_split, "train_images": len(train_set),
        "val_split": cfg.data.val_split, "val_images": len(val_set), "val_labels": "gt",  # type: ignore[arg-type]
        "loss": cfg.loss.kind, "device": str(device), "world_size": info.world_size, "amp": rt.amp,
        "batch_size": o.batch_size, "accumulate": o.accumulate, "micro_batch": micro_batch,
        "lr": o.lr, "iters": o.iters, "start_iteration": iteration, "out_dir": str(out_dir),
    }  # fmt: skip
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if start is None:
            clear_run(out_dir)
        else:
            runlog.truncate_log(log_path, iteration)
        atomic_write_text(out_dir / runlog.CONFIG_NAME, dump_config(cfg))
        runlog.JsonlLog(log_path).write({"kind": "start", "iteration": iteration, **header})
        emit({"event": "start", **header})
    log = runlog.JsonlLog(log_path)

    def report(event: str, record: dict[str, Any], **extra: Any) -> None:
        """Rank 0: append ``record`` to log.jsonl and hand it to ``progress``."""
        if info.is_main:
            log.write(record)
            emit({"event": event, **record, **extra})

    def checkpoint() -> dict[str, Any]:
        states = all_gather_objects(rng_state())  # every rank's RNG, for an exact resume
        return {
            "format": CHECKPOINT_FORMAT, "model": model_without_ddp.state_dict(),
            "model_name": cfg.model.name, "num_classes": len(cfg.data.classes),
            "classes": list(cfg.data.classes),
            "input_convention": model_without_ddp.input_convention.as_dict(),
            "config": cfg.to_dict(), "iteration": iteration, "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "rng": {**states[0], "other_ranks": states[1:]}, "data_position": stream.position(),
            "best_miou": best_miou, "metrics": metrics, "label_source": cfg.data.label_source,
            "train_split": cfg.data.train_split, "train_images": len(train_set), "init": init,
        }  # fmt: skip

    last_stop = min(o.iters, stop_at) if stop_at is not None else o.iters
    started, t_log, it_log = time.perf_counter(), time.perf_counter(), iteration
    log_sum = torch.zeros(3, device=device)
    model.train()
    while iteration < last_stop:
        set_lr(optimizer, poly_lr(o.lr, iteration, o.iters, o.poly_power))
        micro_batches = [next(batches) for _ in range(o.accumulate)]
        log_sum += train_step(model, criterion, optimizer, scaler, micro_batches, device, amp_dtype, memory_format)
        iteration += 1
        if info.is_main:
            emit({"event": "iter", "iteration": iteration})

        if iteration % rt.log_every == 0 or iteration == last_stop:
            loss, box, pixel = (reduce_mean(log_sum) / (iteration - it_log)).tolist()  # the host sync
            if not math.isfinite(loss):
                raise PipsegError(f"loss is {loss} at iteration {iteration}; lower optim.lr (or use runtime.amp=none)")
            now = time.perf_counter()
            ips = (iteration - it_log) * o.batch_size / (now - t_log)
            record = {
                "kind": "train", "iteration": iteration, "loss": loss, "box": box, "pixel": pixel,
                "lr": optimizer.param_groups[0]["lr"], "images_per_s": ips,
                "eta_s": (last_stop - iteration) * (now - t_log) / (iteration - it_log),
                "epoch": stream.epoch, "time_s": now - started,
            }  # fmt: skip
            report("log", record)
            log_sum.zero_()
            t_log, it_log = now, iteration

        paused, improved = time.perf_counter(), False
        if iteration % rt.val_every == 0 or iteration == o.iters:
            metrics = plain(validate(model, val_set, cfg, device, amp_dtype))
            improved = best_miou is None or metrics["miou"] > best_miou
            best_miou = metrics["miou"] if improved else best_miou
            keys = ("miou", "pixel_accuracy", "mean_accuracy", "fw_iou", "iou")
            record = {"kind": "val", "iteration": iteration, **{k: metrics[k] for k in keys if k in metrics}}
            report("val", record, best_miou=best_miou)
        if iteration % rt.ckpt_every == 0 or iteration == last_stop or improved:
            ckpt = checkpoint()
            if info.is_main:
                if iteration % rt.ckpt_every == 0 or iteration == last_stop:
                    save_checkpoint(out_dir / LAST, ckpt)
                if improved:
                    save_checkpoint(out_dir / BEST, ckpt)
            barrier()
        t_log += time.perf_counter() - paused  # validation and saving are not training time

    finished = iteration >= o.iters
    summary = {
        **header, "iteration": iteration, "finished": finished, "best_miou": best_miou,
        "metrics": metrics, "wall_time_s": time.perf_counter() - started,
    }  # fmt: skip
    if info.is_main:
        records = runlog.read_log(log_path)
        train_records = [r for r in records if r.get("kind") == "train"]
        if train_records:
            summary["final_loss"] = {k: train_records[-1][k] for k in ("loss", "box", "pixel")}
            summary["images_per_s"] = float(np.mean([r["images_per_s"] for r in train_records[-5:]]))
        runlog.plot_curves(records, out_dir / runlog.CURVES_NAME)
        atomic_write_json(out_dir / runlog.SUMMARY_NAME, summary)
        emit({"event": "end", **summary})
    barrier()
    return TrainResult(
        out_dir=out_dir, iteration=iteration, finished=finished, best_miou=best_miou, metrics=metrics,
        last_checkpoint=out_dir / LAST,
        best_checkpoint=out_dir / BEST if (out_dir / BEST).is_file() else None, summary=summary,
    )  # fmt: skip
