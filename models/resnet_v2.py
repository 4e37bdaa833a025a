"""Pre-activation ResNet ("ResNet v2", He et al. 2016, "Identity Mappings in Deep Residual Networks").

The ResNet-50 v2 the paper trained (Section 5.1, through OpenSeq2Seq's image2label config, which used TensorFlow's
official ResNet v2): bottleneck blocks [3, 4, 6, 3] with the stride in the 3x3 convolution, a 7x7/2 stem
convolution and a 3x3/2 max-pool (no normalisation after the stem: the first block pre-activates), a final
BN + ReLU after the last block, global average pooling and a 1000-way linear classifier. 25,549,352 parameters.

Differences from torchvision's (post-activation, v1.5) `resnet50`, which has 25,557,032:
- every block normalises its *input* (BN over the block's in-channels) instead of its output (BN over 4x width);
- projection shortcuts are a bare 1x1 convolution applied to the pre-activated input (no BN);
- no BN after the stem convolution, and one BN + ReLU after the last block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: Bottleneck blocks per stage and stage widths (the 3x3 conv's channels; a block outputs 4x that).
RESNET50_BLOCKS = (3, 4, 6, 3)
RESNET50_WIDTHS = (64, 128, 256, 512)
BOTTLENECK_EXPANSION = 4


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3 (stride here), BN-ReLU-conv1x1, plus the shortcut.

    The shortcut is the identity, or, when the shape changes, a 1x1 strided convolution of the *pre-activated*
    input (He et al. 2016b, Fig. 4e; TensorFlow's `_bottleneck_block_v2`), so both paths see normalised features.
    """

    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        out_channels = width * BOTTLENECK_EXPANSION
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)
            if needs_projection
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preactivated = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(preactivated)
        out = self.conv1(preactivated)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """A pre-activation bottleneck ResNet; `PreActResNet()` is the paper's ResNet-50 v2.

    Args:
        num_classes: outputs of the final linear layer.
        blocks: bottleneck blocks per stage.
        widths: bottleneck width per stage (a stage outputs `4 * width` channels); stages after the first
            halve the resolution in their first block.
        stem_width: output channels of the 7x7/2 stem convolution.
        zero_init_residual: start the last BN of every residual branch at zero, so each block begins as the
            identity (Goyal et al. 2017). Off by default: the paper used no such tricks.
    """

    # The units a sharded run shards one by one (FSDP2's fully_shard): a residual bottleneck.
    block_types = (PreActBottleneck,)

    def __init__(
        self,
        num_classes: int = 1000,
        blocks: Sequence[int] = RESNET50_BLOCKS,
        widths: Sequence[int] = RESNET50_WIDTHS,
        stem_width: int = 64,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        blocks, widths = tuple(blocks), tuple(widths)
        if len(blocks) != len(widths) or not blocks:
            raise ValueError(f"blocks {blocks} and widths {widths} must be non-empty and of the same length")
        if min(blocks) < 1 or min(widths) < 1 or stem_width < 1 or num_classes < 1:
            raise ValueError(
                f"blocks {blocks}, widths {widths}, stem_width {stem_width} and num_classes {num_classes} "
                "must all be positive"
            )
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_width, kernel_size=7, stride=2, padding=3, bias=False),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        stages = []
        in_channels = stem_width
        for stage_index, (num_blocks, width) in enumerate(zip(blocks, widths)):
            first_stride = 1 if stage_index == 0 else 2
            stage = []
            for block_index in range(num_blocks):
                stage.append(PreActBottleneck(in_channels, width, first_stride if block_index == 0 else 1))
                in_channels = width * BOTTLENECK_EXPANSION
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        # Pre-activation blocks leave their output un-normalised: the head normalises it once.
        self.final_bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        self.reset_parameters(zero_init_residual)

    @torch.no_grad()
    def reset_parameters(self, zero_init_residual: bool = False) -> None:
        """He et al. (2015) initialisation: kaiming-normal (fan-out, ReLU) convs, BN weight 1 and bias 0.

        The classifier keeps `nn.Linear`'s default init, as torchvision's ResNets do.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            # In a pre-activation block the residual branch ends in conv3, not a BN: zeroing conv3 is the
            # equivalent of zeroing the last BN's gamma in a post-activation block.
            for module in self.modules():
                if isinstance(module, PreActBottleneck):
                    nn.init.zeros_(module.conv3.weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.stages(self.stem(images))
        features = self.relu(self.final_bn(features))
        return self.fc(torch.flatten(self.pool(features), 1))
