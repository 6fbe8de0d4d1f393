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
from pipseg.models.convention import TORCHVISION_RGB, InputConvention

StateFilter = Callable[[Mapping[str, torch.Tensor], str], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class ImagenetWeights:
    """torchvision's ImageNet weight file of one model, and how it maps onto the model."""

    file: str  # torchvision's file name; its 8 hex digits begin the file's SHA-256
    download: str  # the `pipseg download` name that fetches it
    convert: StateFilter  # (state, source) -> our keys
    skip: tuple[str, ...] = ()  # our key prefixes the file does not cover (the new classifier)


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one architecture."""

    builder: Callable[[int], nn.Module]
    convention: InputConvention  # of a freshly built model
    imagenet: ImagenetWeights | None = None


MODELS: dict[str, ModelSpec] = {
    "vgg16_largefov": ModelSpec(
        vgg.vgg16_largefov, TORCHVISION_RGB,
        ImagenetWeights("vgg16-397923af.pth", "vgg16", vgg.convert_torchvision_vgg16,
                        (f"features.{vgg.FC8_INDEX}.",)),
    ),
    "deeplabv2_resnet101": ModelSpec(
        resnet.deeplabv2_resnet101, TORCHVISION_RGB,
        ImagenetWeights("resnet101-63fe2227.pth", "resnet101", resnet.convert_torchvision_resnet101,
                        ("aspp.",)),
    ),
    "tiny_deeplab": ModelSpec(tiny.tiny_deeplab, TORCHVISION_RGB),
}  # fmt: skip
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


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
