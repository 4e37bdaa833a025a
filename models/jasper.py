"""Jasper 10x5 with dense residual ("Jasper DR", Li et al. 2019), the paper's Section 5.2 speech model.

A stack of 1-D convolutions over log-mel features, trained with CTC:

- prologue: one conv (k11, stride 2, 256 channels), halving the frame rate from 100 to 50 per second;
- 10 blocks of 5 sub-blocks each (B1-B10, kernels 11 to 25, 256 to 768 channels, table `JASPER10X5_BLOCKS`);
- epilogue: a k29 conv with dilation 2 (896 channels) and a k1 conv (1024 channels);
- classifier: a 1x1 conv (the only conv with a bias) to 29 classes.

A sub-block is conv (no bias) -> BatchNorm -> ReLU -> dropout. Every block has a residual: a 1x1 conv + BatchNorm
of its input, added to the last sub-block after its BatchNorm and before its ReLU [O]. With the dense residual
(`dense_residual=True`) block i instead receives the sum of i such projections, one of each earlier output: the
prologue's and those of blocks 1..i-1. This reading gives 332,632,349 parameters with the dense residual and
322,286,877 without, the 332.6M and 322.3M of the authors' configs [O][N]; leaving the prologue output out of the
dense sources would give 331.4M, so the prologue output is one of them.

Classes: 28 characters in the order space, a-z, apostrophe, then the CTC blank last: blank = 28 =
`num_classes - 1` (`Jasper.blank`), as in OpenSeq2Seq [O].

Padding. Utterances of a batch have different lengths, and the model gives each one the output it would get alone:
every conv zeroes the padded frames of its input (multiplying by the mask in the input's dtype, so autocast and
torch.compile see plain elementwise ops), and BatchNorm computes its training statistics over the valid frames
only (`MaskedBatchNorm1d`). Padded output frames hold arbitrary values; `out_lengths` says which frames are valid.
The authors' OpenSeq2Seq encoder (`use_conv_mask`) and NeMo [N] mask the convolutions' inputs too but let the
padded frames into BatchNorm's statistics: `bn_include_padding=True` does that (docs/fidelity.md measures both).
Excluding them makes an utterance's result independent of what it is batched with (in eval mode exactly, in
training up to the batch statistics, which are those of the batch's valid frames).

Initialisation (`init`). "authors" [O]: the encoder's convs (prologue, blocks, residual projections, epilogue) drawn
from TensorFlow's `xavier_initializer(uniform=False)`, a normal of std sqrt(1.3 / fan_avg) truncated at two
standard deviations (fan_avg = (fan_in + fan_out) / 2; the 1.3 makes the truncated draw's std about
sqrt(1 / fan_avg)), and the classifier (their CTC decoder's dense layer) from the default, uniform Xavier;
"xavier_uniform": every conv uniform Xavier, NeMo's `init_mode` default [N]. Both give the weights the same
variance; only the shape of the distribution differs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ConvSpec:
    """One layer kind of the network, as the configs list them.

    Args:
        kernel: kernel size (odd: "same" padding of `dilation * (kernel - 1) // 2` keeps the length at stride 1).
        channels: output channels.
        dropout: dropout probability after the ReLU.
        repeat: sub-blocks in a block (prologue and epilogue layers are single convs: 1).
        dilation: dilation of the conv.
        stride: stride of the conv (only the prologue may stride).
    """

    kernel: int
    channels: int
    dropout: float
    repeat: int = 1
    dilation: int = 1
    stride: int = 1


#: [O] jasper10x5_LibriSpeech_nvgrad.py; [N] jasper10x5dr.yaml.
JASPER10X5_PROLOGUE = ConvSpec(kernel=11, channels=256, dropout=0.2, stride=2)
JASPER10X5_BLOCKS = tuple(
    ConvSpec(kernel=kernel, channels=channels, dropout=dropout, repeat=5)
    for kernel, channels, dropout in ((11, 256, 0.2), (13, 384, 0.2), (17, 512, 0.2), (21, 640, 0.3), (25, 768, 0.3))
    for _ in range(2)  # B1-B2, B3-B4, ..., B9-B10
)
JASPER10X5_EPILOGUE = (
    ConvSpec(kernel=29, channels=896, dropout=0.4, dilation=2),
    ConvSpec(kernel=1, channels=1024, dropout=0.4),
)
BATCHNORM_EPS = 1e-3  # [O] TensorFlow's 1e-3, not torch's 1e-5
BATCHNORM_MOMENTUM = 0.1  # [O] decay 0.9 in TensorFlow's convention


INITS = ("authors", "xavier_uniform")


def truncated_normal_xavier_(weight: torch.Tensor) -> torch.Tensor:
    """TensorFlow's `xavier_initializer(uniform=False)` in place: a normal of std sqrt(1.3 / fan_avg) truncated
    at two of its standard deviations, fan_avg the mean of torch's fan_in and fan_out (kernel x channels)."""
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    std = (1.3 / ((fan_in + fan_out) / 2.0)) ** 0.5
    return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


def sequence_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """(B, 1, max_length) bool mask, True on the first `lengths[b]` frames of utterance b."""
    frames = torch.arange(max_length, device=lengths.device)
    return (frames < lengths[:, None]).unsqueeze(1)


class MaskedConv1d(nn.Conv1d):
    """A Conv1d with "same" padding that sees its input with the padded frames zeroed.

    Zeroing the padding makes the frames past an utterance's end look like the conv's own zero padding, so each
    valid output frame is the one the utterance would get alone.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=dilation * (kernel_size - 1) // 2,
            dilation=dilation, bias=bias,
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return super().forward(x * mask.to(x.dtype))

    def output_lengths(self, lengths: torch.Tensor | int) -> torch.Tensor | int:
        """Valid output frames for `lengths` valid input frames: Conv1d's output-size formula."""
        (kernel,), (stride,), (padding,), (dilation,) = self.kernel_size, self.stride, self.padding, self.dilation
        return (lengths + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class MaskedBatchNorm1d(nn.modules.batchnorm._NormBase):
    """BatchNorm1d over (B, C, T) whose training statistics count the valid frames only.

    In training the mean and (biased) variance normalising the batch are those of the valid frames of all
    utterances together, exactly what `nn.BatchNorm1d` computes on those frames laid end to end; the running
    statistics take the same update as torch's (`momentum` weight on the batch's mean and its *unbiased*
    variance, or a cumulative average when `momentum` is None; a batch needs more than one valid frame).
    Statistics are computed in at least float32 whatever the input's dtype, two-pass (the mean, then the mean
    squared deviation) for accuracy. In eval mode every frame is normalised with the running statistics (padded
    frames included: the next conv masks them).

    It derives from `_NormBase` rather than `_BatchNorm` so that `nn.SyncBatchNorm.convert_sync_batchnorm`, which
    knows no mask, leaves it alone (its statistics stay per rank even with `trainer.sync_bn=true`), while the
    optimizer factory still finds it as a normalisation layer (no weight decay on its scale and shift).

    `include_padding=True` counts every frame instead, padded ones included, as `nn.BatchNorm1d` on the padded
    batch does (the authors' and NeMo's encoders).
    """

    def __init__(
        self, num_features: int, eps: float = BATCHNORM_EPS, momentum: float | None = BATCHNORM_MOMENTUM,
        affine: bool = True, track_running_stats: bool = True, include_padding: bool = False,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        #: Count every frame, padded ones included, in the training statistics: `nn.BatchNorm1d`'s (and the
        #: authors') behaviour on the padded batch.
        self.include_padding = include_padding

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != self.num_features:
            raise ValueError(f"expected input of shape (B, {self.num_features}, T), got {tuple(x.shape)}")
        if not self.training and self.track_running_stats:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        stats_dtype = torch.promote_types(x.dtype, torch.float32)  # half and bfloat16 inputs: float32 statistics
        if self.include_padding:
            mask = torch.ones_like(mask)
        valid = mask.to(stats_dtype)
        count = valid.sum()  # valid frames, the same for every channel
        x_wide = x.to(stats_dtype)
        mean = (x_wide * valid).sum(dim=(0, 2)) / count
        centred = (x_wide - mean[:, None]) * valid  # zero on padded frames: they add nothing to the variance
        var = centred.square().sum(dim=(0, 2)) / count
        if self.training and self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        out = centred * scale[:, None]
        if self.bias is not None:
            out = out + self.bias[:, None]
        return out.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        weight = 1.0 / self.num_batches_tracked if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), weight)
        self.running_var.lerp_((var * (count / (count - 1))).to(self.running_var.dtype), weight)


class ConvBN(nn.Module):
    """Masked conv (no bias) followed by masked BatchNorm: a sub-block's body and a residual projection."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = MaskedConv1d(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation)
        self.bn = MaskedBatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor, in_mask: torch.Tensor, out_mask: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x, in_mask), out_mask)


class SubBlock(nn.Module):
    """conv -> BN -> (+ residual) -> ReLU -> dropout."""

    def __init__(self, in_channels: int, spec: ConvSpec) -> None:
        super().__init__()
        self.conv_bn = ConvBN(in_channels, spec.channels, spec.kernel, stride=spec.stride, dilation=spec.dilation)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(
        self, x: torch.Tensor, in_mask: torch.Tensor, out_mask: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        out = self.conv_bn(x, in_mask, out_mask)
        if residual is not None:
            out = out + residual
        return self.dropout(F.relu(out))


class JasperBlock(nn.Module):
    """`spec.repeat` sub-blocks; the last one adds the sum of the residual projections before its ReLU.

    Args:
        in_channels: channels of the block's input.
        spec: the sub-blocks' kernel, channels, dropout and count.
        residual_channels: channels of each residual source, in the order `forward` receives them; each gets
            its own 1x1 conv + BN projection to `spec.channels`.
    """

    def __init__(self, in_channels: int, spec: ConvSpec, residual_channels: Sequence[int]) -> None:
        super().__init__()
        channels = [in_channels] + [spec.channels] * (spec.repeat - 1)
        self.sub_blocks = nn.ModuleList(SubBlock(c, spec) for c in channels)
        self.residuals = nn.ModuleList(ConvBN(c, spec.channels, kernel_size=1) for c in residual_channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, residual_sources: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(residual_sources) != len(self.residuals):
            raise ValueError(f"expected {len(self.residuals)} residual sources, got {len(residual_sources)}")
        residual = self.residuals[0](residual_sources[0], mask, mask)
        for projection, source in zip(self.residuals[1:], residual_sources[1:]):
            residual = residual + projection(source, mask, mask)
        for sub_block in self.sub_blocks[:-1]:
            x = sub_block(x, mask, mask)
        return self.sub_blocks[-1](x, mask, mask, residual)


def _as_spec(spec: ConvSpec | Mapping, dropout: float | None) -> ConvSpec:
    spec = spec if isinstance(spec, ConvSpec) else ConvSpec(**dict(spec))
    return spec if dropout is None else replace(spec, dropout=dropout)


def _check_spec(spec: ConvSpec, where: str, single_conv: bool, may_stride: bool) -> None:
    if min(spec.kernel, spec.channels, spec.repeat, spec.dilation, spec.stride) < 1:
        raise ValueError(f"{where}: kernel, channels, repeat, dilation and stride must be positive, got {spec}")
    if spec.kernel % 2 == 0:
        raise ValueError(f"{where}: kernel sizes must be odd so that 'same' padding keeps the length, got {spec}")
    if single_conv and spec.repeat != 1:
        raise ValueError(f"{where}: a prologue or epilogue entry is a single conv (repeat 1), got {spec}")
    if not may_stride and spec.stride != 1:
        raise ValueError(f"{where}: only the prologue may stride, got {spec}")


class Jasper(nn.Module):
    """Jasper: `Jasper()` is the paper's Jasper 10x5 DR (332.6M parameters).

    Args:
        in_features: log-mel bins of the input features (64).
        num_classes: CTC outputs, the blank last (29: space, a-z, apostrophe, blank = 28).
        prologue: the first conv, which alone may stride.
        blocks: the residual blocks, each `repeat` sub-blocks.
        epilogue: the convs after the blocks, before the classifier.
        dense_residual: each block sums projections of the prologue's and all earlier blocks' outputs (True,
            Jasper DR), or projects only its own input (False, plain Jasper).
        dropout: if given, replaces every layer's dropout probability (e.g. 0.0 to switch dropout off).
        bn_include_padding: BatchNorm's training statistics count the padded frames too, as the authors' and
            NeMo's encoders do (False: the valid frames only, see the module docstring).
        init: "authors" (truncated-normal Xavier for the encoder, uniform Xavier for the classifier [O]) or
            "xavier_uniform" (every conv, NeMo's default [N]).

    `forward(features (B, in_features, T), lengths (B,))` returns logits (B, T', num_classes), in at least float32,
    and the valid output frames per utterance, `out_lengths` (B,): `(lengths - 1) // 2 + 1` with the stride-2
    prologue (T' likewise from T). Padded input frames may hold any finite values.
    """

    # The units a sharded run shards one by one (FSDP2's fully_shard): a residual block.
    block_types = (JasperBlock,)

    def __init__(
        self,
        in_features: int = 64,
        num_classes: int = 29,
        prologue: ConvSpec | Mapping = JASPER10X5_PROLOGUE,
        blocks: Sequence[ConvSpec | Mapping] = JASPER10X5_BLOCKS,
        epilogue: Sequence[ConvSpec | Mapping] = JASPER10X5_EPILOGUE,
        dense_residual: bool = True,
        dropout: float | None = None,
        bn_include_padding: bool = False,
        init: str = "authors",
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"model.init must be one of {INITS}, got {init!r}")
        if in_features < 1 or num_classes < 2:
            raise ValueError(f"in_features ({in_features}) must be positive and num_classes ({num_classes}) at "
                             "least 2 (one character and the blank)")
        prologue = _as_spec(prologue, dropout)
        blocks = [_as_spec(spec, dropout) for spec in blocks]
        epilogue = [_as_spec(spec, dropout) for spec in epilogue]
        if not blocks:
            raise ValueError("Jasper needs at least one block")
        _check_spec(prologue, "prologue", single_conv=True, may_stride=True)
        for index, spec in enumerate(blocks, 1):
            _check_spec(spec, f"block {index}", single_conv=False, may_stride=False)
        for index, spec in enumerate(epilogue, 1):
            _check_spec(spec, f"epilogue layer {index}", single_conv=True, may_stride=False)

        self.in_features = in_features
        self.num_classes = num_classes
        self.blank = num_classes - 1
        self.dense_residual = dense_residual
        self.prologue = SubBlock(in_features, prologue)
        output_channels = [prologue.channels]  # channels of the prologue's and each block's output
        self.blocks = nn.ModuleList()
        for spec in blocks:
            sources = output_channels[:] if dense_residual else output_channels[-1:]
            self.blocks.append(JasperBlock(output_channels[-1], spec, residual_channels=sources))
            output_channels.append(spec.channels)
        self.epilogue = nn.ModuleList()
        channels = output_channels[-1]
        for spec in epilogue:
            self.epilogue.append(SubBlock(channels, spec))
            channels = spec.channels
        self.classifier = MaskedConv1d(channels, num_classes, kernel_size=1, bias=True)
        for module in self.modules():
            if isinstance(module, MaskedBatchNorm1d):
                module.include_padding = bn_include_padding
        self.init = init
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Conv weights as `init` says (module docstring), a zero classifier bias [O]; BatchNorm starts at scale 1,
        shift 0 and unit running variance."""
        for module in self.modules():
            if isinstance(module, nn.Conv1d):
                if self.init == "authors" and module is not self.classifier:
                    truncated_normal_xavier_(module.weight)
                else:
                    nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, MaskedBatchNorm1d):
                module.reset_parameters()

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Valid output frames for `lengths` valid input frames (only the prologue changes the length)."""
        return self.prologue.conv_bn.conv.output_lengths(lengths)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if features.dim() != 3 or features.shape[1] != self.in_features:
            raise ValueError(f"features must be (batch, {self.in_features}, time), got {tuple(features.shape)}")
        if lengths.shape != features.shape[:1]:
            raise ValueError(f"lengths must be ({features.shape[0]},), one per utterance, got {tuple(lengths.shape)}")
        in_mask = sequence_mask(lengths, features.shape[-1])
        out_lengths = self.output_lengths(lengths)
        out_frames = self.prologue.conv_bn.conv.output_lengths(features.shape[-1])
        mask = sequence_mask(out_lengths, out_frames)
        x = self.prologue(features, in_mask, mask)
        sources = [x]  # the residual's sources: the prologue's and every block's output (dense), or the last
        for block in self.blocks:
            x = block(x, mask, sources)
            sources = [*sources, x] if self.dense_residual else [x]
        for layer in self.epilogue:
            x = layer(x, mask, mask)
        logits = self.classifier(x, mask)
        # Logits at least in float32 (autocast leaves them half): CTC's log-softmax wants the range.
        return logits.transpose(1, 2).to(torch.promote_types(logits.dtype, torch.float32)), out_lengths
