"""Encoders q(z|x) (spec §5): images (B, C, H, W) in [0, 1] → per-step posterior logits.

Two built-ins:
- `conv`: the paper's 28×28 encoder — stride-2 conv layers, flatten, one linear layer, then an MLP head
  per variable that predicts all T steps at once. Any image size works (the flattened size is computed).
- `conv_spatial`: fully convolutional (residual blocks) down to the n×n grid of cells, 1×1-conv heads, so
  the posterior of step t is read at the grid position of cell t (raster order). For colour data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from npdraw_core.config import check_at_least
from npdraw_core.geometry import ModelShape
from npdraw_core.hookspecs import hookimpl
from npdraw_core.interfaces import Encoder, StepLogits
from npdraw_plugins.layers import ResidualBlock, conv_bn_relu


def check_images(images: Tensor, shape: ModelShape) -> None:
    expected = (shape.channels, shape.image_size, shape.image_size)
    if images.dim() != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"the encoder expects images of shape (B, {', '.join(map(str, expected))}) (the dataset's full-size "
            f"images, not canvas-size copies), got {tuple(images.shape)}"
        )


@dataclass(kw_only=True)
class ConvEncoderConfig:
    channels: int = 128  # width of every conv layer
    num_downsamplings: int = 4  # conv 3×3 stride 2 layers: 28 → 14 → 7 → 4 → 2
    hidden_size: int = 128  # the linear layer after flattening (spec: 2·2·128 = 512 → 128)
    head_hidden_size: int = 128  # hidden width of each MLP head

    def __post_init__(self) -> None:
        check_at_least(self, 1, "channels", "num_downsamplings", "hidden_size", "head_hidden_size")


class ConvEncoder(Encoder):
    def __init__(self, config: ConvEncoderConfig, *, shape: ModelShape):
        super().__init__()
        self.shape = shape
        layers: list[nn.Module] = []
        in_channels, size = shape.channels, shape.image_size
        for _ in range(config.num_downsamplings):
            layers += conv_bn_relu(in_channels, config.channels, 3, 2, 1)
            in_channels, size = config.channels, (size + 1) // 2  # 3×3, stride 2, padding 1: ceil(size / 2)
        self.features = nn.Sequential(
            *layers, nn.Flatten(), nn.Linear(config.channels * size * size, config.hidden_size), nn.ReLU()
        )
        steps, bank_size = shape.num_steps, shape.bank_size

        def head(outputs: int) -> nn.Module:
            return nn.Sequential(
                nn.Linear(config.hidden_size, config.head_hidden_size),
                nn.ReLU(),
                nn.Linear(config.head_hidden_size, outputs),
            )

        self.what_head = head(steps * bank_size)
        self.where_head = head(steps * steps)
        self.whether_head = head(steps)
        self.to(memory_format=torch.channels_last)  # faster convs on a CPU, as in the conv decoder

    def forward(self, images: Tensor) -> StepLogits:
        check_images(images, self.shape)
        features = self.features(images)
        batch, steps = images.shape[0], self.shape.num_steps
        return StepLogits(
            whether=self.whether_head(features),
            what=self.what_head(features).view(batch, steps, self.shape.bank_size),
            where=self.where_head(features).view(batch, steps, steps),
        )


@dataclass(kw_only=True)
class SpatialConvEncoderConfig:
    channels: int = 128  # width of every layer
    blocks_per_scale: int = 1  # residual blocks after each stride-2 downsampling
    final_blocks: int = 2  # residual blocks on the n×n map of cells
    head_hidden_size: int = 128  # hidden width of the per-position (1×1 conv) MLP heads

    def __post_init__(self) -> None:
        check_at_least(self, 1, "channels", "head_hidden_size")
        check_at_least(self, 0, "blocks_per_scale", "final_blocks")


def num_downsamplings(image_size: int, cells_per_side: int) -> int:
    """How many stride-2 steps (ceil halving) keep the map at least `cells_per_side` wide."""
    if image_size < cells_per_side:
        raise ValueError(
            f"image_size {image_size} is smaller than the {cells_per_side}×{cells_per_side} grid of cells"
        )
    count, size = 0, image_size
    while (size + 1) // 2 >= cells_per_side:
        count, size = count + 1, (size + 1) // 2
    return count


class SpatialConvEncoder(Encoder):
    """Halves the image with stride-2 convs while the map stays at least n wide (32 → 16 → 8 for n = 8;
    64 → … → 8 for CelebA). When the last map is not exactly n×n (28×28 with patch 5: 7×7 for a 6×6 grid),
    adaptive average pooling resamples it to n×n, so grid position t still covers roughly cell t's area.

    The 1×1 heads are translation-equivariant, but the where posterior of step t must know t (the parse
    draws step t at cell t); a learned per-position embedding added to the n×n map tells the heads where
    they are.
    """

    def __init__(self, config: SpatialConvEncoderConfig, *, shape: ModelShape):
        super().__init__()
        self.shape = shape
        cells = shape.grid.cells_per_side
        layers: list[nn.Module] = []
        in_channels = shape.channels
        for _ in range(num_downsamplings(shape.image_size, cells)):
            layers += conv_bn_relu(in_channels, config.channels, 3, 2, 1)
            layers += [ResidualBlock(config.channels) for _ in range(config.blocks_per_scale)]
            in_channels = config.channels
        if in_channels != config.channels:  # the image is already n wide: no downsampling, one plain conv
            layers += conv_bn_relu(in_channels, config.channels, 3, 1, 1)
        layers.append(nn.AdaptiveAvgPool2d(cells))  # identity when the map is already n×n
        layers += [ResidualBlock(config.channels) for _ in range(config.final_blocks)]
        self.features = nn.Sequential(*layers)
        self.position_embedding = nn.Parameter(torch.randn(1, config.channels, cells, cells) * 0.02)

        def head(outputs: int) -> nn.Module:
            return nn.Sequential(
                nn.Conv2d(config.channels, config.head_hidden_size, 1),
                nn.ReLU(),
                nn.Conv2d(config.head_hidden_size, outputs, 1),
            )

        self.what_head = head(shape.bank_size)
        self.where_head = head(shape.num_steps)
        self.whether_head = head(1)

    def forward(self, images: Tensor) -> StepLogits:
        check_images(images, self.shape)
        features = self.features(images) + self.position_embedding

        def per_step(head: nn.Module) -> Tensor:  # (B, D, n, n) → (B, T, D), raster order like the grid
            return head(features).flatten(2).transpose(1, 2)

        return StepLogits(
            whether=per_step(self.whether_head).squeeze(-1),
            what=per_step(self.what_head),
            where=per_step(self.where_head),
        )


@hookimpl
def npdraw_register_encoders(register):
    register("conv", ConvEncoder, ConvEncoderConfig)
    register("conv_spatial", SpatialConvEncoder, SpatialConvEncoderConfig)
