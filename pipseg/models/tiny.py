"""TinyDeepLab: a small output-stride-8 network for the demo and the tests.

Three stride-2 stages (conv-BN-ReLU), two dilated context convolutions and a 1x1 classifier.
It trains from scratch on a 2-core CPU in minutes at crops of about 96-129 pixels. It has no
pretrained weights and expects the torchvision RGB input convention.

Output size: every stride-2 conv is 3x3 with padding 1, so each stage maps H to ceil(H / 2) and
the logits are ``ceil(H / 8) x ceil(W / 8)`` (321 -> 41, 113 -> 15).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from pipseg.models.convention import TORCHVISION_RGB, InputConvention

WIDTHS = (32, 64, 96)
CONTEXT_DILATIONS = (2, 4)


def conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """3x3 conv (padding = dilation, so stride 1 keeps the size) + BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyDeepLab(nn.Module):
    """Small DeepLab-style segmenter, output stride 8.

    Args:
        num_classes: number of output channels (classes including background).
    """

    name = "tiny_deeplab"
    output_stride = 8

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_convention: InputConvention = TORCHVISION_RGB
        w1, w2, w3 = WIDTHS
        self.stem = nn.Sequential(conv_bn_relu(3, w1, stride=2), conv_bn_relu(w1, w1))
        self.stage2 = nn.Sequential(conv_bn_relu(w1, w2, stride=2), conv_bn_relu(w2, w2))
        self.stage3 = nn.Sequential(conv_bn_relu(w2, w3, stride=2), conv_bn_relu(w3, w3))
        self.context = nn.Sequential(*(conv_bn_relu(w3, w3, dilation=d) for d in CONTEXT_DILATIONS))
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(w3, num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes, ceil(H/8), ceil(W/8)]`` from prepared input ``[B, 3, H, W]``."""
        x = self.stage3(self.stage2(self.stem(x)))
        return self.classifier(self.dropout(self.context(x)))

    def classifier_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the final 1x1 classifier (the lr-multiplier group)."""
        return (p for p in self.classifier.parameters() if p.requires_grad)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Every other trainable parameter."""
        head = {id(p) for p in self.classifier.parameters()}
        return (p for p in self.parameters() if p.requires_grad and id(p) not in head)


def tiny_deeplab(num_classes: int) -> TinyDeepLab:
    """Build TinyDeepLab (random init; there are no pretrained weights)."""
    return TinyDeepLab(num_classes)
