"""Input conventions: what pixel values a model's weights expect, and the one function that
prepares images for a model everywhere (train, predict, export)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class InputConvention:
    """How uint8 RGB pixels become network input: optional BGR swap, scale, mean, std."""

    name: str
    bgr: bool
    scale: float  # divide 0..255 values by this before the mean
    mean: tuple[float, float, float]  # in the channel order the network sees
    std: tuple[float, float, float]

    def as_dict(self) -> dict[str, object]:
        """Plain-types form, stored in checkpoints."""
        return {"name": self.name, "bgr": self.bgr, "scale": self.scale,
                "mean": list(self.mean), "std": list(self.std)}  # fmt: skip


CAFFE_BGR = InputConvention(
    name="caffe_bgr", bgr=True, scale=1.0, mean=(104.008, 116.669, 122.675), std=(1.0, 1.0, 1.0)
)
TORCHVISION_RGB = InputConvention(
    name="torchvision_rgb",
    bgr=False,
    scale=255.0,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)
CONVENTIONS: dict[str, InputConvention] = {c.name: c for c in (CAFFE_BGR, TORCHVISION_RGB)}


def get_convention(name: str) -> InputConvention:
    """Look up a convention by name."""
    if name not in CONVENTIONS:
        raise KeyError(f"unknown input convention '{name}' (known: {', '.join(CONVENTIONS)})")
    return CONVENTIONS[name]


def prepare_images(images: torch.Tensor, convention: InputConvention) -> torch.Tensor:
    """Turn RGB images ``[B, 3, H, W]`` with values 0..255 (uint8 or float) into network input.

    Traceable (no data-dependent Python), so export bakes the same arithmetic into the graph.
    Padding with the convention's mean colour before this call gives exact zeros after it.
    """
    x = images.float()
    if convention.bgr:
        x = x.flip(1)
    # Python-scalar arithmetic per channel: no host-to-device copy of constants on every call.
    channels = [
        (x[:, c] / convention.scale - convention.mean[c]) / convention.std[c] for c in range(3)
    ]
    return torch.stack(channels, dim=1)


def mean_rgb255(convention: InputConvention) -> tuple[float, float, float]:
    """The convention's mean colour as RGB on the 0..255 scale (the padding colour)."""
    mean = tuple(m * convention.scale for m in convention.mean)
    return tuple(reversed(mean)) if convention.bgr else mean  # type: ignore[return-value]
