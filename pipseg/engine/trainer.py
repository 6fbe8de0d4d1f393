"""The training loop of ``pipseg train``: the recipe of METHOD.md section 3, one process or torchrun.

:func:`train` reads top to bottom: device and ranks, run folder, model, data, DDP, loss,
optimiser, resume, loop, summary. One iteration (:func:`train_step`) is ``optim.accumulate``
micro-batches of ``batch_size / (accumulate * world_size)`` crops each, then one SGD step with
the poly lr.

Exact resume: the data stream's position and every rank's RNG state are in each checkpoint
(:mod:`pipseg.engine.batches`, :mod:`pipseg.engine.checkpoint`), so a run stopped and resumed
ends with the same weights as a run that never stopped.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from pipseg.config import Config, OptimConfig
from pipseg.data.manifest import resolve_classes
from pipseg.device import resolve_device
from pipseg.engine import runlog
from pipseg.engine.batches import TrainBatches, make_train_batches, training_set, validation_set
from pipseg.engine.checkpoint import (
    BEST,
    LAST,
    TrainState,
    checkpoint_identity,
    plain,
    restore_training,
    rng_state,
    save_checkpoint,
    training_checkpoint,
)
from pipseg.engine.criterion import build_loss
from pipseg.engine.distributed import DistInfo, dist_info_from_env, process_group
from pipseg.engine.interrupt import StopSignals
from pipseg.engine.lock import RunLock
from pipseg.engine.run_folder import open_run_folder, resume_checkpoint
from pipseg.errors import PipsegError
from pipseg.evaluate import evaluate_model
from pipseg.losses import to_logit_grid
from pipseg.models import build_initialised_model, build_model, load_weights, prepare_images

AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    interrupted: str | None = None  # the signal that stopped the run early (SIGINT, SIGTERM)


@dataclass
class Run:
    """What the loop works with, set up once by :func:`train` (nothing here is reassigned)."""

    cfg: Config
    info: DistInfo
    device: torch.device
    out_dir: Path
    model: nn.Module  # DDP-wrapped under torchrun
    model_without_ddp: nn.Module  # what checkpoints save
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    batches: TrainBatches
    val_set: Dataset
    reporter: runlog.Reporter
    identity: dict[str, Any]  # what each checkpoint says about the model and its training
    started: float  # perf_counter() at the start, minus the wall time of the run before a resume


# --------------------------------------------------------------------------------------------
# The run


def train(
    cfg: Config,
    *,
    model: nn.Module | None = None,
    loss: nn.Module | None = None,
    resume: Path | bool | None = None,
    force: bool = False,
    progress: runlog.ProgressFn | None = None,
    stop_at: int | None = None,
) -> TrainResult:
    """Train on ``cfg.data`` as METHOD.md section 3, writing into ``runtime.out_dir``; returns a
    :class:`TrainResult` on every rank (only rank 0 writes files).

    Args:
        cfg: the resolved config; ``data.classes`` unset means the prepared manifest's list.
        model: the network to train (a pipseg model: ``name``, ``input_convention``, the two
            parameter groups); default: ``model.name`` initialised as ``model.init`` says.
        loss: the criterion (``forward_parts(logits, labels, boxes)``); default from ``cfg.loss``.
        resume: True to continue from ``out_dir/last.pt``, or a checkpoint path.
        force: overwrite a run already in ``out_dir``.
        progress: called on rank 0 with event dicts (``event`` = start / iter / log / val / end).
        stop_at: stop after this iteration (saving last.pt) as if interrupted; the poly schedule
            still runs to ``optim.iters`` and a later ``resume`` continues exactly.
    """
    cfg = resolve_classes(cfg)  # data.classes from the prepared manifest when the config has none
    info = dist_info_from_env()
    device = resolve_device(cfg.runtime.device, local_rank=info.local_rank, option="runtime.device")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out_dir = Path(cfg.runtime.out_dir).expanduser()
    with process_group(info, device), one_line_errors(cfg, info), run_lock(out_dir, info):
        micro_batch = micro_batch_size(cfg.optim, info.world_size)
        ckpt_path, ckpt = resume_checkpoint(out_dir, resume, force, cfg.optim.iters) or (None, None)
        info.barrier()  # every rank has checked the folder before rank 0 changes it

        # The model first: its input convention sets the padding colour of the crops.
        model, init = starting_model(cfg, model, ckpt, ckpt_path)
        train_set, (val_set, val_without_masks) = training_set(cfg, model.input_convention), validation_set(cfg)
        model = sync_batchnorm(model, device, info).to(device, memory_format=memory_format(cfg))
        model_without_ddp = model
        if info.enabled:
            model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        criterion = (loss if loss is not None else build_loss(cfg.loss)).to(device)
        optimizer = make_optimizer(model_without_ddp, cfg.optim)
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.runtime.amp == "fp16")

        seed_everything(cfg.runtime.seed + info.rank)  # dropout etc.; augmentation has its own seeds
        state = restore_training(ckpt, optimizer, scaler, info) if ckpt else TrainState()
        batches = make_train_batches(train_set, micro_batch, cfg, info, device, ckpt and ckpt["data_position"])
        header = runlog.run_header(
            cfg, init=init, train_images=len(train_set), val_images=len(val_set), device=device,  # type: ignore[arg-type]
            world_size=info.world_size, micro_batch=micro_batch, start_iteration=state.iteration, out_dir=out_dir,
            val_without_masks=val_without_masks,
        )  # fmt: skip
        if info.is_main:
            open_run_folder(out_dir, cfg, resumed_at=state.iteration if ckpt else None)
        reporter = runlog.Reporter(out_dir / runlog.LOG_NAME, progress, enabled=info.is_main,
                                   tensorboard=cfg.runtime.tensorboard, classes=list(cfg.data.classes))  # fmt: skip
        reporter.start(header)

        run = Run(cfg, info, device, out_dir, model, model_without_ddp, criterion, optimizer, scaler, batches,
                  val_set, reporter, checkpoint_identity(cfg, model_without_ddp, len(train_set), init),
                  started=time.perf_counter() - state.wall_time_s)  # fmt: skip
        try:
            with StopSignals(info) as signals:
                train_loop(run, state, min(cfg.optim.iters, stop_at) if stop_at is not None else cfg.optim.iters, signals)
        finally:
            reporter.close()
        return finish(run, state, header)


def run_lock(out_dir: Path, info: DistInfo) -> AbstractContextManager:
    """Rank 0 holds the run folder's lock for the whole run (a second run into it is refused)."""
    return RunLock(out_dir) if info.is_main else nullcontext()


def train_loop(run: Run, state: TrainState, stop: int, signals: StopSignals | None = None) -> None:
    """Iterate from ``state.iteration`` to ``stop``: step, log, validate, save checkpoints. When
    ``signals`` reports a stop request (Ctrl-C on any rank), every rank ends after the same
    iteration with last.pt written there (``state.interrupted`` names the signal)."""
    o, rt = run.cfg.optim, run.cfg.runtime
    amp, fmt = AMP_DTYPES[rt.amp], memory_format(run.cfg)
    window = LogWindow(run.device, state.iteration)
    batches = iter(run.batches)
    validating = len(run.val_set) > 0  # type: ignore[arg-type]  # no val masks: no validation, no best.pt
    run.model.train()
    while state.iteration < stop:
        set_lr(run.optimizer, poly_lr(o.lr, state.iteration, o.iters, o.poly_power))
        micro_batches = [next(batches) for _ in range(o.accumulate)]
        window.add(train_step(run.model, run.criterion, run.optimizer, run.scaler, micro_batches, run.device, amp, fmt))
        state.iteration += 1
        run.reporter.emit("iter", iteration=state.iteration)

        if state.iteration % rt.log_every == 0 or state.iteration == stop:
            run.reporter.record("log", train_record(run, window, state.iteration, stop))

        paused, improved = time.perf_counter(), False
        if validating and (state.iteration % rt.val_every == 0 or state.iteration == o.iters):
            improved = state.validated(plain(validate(run.model, run.val_set, run.cfg, run.device, amp)))
            run.reporter.validation(state.iteration, state.metrics, state.best_miou)  # type: ignore[arg-type]
        due = state.iteration % rt.ckpt_every == 0 or state.iteration == stop
        if due or improved:
            save_checkpoints(run, state, last=due, best=improved)
        window.pause(time.perf_counter() - paused)  # validation and saving are not training time
        if signals is not None and state.iteration < stop and stop_requested(run, state, window, stop, signals, due):
            return


def stop_requested(
    run: Run, state: TrainState, window: LogWindow, stop: int, signals: StopSignals, saved: bool
) -> bool:
    """At a step boundary: whether any rank was asked to stop (all ranks agree). If so, log the
    open window and write last.pt at this iteration (unless ``saved`` already did) so ``--resume``
    continues from here; ``state.interrupted`` names the signal."""
    state.interrupted = signals.requested()
    if state.interrupted is None:
        return False
    if state.iteration % run.cfg.runtime.log_every and state.iteration != stop:
        run.reporter.record("log", train_record(run, window, state.iteration, stop))
    if not saved:
        save_checkpoints(run, state, last=True, best=False)
    return True


def finish(run: Run, state: TrainState, header: dict[str, Any]) -> TrainResult:
    """Rank 0 writes the summary and the curves; every rank returns the result. ``wall_time_s``
    counts every part of a resumed run (checkpoints carry the time before them)."""
    finished = state.iteration >= run.cfg.optim.iters
    summary = {
        **header, "iteration": state.iteration, "finished": finished, "best_miou": state.best_miou,
        "metrics": state.metrics, "wall_time_s": time.perf_counter() - run.started,
        "interrupted": state.interrupted,
    }  # fmt: skip
    if run.info.is_main:
        summary = runlog.write_summary(run.out_dir, summary)
        run.reporter.emit("end", **summary)
    run.info.barrier()
    best = run.out_dir / BEST
    return TrainResult(
        out_dir=run.out_dir, iteration=state.iteration, finished=finished, best_miou=state.best_miou,
        metrics=state.metrics, last_checkpoint=run.out_dir / LAST,
        best_checkpoint=best if best.is_file() else None, summary=summary, interrupted=state.interrupted,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Set-up


@contextmanager
def one_line_errors(cfg: Config, info: DistInfo) -> Iterator[None]:
    """Turn what goes wrong inside a run into one PipsegError line: a PipsegError re-raised by a
    DataLoader worker loses its traceback, CUDA out of memory names the settings to change."""
    try:
        yield
    except PipsegError as e:
        text, marker = str(e), "PipsegError: "
        raise (PipsegError(text.rsplit(marker, 1)[-1].strip()) if marker in text else e) from None
    except torch.OutOfMemoryError:
        raise PipsegError(
            f"CUDA out of memory with {cfg.optim.batch_size // cfg.optim.accumulate // info.world_size} "
            f"crops of {cfg.data.crop_size} per process; use a smaller optim.batch_size or a larger "
            "optim.accumulate (or runtime.amp=bf16)"
        ) from None


def micro_batch_size(o: OptimConfig, world_size: int) -> int:
    """Crops per forward pass: ``batch_size / (accumulate * world_size)``, which must be whole."""
    if o.batch_size % (o.accumulate * world_size):
        raise PipsegError(
            f"optim.batch_size: {o.batch_size} is not divisible by optim.accumulate ({o.accumulate}) "
            f"x processes ({world_size}); pick a batch size that is"
        )
    return o.batch_size // (o.accumulate * world_size)


def starting_model(
    cfg: Config, model: nn.Module | None, ckpt: dict[str, Any] | None, ckpt_path: Path | None
) -> tuple[nn.Module, dict[str, Any]]:
    """The model to train and the record of its initial weights: the caller's ``model`` or the
    configured one, with the weights of ``ckpt`` (read from ``ckpt_path``) when resuming."""
    num_classes = len(cfg.data.classes)
    if model is not None:
        given = (getattr(model, "name", cfg.model.name), getattr(model, "num_classes", num_classes))
        if given != (cfg.model.name, num_classes):
            raise PipsegError(
                f"model.name: the model passed to train is {given[0]} with {given[1]} classes but the "
                f"config says {cfg.model.name} with {num_classes} (data.classes); make them agree"
            )
    if ckpt is not None:
        model = model if model is not None else build_model(cfg.model.name, num_classes)
        return load_weights(model, ckpt, source=str(ckpt_path)), ckpt["init"]
    if model is not None:
        return model, {"kind": "caller", "file": None, "sha256": None}
    torch.manual_seed(cfg.runtime.seed)  # the same initial weights on every rank
    return build_initialised_model(cfg.model, num_classes, classes=list(cfg.data.classes))


def memory_format(cfg: Config) -> torch.memory_format:
    """``channels_last`` when ``runtime.channels_last`` is set."""
    return torch.channels_last if cfg.runtime.channels_last else torch.contiguous_format


def make_optimizer(model: nn.Module, o: OptimConfig) -> torch.optim.SGD:
    """SGD with momentum and weight decay; the classifier group has ``classifier_lr_mult``."""
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


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# --------------------------------------------------------------------------------------------
# One iteration, the log window, validation, checkpoints


def poly_lr(base_lr: float, iteration: int, max_iter: int, power: float) -> float:
    """``base * (1 - iteration / max_iter) ** power`` (iteration counts from 0)."""
    return base_lr * (1.0 - iteration / max_iter) ** power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every param group's lr to ``lr`` times its ``lr_mult``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]


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
            extra = {"images": images} if getattr(criterion, "uses_images", False) else {}
            parts = criterion.forward_parts(logits.float(), labels, boxes, **extra)
            scaler.scale(parts["loss"] / steps).backward()
        parts_sum += torch.stack([parts["loss"], parts["box"], parts["pixel"]]).detach()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return parts_sum / steps


class LogWindow:
    """The iterations since the last log line: their summed loss parts (on the device, so no
    host sync until read) and the training time they took."""

    def __init__(self, device: torch.device, iteration: int) -> None:
        self.started = self.since = time.perf_counter()
        self.first, self.sums = iteration, torch.zeros(3, device=device)

    def add(self, parts: Tensor) -> None:
        self.sums += parts

    def pause(self, seconds: float) -> None:
        """Leave ``seconds`` (validation, saving) out of the training time."""
        self.since += seconds

    def close(self, iteration: int, stop: int, batch_size: int, info: DistInfo) -> dict[str, float]:
        """The window's figures at ``iteration`` (loss parts averaged over its iterations and the
        ranks, images per second, time left to ``stop``, time since the start); opens the next."""
        n = iteration - self.first
        loss, box, pixel = (info.reduce_mean(self.sums) / n).tolist()  # the host sync
        now = time.perf_counter()
        seconds = now - self.since
        figures = {
            "loss": loss, "box": box, "pixel": pixel, "images_per_s": n * batch_size / seconds,
            "eta_s": (stop - iteration) * seconds / n, "time_s": now - self.started,
        }  # fmt: skip
        self.sums.zero_()
        self.since, self.first = now, iteration
        return figures


def train_record(run: Run, window: LogWindow, iteration: int, stop: int) -> dict[str, Any]:
    """The ``train`` log record at ``iteration``; a loss that is not finite ends the run."""
    f = window.close(iteration, stop, run.cfg.optim.batch_size, run.info)
    if not math.isfinite(f["loss"]):
        raise PipsegError(f"loss is {f['loss']} at iteration {iteration}; lower optim.lr (or use runtime.amp=none)")
    return {
        "kind": "train", "iteration": iteration, "loss": f["loss"], "box": f["box"], "pixel": f["pixel"],
        "lr": run.optimizer.param_groups[0]["lr"], "images_per_s": f["images_per_s"], "eta_s": f["eta_s"],
        "epoch": run.batches.epoch, "time_s": f["time_s"],
    }  # fmt: skip


def validate(
    model: nn.Module, val_set: Dataset, cfg: Config, device: torch.device, amp_dtype: torch.dtype | None
) -> dict[str, Any]:
    """mIoU and friends on ``val_set`` with the test recipe (every rank scores its shard)."""
    return evaluate_model(
        model, val_set, num_classes=len(cfg.data.classes), pad_size=cfg.eval.pad_size,
        device=device, batch_size=cfg.eval.batch_size, amp_dtype=amp_dtype,
    )  # fmt: skip


def save_checkpoints(run: Run, state: TrainState, *, last: bool, best: bool) -> None:
    """Save last.pt and / or best.pt (rank 0) with every rank's RNG; all ranks wait for it."""
    rng_states = run.info.all_gather(rng_state())  # a collective: every rank takes part
    state.wall_time_s = time.perf_counter() - run.started
    if run.info.is_main:
        ckpt = training_checkpoint(run.model_without_ddp, run.optimizer, run.scaler, state,
                                   run.batches.position(), rng_states, run.identity)  # fmt: skip
        if last:
            save_checkpoint(run.out_dir / LAST, ckpt)
        if best:
            save_checkpoint(run.out_dir / BEST, ckpt)
    run.info.barrier()
