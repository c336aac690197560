"""Building blocks shared by the encoder and decoder plugins."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ResidualBlock(nn.Module):
    """conv 3×3, BN, ReLU, conv 3×3, BN, plus the input, ReLU (a ResNet basic block at constant width)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, features: Tensor) -> Tensor:
        return F.relu_(features + self.body(features))


def conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int
) -> list[nn.Module]:
    # No conv bias: the BatchNorm that follows has its own shift. The ReLUs after a BatchNorm work in place
    # (its backward does not read its output): one pass over the activations less, ~5% of the decoder's step.
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
