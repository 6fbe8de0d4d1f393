"""Training checkpoints: the dict of ARCHITECTURE.md, the loop state it carries, RNG states in
plain types, atomic saves and the restore of a resumed run.

Everything stored is a tensor, dict, list, str, int, float, bool or None, so the file loads with
``torch.load(path, map_location="cpu", weights_only=True)``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipseg.config import Config
from pipseg.engine.distributed import DistInfo
from pipseg.errors import PipsegError
from pipseg.io import atomic_path
from pipseg.models import CHECKPOINT_FORMAT, load_checkpoint

LAST, BEST = "last.pt", "best.pt"


@dataclass
class TrainState:
    """What the loop changes besides the weights, the optimiser and the data position."""

    iteration: int = 0
    best_miou: float | None = None
    metrics: dict[str, Any] | None = None  # the last validation
    wall_time_s: float = 0.0  # training wall time up to the last checkpoint, over every resume
    interrupted: str | None = None  # the signal that asked the run to stop

    def validated(self, metrics: dict[str, Any]) -> bool:
        """Record a validation; True when its mIoU beats every earlier one."""
        self.metrics = metrics
        improved = self.best_miou is None or metrics["miou"] > self.best_miou
        if improved:
            self.best_miou = metrics["miou"]
        return improved


def plain(obj: Any) -> Any:
    """``obj`` as JSON types (no numpy scalars), so checkpoints load with weights_only=True."""
    return json.loads(json.dumps(obj, default=float))


def rng_state() -> dict[str, Any]:
    """This process's torch, CUDA, numpy and Python RNG states, as tensors / lists / ints."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "state": list(internal), "gauss": gauss},
    }  # fmt: skip


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def checkpoint_identity(cfg: Config, model: nn.Module, train_images: int, init: dict[str, Any]) -> dict[str, Any]:
    """What every checkpoint of a run says about its model and what trained it."""
    return {
        "model_name": cfg.model.name, "num_classes": len(cfg.data.classes),
        "classes": list(cfg.data.classes), "input_convention": model.input_convention.as_dict(),
        "config": cfg.to_dict(), "label_source": cfg.data.label_source,
        "train_split": cfg.data.train_split, "train_images": train_images, "init": init,
    }  # fmt: skip


def training_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: TrainState,
    data_position: dict[str, int],
    rng_states: list[dict[str, Any]],
    identity: dict[str, Any],
) -> dict[str, Any]:
    """The checkpoint dict: ``model`` (without DDP), optimiser, scaler, loop state, data position
    and every rank's RNG (``rng_states`` by rank), plus the run's ``identity``."""
    return {
        "format": CHECKPOINT_FORMAT, "model": model.state_dict(), **identity,
        "iteration": state.iteration, "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "rng": {**rng_states[0], "other_ranks": rng_states[1:]}, "data_position": data_position,
        "best_miou": state.best_miou, "metrics": state.metrics, "wall_time_s": state.wall_time_s,
    }  # fmt: skip


def restore_training(
    ckpt: dict[str, Any], optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, info: DistInfo
) -> TrainState:
    """Load the optimiser, the scaler and this rank's RNG from ``ckpt``; return its loop state.

    A run resumed with another number of processes keeps the fresh per-rank seeds instead."""
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    states = [ckpt["rng"], *ckpt["rng"].get("other_ranks", [])]
    if len(states) == info.world_size:
        set_rng_state(states[info.rank])
    return TrainState(
        int(ckpt["iteration"]), ckpt.get("best_miou"), ckpt.get("metrics"), float(ckpt.get("wall_time_s", 0.0))
    )


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (never a half-written file)."""
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return path


def read_training_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by ``pipseg train`` for resuming (weights_only, on the CPU)."""
    ckpt = load_checkpoint(path)
    if ckpt.get("format") != CHECKPOINT_FORMAT or "optimizer" not in ckpt or "iteration" not in ckpt:
        raise PipsegError(f"{path}: not a training checkpoint written by `pipseg train`; cannot resume from it")
    return ckpt


def run_progress(out_dir: Path) -> tuple[int, int] | None:
    """``(iteration, iters)`` of the run whose ``last.pt`` is in ``out_dir``; None if there is none."""
    path = out_dir / LAST
    if not path.is_file():
        return None
    ckpt = read_training_checkpoint(path)
    return int(ckpt["iteration"]), int(ckpt["config"]["optim"]["iters"])
