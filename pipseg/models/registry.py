"""Models by name: builder, default input convention and ImageNet weights of each.

This is the one table of weight identity: which torchvision file initialises each model, which
`pipseg download` name fetches it, how its keys map onto ours and which of our keys it leaves
alone. The model files hold architectures and key filters only; they never see a file name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from pipseg.errors import PipsegError
from pipseg.models import resnet, tiny, vgg
from pipseg.models.convention import CAFFE_BGR, TORCHVISION_RGB, InputConvention

StateFilter = Callable[[Mapping[str, torch.Tensor], str], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class ImagenetWeights:
    """torchvision's ImageNet weight file of one model, and how it maps onto the model."""

    file: str  # torchvision's file name; its 8 hex digits begin the file's SHA-256
    download: str  # the `pipseg download` name that fetches it
    convert: StateFilter  # (state, source) -> our keys
    skip: tuple[str, ...] = ()  # our key prefixes the file does not cover (the new classifier)


@dataclass(frozen=True)
class InitFile:
    """A named start file that pipseg cannot download (it sits behind a browser link): the
    ``model.init`` value that reads it from ``model.weights_dir``, where to get it, and the input
    convention its weights expect. Its keys are the model's own (plain state dict, optional
    ``module.`` prefix); its classifier loads when its shape fits the run."""

    init: str  # the model.init value
    file: str  # the file name to save it under in model.weights_dir
    url: str  # the page to download it from in a browser
    project: str
    convention: InputConvention


# The DeepLab-LargeFOV init of the DeepLab-V1-PyTorch project (Caffe DeepLab init converted;
# keys features.0 ... features.38, fc8 with 21 outputs), the published PIP run's start
# (docs/METHOD.md section 5).
DEEPLAB_INIT = InitFile(
    init="deeplab-init",
    file="deeplab_largeFOV.pth",
    url="https://github.com/wangleihitcs/DeepLab-V1-PyTorch/blob/master/data/deeplab_largeFOV.pth",
    project="DeepLab-V1-PyTorch",
    convention=CAFFE_BGR,
)


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one architecture."""

    builder: Callable[[int], nn.Module]
    convention: InputConvention  # of a freshly built model
    imagenet: ImagenetWeights | None = None
    init_files: tuple[InitFile, ...] = ()  # named start files (model.init: <InitFile.init>)


MODELS: dict[str, ModelSpec] = {
    "vgg16_largefov": ModelSpec(
        vgg.vgg16_largefov, TORCHVISION_RGB,
        ImagenetWeights("vgg16-397923af.pth", "vgg16", vgg.convert_torchvision_vgg16,
                        (f"features.{vgg.FC8_INDEX}.",)),
        (DEEPLAB_INIT,),
    ),
    "deeplabv2_resnet101": ModelSpec(
        resnet.deeplabv2_resnet101, TORCHVISION_RGB,
        ImagenetWeights("resnet101-63fe2227.pth", "resnet101", resnet.convert_torchvision_resnet101,
                        ("aspp.",)),
    ),
    "tiny_deeplab": ModelSpec(tiny.tiny_deeplab, TORCHVISION_RGB),
}  # fmt: skip
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)
INIT_FILES: tuple[InitFile, ...] = (DEEPLAB_INIT,)  # every named start file (for `pipseg download --list`)


def get_spec(name: str) -> ModelSpec:
    """The registry entry of ``name``; PipsegError listing the known names otherwise."""
    if name not in MODELS:
        raise PipsegError(
            f"model.name: unknown model '{name}'; use one of {', '.join(MODEL_NAMES)}"
        )
    return MODELS[name]


def build_model(name: str, num_classes: int) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs and random weights.

    Args:
        name: one of ``MODEL_NAMES``.
        num_classes: number of classes including background (>= 2).

    Returns:
        The model, with ``input_convention`` set to the registry's default for it.
    """
    spec = get_spec(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise PipsegError(
            f"num_classes: got {num_classes!r}; need an integer >= 2 (background included)"
        )
    model = spec.builder(num_classes)
    model.input_convention = spec.convention
    return model


def imagenet_weights(name: str) -> ImagenetWeights | None:
    """The ImageNet weight record of model ``name`` (None: it has none)."""
    return get_spec(name).imagenet


def imagenet_weight_file(name: str) -> str | None:
    """torchvision's ImageNet weight file name for model ``name`` (None: it has none)."""
    weights = get_spec(name).imagenet
    return weights.file if weights else None


def init_file(name: str, init: str) -> InitFile | None:
    """The named start file ``init`` (a ``model.init`` value) of model ``name``; None when
    ``init`` names none of the registry's files."""
    known = next((f for f in INIT_FILES if f.init == init), None)
    if known is None:
        return None
    spec = get_spec(name)
    if known not in spec.init_files:
        models = [m for m, s in MODELS.items() if known in s.init_files]
        raise PipsegError(
            f"model.init: {init} is the start file of {', '.join(models)} ({known.file}), not of "
            f"{name}; use imagenet, none or a weight file (or set model.name)"
        )
    return known
