"""A model's starting weights as ``model.init`` asks: random, torchvision's ImageNet file, or a
weight file; and a record of where they came from (kept in the run's log and checkpoints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from pipseg.config import ModelConfig
from pipseg.errors import PipsegError
from pipseg.io import file_digest
from pipseg.models.registry import build_model, imagenet_weights
from pipseg.models.weights import init_from_imagenet, load_weights


def build_initialised_model(cfg: ModelConfig, num_classes: int) -> tuple[nn.Module, dict[str, Any]]:
    """Model ``cfg.name`` with ``num_classes`` outputs, initialised as ``cfg.init`` says.

    Returns:
        ``(model, record)``; the record has ``kind`` (``none`` / ``imagenet`` / ``file``),
        ``file`` (str or None) and ``sha256`` (hex digest of the file, or None).
    """
    model = build_model(cfg.name, num_classes)
    if cfg.init == "none":
        return model, {"kind": "none", "file": None, "sha256": None}
    weights = imagenet_weights(cfg.name)
    if cfg.init == "imagenet":
        if weights is None:
            raise PipsegError(
                f"model.init: {cfg.name} has no ImageNet weights; use --set model.init=none (or a checkpoint path)"
            )
        path = Path(cfg.weights_dir).expanduser() / weights.file
        if not path.is_file():
            raise PipsegError(
                f"{path}: ImageNet weights for {cfg.name} not found; run `pipseg download "
                f"{weights.download}` (or set model.init to none or a weight file)"
            )
        init_from_imagenet(model, path)
        return model, {"kind": "imagenet", "file": str(path), "sha256": file_digest(path)}
    path = Path(cfg.init).expanduser()
    if not path.is_file():
        raise PipsegError(f"model.init: {path}: no such file; use 'imagenet', 'none' or a weight file")
    if weights is not None and path.name == weights.file:
        init_from_imagenet(model, path)
    else:
        load_weights(model, path)
    return model, {"kind": "file", "file": str(path), "sha256": file_digest(path)}
