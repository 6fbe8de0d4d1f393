"""Training checkpoints: the dict of ARCHITECTURE.md, RNG states in plain types, atomic saves.

Everything stored is a tensor, dict, list, str, int, float, bool or None, so the file loads with
``torch.load(path, map_location="cpu", weights_only=True)``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipseg.errors import PipsegError
from pipseg.io import atomic_path
from pipseg.models import CHECKPOINT_FORMAT, load_checkpoint

LAST, BEST = "last.pt", "best.pt"


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
