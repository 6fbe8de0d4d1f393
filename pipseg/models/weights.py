"""Loading weights into models: pipseg checkpoints, plain / DataParallel state dicts, the
authors' DeepLab-LargeFOV files and torchvision's ImageNet files. Every load is strict: a
missing, unexpected or mis-shaped key is a PipsegError that names it.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipseg.config import VOC_CLASSES
from pipseg.errors import PipsegError
from pipseg.models import vgg
from pipseg.models.convention import CAFFE_BGR, CONVENTIONS, InputConvention
from pipseg.models.registry import build_model, get_spec

CHECKPOINT_FORMAT = "pipseg-checkpoint-v1"
_IGNORED_SUFFIXES = ("num_batches_tracked",)  # BatchNorm counters: never needed, often absent
_AUTHORS_FC8 = f"features.{vgg.FC8_INDEX}.weight"


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint or state-dict file safely (``weights_only=True``, on the CPU).

    Returns:
        The dict stored in the file: a pipseg checkpoint, or a plain state dict.

    Raises:
        PipsegError: the file is missing, unreadable, holds arbitrary Python objects, or is
            neither a pipseg checkpoint nor a state dict.
    """
    p = Path(path)
    if not p.is_file():
        raise PipsegError(f"{p}: no such file; check the path (or download the weights first)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise PipsegError(f"{p}: not a PyTorch checkpoint file; pass a .pt/.pth checkpoint") from e
        raise PipsegError(
            f"{p}: refused to load: the file holds Python objects beyond tensors and plain containers "
            f"({_first_line(e)[:120]}); load only trusted files, re-saved as a plain state dict"
        ) from e
    except Exception as e:  # torch raises many types for truncated / foreign files
        raise PipsegError(
            f"{p}: not a readable PyTorch file ({_first_line(e)[:120]}); re-download or re-save it"
        ) from e
    if not isinstance(obj, dict):
        raise PipsegError(
            f"{p}: holds a {type(obj).__name__}, not a checkpoint dict; save model.state_dict() or a pipseg checkpoint"
        )
    fmt = obj.get("format")
    if fmt is not None and fmt != CHECKPOINT_FORMAT:
        raise PipsegError(
            f"{p}: unsupported checkpoint format {fmt!r}; this pipseg reads '{CHECKPOINT_FORMAT}'"
        )
    if fmt is None and not _is_state_dict(obj) and not _is_state_dict(obj.get("model")):
        raise PipsegError(
            f"{p}: not a checkpoint: neither a pipseg checkpoint ('format': '{CHECKPOINT_FORMAT}') nor a state dict of tensors"
        )
    return obj


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix that DataParallel / DDP put on every key (if all have it)."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def convention_from_record(record: object, source: str) -> InputConvention:
    """An InputConvention from its checkpoint record (``InputConvention.as_dict()`` or a name)."""
    if isinstance(record, str) and record in CONVENTIONS:
        return CONVENTIONS[record]
    try:
        if not isinstance(record, Mapping):
            raise TypeError("not a dict")
        mean, std = tuple(float(v) for v in record["mean"]), tuple(float(v) for v in record["std"])
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean and std need 3 values")
        return InputConvention(
            name=str(record["name"]), bgr=bool(record["bgr"]), scale=float(record["scale"]),
            mean=mean, std=std,  # type: ignore[arg-type]
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as e:
        raise PipsegError(
            f"{source}: key 'input_convention' is malformed ({e}); re-save the checkpoint with pipseg"
        ) from e


def _load_exact(
    model: nn.Module, state: Mapping[str, object], source: str, skip: tuple[str, ...] = ()
) -> None:
    """Copy ``state`` into ``model`` requiring exactly its keys (minus ``skip`` prefixes) and shapes."""
    own = model.state_dict()
    name = getattr(model, "name", type(model).__name__)

    def needed(key: str) -> bool:
        return not key.startswith(skip) and not key.endswith(_IGNORED_SUFFIXES)

    missing = [k for k in own if needed(k) and k not in state]
    unexpected = [k for k in state if k not in own or k.startswith(skip)]
    for kind, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise PipsegError(
                f"{source}: {kind} key '{keys[0]}'{more} for model {name}; is this file for {name}?"
            )
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise PipsegError(f"{source}: key '{k}' holds a {type(v).__name__}, not a tensor")
        if v.shape != own[k].shape:
            raise PipsegError(
                f"{source}: key '{k}' has shape {tuple(v.shape)} but {name} expects {tuple(own[k].shape)}; "
                "check model.name and the number of classes"
            )
    model.load_state_dict(state, strict=False)  # strictness checked above, minus BN counters


def _unpack(
    obj: Mapping[str, Any], name: str, source: str
) -> tuple[Mapping[str, Any], InputConvention | None, list[str] | None]:
    """``(state dict, recorded input convention or None, class names or None)`` of a loaded
    file: a pipseg checkpoint, a dict holding a ``model`` state dict, or a plain state dict."""
    if obj.get("format") == CHECKPOINT_FORMAT:
        if obj.get("model_name", name) != name:
            raise PipsegError(
                f"{source}: checkpoint is for model '{obj['model_name']}', not '{name}'; set model.name accordingly"
            )
        if "input_convention" not in obj:
            raise PipsegError(
                f"{source}: missing key 'input_convention'; re-save the checkpoint with pipseg"
            )
        convention = convention_from_record(obj["input_convention"], source)
        state, classes = obj.get("model"), obj.get("classes")
    elif isinstance(obj.get("model"), Mapping):
        state, classes = obj["model"], obj.get("classes")
        record = obj.get("input_convention")
        convention = convention_from_record(record, source) if record is not None else None
    else:
        state, classes = obj, None
        convention = CAFFE_BGR if name == "vgg16_largefov" else None  # the authors' layout
    if not isinstance(state, Mapping):
        raise PipsegError(
            f"{source}: key 'model' is not a state dict; re-save the checkpoint with pipseg"
        )
    names = [str(c) for c in classes] if isinstance(classes, list) else None
    return strip_module_prefix(state), convention, names


def classifier_keys(model: nn.Module) -> tuple[str, ...]:
    """The state-dict keys of the model's classifier (the parameters of ``classifier_parameters()``)."""
    head = {id(p) for p in model.classifier_parameters()}
    return tuple(k for k, p in model.named_parameters() if id(p) in head)


def reset_classifier(model: nn.Module) -> None:
    """Re-initialise the classifier as METHOD.md section 5's fc8: weights N(0, 0.01), biases 0."""
    with torch.no_grad():
        for p in model.classifier_parameters():
            if p.ndim > 1:
                nn.init.normal_(p, std=0.01)
            else:
                nn.init.zeros_(p)


def load_weights(
    model: nn.Module,
    path_or_state: str | os.PathLike[str] | Mapping[str, Any],
    *,
    input_convention: InputConvention | None = None,
    source: str | None = None,
    new_classifier: bool = False,
) -> nn.Module:
    """Load weights into ``model`` in place, strictly, and set ``model.input_convention``.

    Accepts a path or an already loaded dict of one of these kinds:
    a pipseg checkpoint (``format: pipseg-checkpoint-v1``; its recorded convention is set),
    a dict with a ``model`` state dict (and optionally ``input_convention``), or a plain state
    dict, with or without the ``module.`` prefix. A plain state dict for ``vgg16_largefov`` is
    the authors' layout and sets CAFFE_BGR; for other models the convention is left as it is.
    ``input_convention`` overrides whatever the source implies. With ``new_classifier`` the
    file's classifier is left out and the model's is re-initialised (`reset_classifier`);
    everything else must still match exactly.

    Returns:
        ``model`` (for chaining).
    """
    if isinstance(path_or_state, (str, os.PathLike)):
        source = source or str(path_or_state)
        obj: Mapping[str, Any] = load_checkpoint(path_or_state)
    else:
        source = source or "state dict"
        obj = path_or_state
    name = getattr(model, "name", type(model).__name__)
    state, convention, _ = _unpack(obj, name, source)
    skip = classifier_keys(model) if new_classifier else ()
    _load_exact(model, {k: v for k, v in state.items() if not k.startswith(skip)} if skip else state, source, skip)
    if new_classifier:
        reset_classifier(model)
    model.input_convention = input_convention or convention or model.input_convention
    return model


def _classes_text(names: list[str] | None, count: int) -> str:
    if not names:
        return f"{count} classes"
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return f"{count} classes ({shown})"


def classifier_mismatch(
    model: nn.Module, state: Mapping[str, Any], file_classes: list[str] | None, classes: list[str] | None
) -> str | None:
    """Why the file's classifier cannot start this run (another class count, or other class
    names), or None when it fits. A file without the classifier's keys is left to the strict load."""
    own = model.state_dict()
    keys = [k for k in classifier_keys(model) if isinstance(state.get(k), torch.Tensor)]
    if not keys:
        return None
    theirs = int(state[keys[0]].shape[0])
    ours = int(own[keys[0]].shape[0])
    shapes_differ = any(tuple(state[k].shape) != tuple(own[k].shape) for k in keys)
    names_differ = bool(file_classes and classes) and [c.strip().lower() for c in file_classes] != [
        c.strip().lower() for c in classes  # type: ignore[union-attr]
    ]
    if not (shapes_differ or names_differ):
        return None
    return f"the file has {_classes_text(file_classes, theirs)}, this run {_classes_text(classes, ours)}"


def init_from_file(
    model: nn.Module,
    path: str | os.PathLike[str],
    classes: list[str] | None = None,
    *,
    input_convention: InputConvention | None = None,
) -> str | None:
    """Start ``model`` from a weight file (a pipseg checkpoint or a state dict): all of it when
    its classifier fits this run's ``classes``, else everything but the classifier, which is
    re-initialised as METHOD.md section 5's fc8 (N(0, 0.01), bias 0).

    Returns:
        None when everything was loaded, else one line saying that the classifier was
        re-initialised and why.
    """
    source = str(path)
    obj = load_checkpoint(path)
    state, _, file_classes = _unpack(obj, getattr(model, "name", type(model).__name__), source)
    reason = classifier_mismatch(model, state, file_classes, classes)
    load_weights(model, obj, source=source, input_convention=input_convention, new_classifier=reason is not None)
    if reason is None:
        return None
    return f"classifier re-initialised (N(0, 0.01), bias 0): {reason}; everything else loaded from {Path(path).name}"


def init_from_imagenet(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Initialise the backbone of ``model`` from torchvision's ImageNet weight file ``path``.

    The file's keys are converted by the model's filter (the registry's ``ImagenetWeights``
    names the file each model expects); every backbone key must be covered with the right shape.
    The classifier keeps its random init. Sets ``model.input_convention`` to torchvision's.
    """
    spec = get_spec(model.name)
    if spec.imagenet is None:
        raise PipsegError(
            f"model.init: {model.name} has no ImageNet weights; set model.init: none (or a checkpoint path)"
        )
    source = str(path)
    state = strip_module_prefix(load_checkpoint(path))
    if not _is_state_dict(state):
        raise PipsegError(
            f"{source}: not a plain state dict; expected torchvision's {spec.imagenet.file}"
        )
    _load_exact(model, spec.imagenet.convert(state, source), source, skip=spec.imagenet.skip)
    model.input_convention = spec.convention
    return model


def generic_class_names(num_classes: int) -> list[str]:
    """Placeholder class names ``class_0`` ... when a file does not record them."""
    return [f"class_{i}" for i in range(num_classes)]


def model_from_checkpoint(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a checkpoint describes and load it, in eval mode on ``device``.

    Accepts pipseg checkpoints and the authors' raw DeepLab-LargeFOV state dict
    (``features.0`` ... ``features.38``, optional ``module.`` prefix; VOC class names when it has
    21 classes, CAFFE_BGR input).

    Returns:
        ``(model, meta)`` with meta keys ``model_name``, ``num_classes``, ``classes`` (list[str]),
        ``input_convention`` (InputConvention), ``iteration`` (int or None), ``source``
        (``"pipseg"`` or ``"authors"``).
    """
    source = str(path)
    obj = load_checkpoint(path)
    if obj.get("format") == CHECKPOINT_FORMAT:
        for key, kind in (("model_name", str), ("num_classes", int), ("model", Mapping)):
            if not isinstance(obj.get(key), kind):
                raise PipsegError(
                    f"{source}: key '{key}' is missing or not a {kind.__name__}; re-save the checkpoint with pipseg"
                )
        num_classes = obj["num_classes"]
        classes = obj.get("classes") or generic_class_names(num_classes)
        if not isinstance(classes, list) or len(classes) != num_classes:
            raise PipsegError(
                f"{source}: key 'classes' should list {num_classes} names; re-save the checkpoint with pipseg"
            )
        model = load_weights(build_model(obj["model_name"], num_classes), obj, source=source)
        iteration, origin = obj.get("iteration"), "pipseg"
    else:
        state = strip_module_prefix(obj["model"] if isinstance(obj.get("model"), Mapping) else obj)
        if _AUTHORS_FC8 not in state or state[_AUTHORS_FC8].ndim != 4:
            raise PipsegError(
                f"{source}: neither a pipseg checkpoint ('format': '{CHECKPOINT_FORMAT}') nor the authors' "
                f"DeepLab-LargeFOV state dict (no '{_AUTHORS_FC8}'); pass a checkpoint written by pipseg train"
            )
        num_classes = int(state[_AUTHORS_FC8].shape[0])
        model = load_weights(build_model("vgg16_largefov", num_classes), state, source=source)
        classes = (
            list(VOC_CLASSES)
            if num_classes == len(VOC_CLASSES)
            else generic_class_names(num_classes)
        )
        iteration, origin = None, "authors"
    meta = {
        "model_name": model.name,
        "num_classes": num_classes,
        "classes": [str(c) for c in classes],
        "input_convention": model.input_convention,
        "iteration": iteration,
        "source": origin,
    }
    return model.to(device).eval(), meta
