"""DeepLab-v2 on ResNet-101: dilated layer3/layer4 (output stride 8), ASPP with dilations
6, 12, 18, 24 whose outputs are summed, BatchNorm frozen (METHOD.md section 5).

The backbone's modules keep torchvision's names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``)
so torchvision's ResNet-101 state dict loads with only ``fc.*`` dropped.

Output size: conv1 (7x7 s2 p3), the max-pool (3x3 s2 p1) and layer2's stride-2 3x3 conv (p1)
each map H to ceil(H / 2); layer3 and layer4 are dilated instead of strided. Logits are
``ceil(H / 8) x ceil(W / 8)``: 321 -> 41, 129 -> 17.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn
from torchvision.models import resnet101

from pipseg.models.convention import TORCHVISION_RGB, InputConvention

ASPP_DILATIONS = (6, 12, 18, 24)


class ASPP(nn.Module):
    """Parallel 3x3 convolutions at several dilations, outputs summed (DeepLab-v2)."""

    def __init__(
        self, cin: int, num_classes: int, dilations: tuple[int, ...] = ASPP_DILATIONS
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(cin, num_classes, 3, padding=d, dilation=d) for d in dilations
        )
        for conv in self.convs:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([conv(x) for conv in self.convs]).sum(0)


class DeepLabV2ResNet101(nn.Module):
    """DeepLab-v2 (ResNet-101 + ASPP), output stride 8, BatchNorm frozen in eval mode.

    Args:
        num_classes: number of output channels (classes including background).
    """

    name = "deeplabv2_resnet101"
    output_stride = 8

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_convention: InputConvention = TORCHVISION_RGB
        net = resnet101(weights=None, replace_stride_with_dilation=[False, True, True])
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.aspp = ASPP(2048, num_classes)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> DeepLabV2ResNet101:
        """Set train/eval mode; BatchNorm layers stay in eval mode (frozen statistics)."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes, ceil(H/8), ceil(W/8)]`` from prepared input ``[B, 3, H, W]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.aspp(x)

    def classifier_parameters(self) -> Iterator[nn.Parameter]:
        """The ASPP convolutions (the lr-multiplier group)."""
        return (p for p in self.aspp.parameters() if p.requires_grad)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Trainable backbone parameters (frozen BatchNorm affine parameters excluded)."""
        head = {id(p) for p in self.aspp.parameters()}
        return (p for p in self.parameters() if p.requires_grad and id(p) not in head)


def convert_torchvision_resnet101(
    state: Mapping[str, torch.Tensor], source: str = "state dict"
) -> dict[str, torch.Tensor]:
    """torchvision ResNet-101 state dict -> our backbone keys: drop the ImageNet ``fc``.

    BatchNorm's ``num_batches_tracked`` is dropped too (older files lack it; frozen BN never
    uses it), so the result must cover every other backbone key.
    """
    return {
        k: v
        for k, v in state.items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }


def deeplabv2_resnet101(num_classes: int) -> DeepLabV2ResNet101:
    """Build DeepLab-v2 ResNet-101 with random weights (ASPP ~ N(0, 0.01), bias 0)."""
    return DeepLabV2ResNet101(num_classes)
