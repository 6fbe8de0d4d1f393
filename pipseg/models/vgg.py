"""DeepLab-LargeFOV on VGG-16 (METHOD.md section 5), laid out exactly like the authors' checkpoints.

The whole network is one ``nn.Sequential`` named ``features`` so that our state-dict keys equal
the authors' (``features.0`` ... ``features.38``)::

    index  layer                          index  layer
     0  2  conv1_1, conv1_2 (64)           24 26 28  conv5_1..3 (512, dilation 2)
     4     maxpool 3x3 s2 p1               30     maxpool 3x3 s1 p1
     5  7  conv2_1, conv2_2 (128)          31     avgpool 3x3 s1 p1
     9     maxpool 3x3 s2 p1               32     fc6 conv3x3 1024, dilation 12
    10 12 14  conv3_1..3 (256)             33 34  ReLU, Dropout2d(0.5)
    16     maxpool 3x3 s2 p1               35     fc7 conv1x1 1024
    17 19 21  conv4_1..3 (512)             36 37  ReLU, Dropout2d(0.5)
    23     maxpool 3x3 s1 p1               38     fc8 conv1x1 num_classes

(each conv is followed by its ReLU at the next index). Conv indices 0..28 equal torchvision's
``vgg16().features``, which is what makes the ImageNet copy a direct one.

Output size: the three 3x3/s2/p1 max-pools each map H to floor((H - 1) / 2) + 1 = ceil(H / 2);
everything else keeps the size. Logits are ``ceil(H / 8) x ceil(W / 8)``: 321 -> 41, 513 -> 65.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn

from pipseg.errors import PipsegError
from pipseg.models.convention import TORCHVISION_RGB, InputConvention

# (out channels, number of convs, dilation, pool stride) per VGG block.
BLOCKS = ((64, 2, 1, 2), (128, 2, 1, 2), (256, 3, 1, 2), (512, 3, 1, 1), (512, 3, 2, 1))
FC6_INDEX, FC7_INDEX, FC8_INDEX = 32, 35, 38
FC_WIDTH = 1024
FC6_DILATION = 12


def make_features(num_classes: int) -> nn.Sequential:
    """The 39-layer ``features`` stack of DeepLab-LargeFOV (fc8 at index 38)."""
    layers: list[nn.Module] = []
    cin = 3
    for cout, n_convs, dilation, pool_stride in BLOCKS:
        for _ in range(n_convs):
            layers += [
                nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation),
                nn.ReLU(inplace=True),
            ]
            cin = cout
        layers.append(nn.MaxPool2d(3, stride=pool_stride, padding=1))
    layers.append(nn.AvgPool2d(3, stride=1, padding=1))
    layers += [
        nn.Conv2d(cin, FC_WIDTH, 3, padding=FC6_DILATION, dilation=FC6_DILATION),  # fc6
        nn.ReLU(inplace=True),
        nn.Dropout2d(0.5),
        nn.Conv2d(FC_WIDTH, FC_WIDTH, 1),  # fc7
        nn.ReLU(inplace=True),
        nn.Dropout2d(0.5),
        nn.Conv2d(FC_WIDTH, num_classes, 1),  # fc8
    ]
    return nn.Sequential(*layers)


class VGG16LargeFOV(nn.Module):
    """DeepLab-LargeFOV (VGG-16), output stride 8.

    Args:
        num_classes: number of output channels (classes including background).
    """

    name = "vgg16_largefov"
    output_stride = 8

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_convention: InputConvention = TORCHVISION_RGB
        self.features = make_features(num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        fc8 = self.features[FC8_INDEX]
        nn.init.normal_(fc8.weight, std=0.01)
        nn.init.zeros_(fc8.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes, ceil(H/8), ceil(W/8)]`` from prepared input ``[B, 3, H, W]``."""
        return self.features(x)

    def classifier_parameters(self) -> Iterator[nn.Parameter]:
        """fc8's weight and bias (the lr-multiplier group)."""
        return (p for p in self.features[FC8_INDEX].parameters() if p.requires_grad)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """conv1..fc7."""
        head = {id(p) for p in self.features[FC8_INDEX].parameters()}
        return (p for p in self.parameters() if p.requires_grad and id(p) not in head)


def convert_torchvision_vgg16(
    state: Mapping[str, torch.Tensor], source: str = "state dict"
) -> dict[str, torch.Tensor]:
    """Map a torchvision VGG-16 state dict onto LargeFOV's keys (everything but fc8).

    conv1..conv5 copy as they are; fc6 is classifier.0 reshaped to 4096x512x7x7, keeping every
    4th filter and the taps 0, 3, 6 in both directions; fc7 is classifier.3 keeping every 4th
    output and every 4th input. classifier.6 (the ImageNet classifier) is dropped.
    """

    def take(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        if key not in state:
            raise PipsegError(
                f"{source}: missing key '{key}'; expected torchvision's ImageNet VGG-16 weights"
            )
        t = state[key]
        if tuple(t.shape) != shape:
            raise PipsegError(
                f"{source}: key '{key}' has shape {tuple(t.shape)}, expected {shape}; is this torchvision's ImageNet VGG-16?"
            )
        return t

    out: dict[str, torch.Tensor] = {}
    cin, index = 3, 0
    for cout, n_convs, _, _ in BLOCKS:
        for _ in range(n_convs):
            out[f"features.{index}.weight"] = take(f"features.{index}.weight", (cout, cin, 3, 3))
            out[f"features.{index}.bias"] = take(f"features.{index}.bias", (cout,))
            cin, index = cout, index + 2  # conv, ReLU
        index += 1  # max-pool
    fc6 = take("classifier.0.weight", (4096, 512 * 7 * 7)).reshape(4096, 512, 7, 7)
    out[f"features.{FC6_INDEX}.weight"] = fc6[::4, :, ::3, ::3].contiguous()
    out[f"features.{FC6_INDEX}.bias"] = take("classifier.0.bias", (4096,))[::4].contiguous()
    fc7 = take("classifier.3.weight", (4096, 4096))
    out[f"features.{FC7_INDEX}.weight"] = (
        fc7[::4, ::4].reshape(FC_WIDTH, FC_WIDTH, 1, 1).contiguous()
    )
    out[f"features.{FC7_INDEX}.bias"] = take("classifier.3.bias", (4096,))[::4].contiguous()
    return out


def vgg16_largefov(num_classes: int) -> VGG16LargeFOV:
    """Build DeepLab-LargeFOV with random weights (fc8 ~ N(0, 0.01), bias 0)."""
    return VGG16LargeFOV(num_classes)
