"""Pre-activation ResNet v2: the paper's parameter count, the block's maths, initialisation, precision and layout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.resnet_v2 import PreActBottleneck, PreActResNet


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def bn_count(module: nn.Module) -> int:
    return sum(count(m) for m in module.modules() if isinstance(m, nn.BatchNorm2d))


def preact_bn_params(blocks, widths, stem_width) -> int:
    """Affine BN parameters of a pre-activation bottleneck ResNet, from the architecture alone: every block
    normalises its input and its two inner activations; one final BN on the last stage's output."""
    total, channels = 0, stem_width
    for num_blocks, width in zip(blocks, widths):
        for _ in range(num_blocks):
            total += 2 * (channels + width + width)
            channels = 4 * width
    return total + 2 * channels


def preact_param_count(blocks, widths, stem_width, num_classes) -> int:
    """All parameters, from the architecture alone (conv weights without bias, BN gamma/beta, FC with bias)."""
    total, channels = 3 * 7 * 7 * stem_width, stem_width
    for stage, (num_blocks, width) in enumerate(zip(blocks, widths)):
        for block in range(num_blocks):
            total += channels * width + 9 * width * width + width * 4 * width
            if block == 0 and (stage > 0 or channels != 4 * width):
                total += channels * 4 * width  # 1x1 projection shortcut
            channels = 4 * width
    return total + preact_bn_params(blocks, widths, stem_width) + channels * num_classes + num_classes


def test_resnet50_v2_has_the_papers_25_55m_parameters_on_meta():
    with torch.device("meta"):
        model = PreActResNet()
    expected = preact_param_count((3, 4, 6, 3), (64, 128, 256, 512), 64, 1000)
    assert count(model) == expected == 25_549_352
    assert round(expected / 1e6, 2) == 25.55  # hyperparameters.md: "25.55M parameters"
    assert all(p.device.type == "meta" for p in model.parameters())


def test_resnet50_v2_differs_from_torchvision_resnet50_only_in_batchnorm():
    """torchvision's v1.5 ResNet-50 has the same convolutions (stride in the 3x3) and classifier; only where the
    BNs sit differs (after each conv and projection, and after the stem, instead of before each conv + one final)."""
    from torchvision.models import resnet50

    with torch.device("meta"):
        ours, theirs = PreActResNet(), resnet50()
    assert count(ours) - bn_count(ours) == count(theirs) - bn_count(theirs)
    assert bn_count(ours) == preact_bn_params((3, 4, 6, 3), (64, 128, 256, 512), 64)
    assert count(theirs) - count(ours) == 7_680  # 25,557,032 - 25,549,352


def test_resnet50_v2_layout_on_meta():
    with torch.device("meta"):
        model = PreActResNet()
        features = model.stages(model.stem(torch.empty(2, 3, 224, 224)))
        logits = model(torch.empty(2, 3, 224, 224))
    assert features.shape == (2, 2048, 7, 7)
    assert logits.shape == (2, 1000)
    strides = [(block.conv1.stride, block.conv2.stride) for stage in model.stages for block in stage[:1]]
    assert strides == [((1, 1), (1, 1))] + [((1, 1), (2, 2))] * 3  # stride in the 3x3 convolution
    assert [len(stage) for stage in model.stages] == [3, 4, 6, 3]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.stem)  # the first block pre-activates


def test_tiny_variant_count_matches_the_architecture():
    model = PreActResNet(num_classes=4, blocks=[1, 1, 1, 1], widths=[4, 8, 16, 32], stem_width=8)
    assert count(model) == preact_param_count((1, 1, 1, 1), (4, 8, 16, 32), 8, 4) == 33_708


def reference_block(block: PreActBottleneck, x: torch.Tensor) -> torch.Tensor:
    """He et al. 2016b, Fig. 4e, written out with functional ops (BN in eval mode)."""

    def bn_relu(bn: nn.BatchNorm2d, t: torch.Tensor) -> torch.Tensor:
        return F.relu(F.batch_norm(t, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))

    pre = bn_relu(block.bn1, x)
    shortcut = x if block.shortcut is None else F.conv2d(pre, block.shortcut.weight, stride=block.conv2.stride)
    out = F.conv2d(pre, block.conv1.weight)
    out = F.conv2d(bn_relu(block.bn2, out), block.conv2.weight, stride=block.conv2.stride, padding=1)
    out = F.conv2d(bn_relu(block.bn3, out), block.conv3.weight)
    return out + shortcut


@pytest.mark.parametrize(("in_channels", "stride"), [(16, 1), (8, 2)])
def test_block_matches_the_pre_activation_formula(in_channels, stride):
    torch.manual_seed(0)
    block = PreActBottleneck(in_channels, width=4, stride=stride)
    assert (block.shortcut is None) == (in_channels == 16 and stride == 1)
    for bn in (block.bn1, block.bn2, block.bn3):  # non-trivial statistics and affine parameters
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.5, 0.5)
    block.eval()
    x = torch.randn(2, in_channels, 9, 9)
    torch.testing.assert_close(block(x), reference_block(block, x), rtol=0, atol=1e-6)


def test_he_initialisation():
    torch.manual_seed(0)
    model = PreActResNet()
    conv = model.stages[3][0].conv2  # 512 -> 512, 3x3: 2.4M weights, so the sample std is tight
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.01)
    assert conv.weight.mean().abs().item() < 1e-3
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))
    assert all(block.conv3.weight.abs().sum() > 0 for stage in model.stages for block in stage)


def test_zero_init_residual_makes_identity_blocks_the_identity():
    model = PreActResNet(num_classes=3, blocks=[2, 1], widths=[4, 8], stem_width=16, zero_init_residual=True)
    identity_block = model.stages[0][1]
    assert identity_block.shortcut is None
    x = torch.randn(2, 16, 5, 5)
    torch.testing.assert_close(identity_block(x), x, rtol=0, atol=0)


def test_channels_last_and_bf16_autocast_match_fp32():
    torch.manual_seed(0)
    model = PreActResNet(num_classes=4, blocks=[1, 1, 1, 1], widths=[4, 8, 16, 32], stem_width=8)
    images = torch.randn(3, 3, 32, 32)
    reference = model(images)
    model_cl = model.to(memory_format=torch.channels_last)
    images_cl = images.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model_cl(images_cl), reference, rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model_cl(images_cl)
    assert mixed.dtype == torch.bfloat16
    torch.testing.assert_close(mixed.float(), reference, rtol=0.1, atol=0.1)
    mixed.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs",
    [{"blocks": [3, 4], "widths": [64]}, {"blocks": [], "widths": []}, {"blocks": [0, 1], "widths": [4, 8]},
     {"num_classes": 0}],
)
def test_bad_architecture_is_a_clear_error(kwargs):
    with pytest.raises(ValueError, match="blocks"):
        PreActResNet(**kwargs)
