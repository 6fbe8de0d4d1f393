"""A model's starting weights as ``model.init`` asks: random, torchvision's ImageNet file, a named
start file (``deeplab-init``: the authors' DeepLab-LargeFOV init), or a weight file; and a record of
where they came from (kept in the run's log and checkpoints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from pipseg.config import ModelConfig
from pipseg.errors import PipsegError
from pipseg.io import file_digest
from pipseg.models.registry import InitFile, build_model, imagenet_weights, init_file
from pipseg.models.weights import init_from_file, init_from_imagenet


def build_initialised_model(
    cfg: ModelConfig, num_classes: int, classes: list[str] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Model ``cfg.name`` with ``num_classes`` outputs, initialised as ``cfg.init`` says.

    A weight file (a checkpoint path, or ``deeplab-init``) whose classifier does not fit the run
    (another class count, or, where the file names them, other ``classes``) starts everything
    but the classifier, which is re-initialised as METHOD.md section 5's fc8.

    Returns:
        ``(model, record)``; the record has ``kind`` (``none`` / ``imagenet`` / ``deeplab-init`` /
        ``file``), ``file`` (str or None) and ``sha256`` (hex digest of the file, or None), and
        ``classifier`` (one line) when the classifier was re-initialised.
    """
    model = build_model(cfg.name, num_classes)
    if cfg.init == "none":
        return model, {"kind": "none", "file": None, "sha256": None}
    if cfg.init == "imagenet":
        path = _imagenet_path(cfg)
        init_from_imagenet(model, path)
        return model, {"kind": "imagenet", "file": str(path), "sha256": file_digest(path)}
    named = init_file(cfg.name, cfg.init)
    if named is not None:
        path, kind = _named_path(cfg, named), named.init
        note = init_from_file(model, path, classes, input_convention=named.convention)
    else:
        path, kind = Path(cfg.init).expanduser(), "file"
        if not path.is_file():
            raise PipsegError(
                f"model.init: {path}: no such file; use 'imagenet', 'none', a named start file "
                "('deeplab-init') or a weight file"
            )
        weights = imagenet_weights(cfg.name)
        if weights is not None and path.name == weights.file:
            init_from_imagenet(model, path)
            note = None
        else:
            note = init_from_file(model, path, classes)
    record = {"kind": kind, "file": str(path), "sha256": file_digest(path)}
    return model, {**record, "classifier": note} if note else record


def _imagenet_path(cfg: ModelConfig) -> Path:
    """torchvision's ImageNet file of ``cfg.name`` in ``cfg.weights_dir`` (it must be there)."""
    weights = imagenet_weights(cfg.name)
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
    return path


def _named_path(cfg: ModelConfig, named: InitFile) -> Path:
    """The named start file in ``cfg.weights_dir``; a missing one says where to get it."""
    folder = Path(cfg.weights_dir).expanduser()
    path = folder / named.file
    if not path.is_file():
        raise PipsegError(
            f"model.init: {named.init}: {named.file} not found in {folder} (model.weights_dir); "
            f"download it in a browser from {named.url} (the {named.project} project) and save it "
            f"there as {named.file} (docs/METHOD.md, \"Reproducing the paper's table\")"
        )
    return path
