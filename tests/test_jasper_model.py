"""Jasper 10x5 DR: the authors' parameter counts, the wiring against a plain-torch reference, and padding that
never reaches a valid frame, a BatchNorm statistic or a gradient."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from models.jasper import (
    JASPER10X5_BLOCKS,
    JASPER10X5_EPILOGUE,
    JASPER10X5_PROLOGUE,
    ConvBN,
    ConvSpec,
    Jasper,
    MaskedBatchNorm1d,
    MaskedConv1d,
    SubBlock,
)
from novograd.engine.compose import CONFIG_DIR

# A small Jasper with every feature of the big one: stride-2 prologue, three dense-residual blocks (the first of
# one sub-block), a dilated epilogue conv and a 1x1 one. Dropout 0 unless a test asks for it.
TINY = dict(
    in_features=8,
    num_classes=5,
    prologue=ConvSpec(kernel=5, channels=6, dropout=0.0, stride=2),
    blocks=[ConvSpec(3, 6, 0.0, repeat=1), ConvSpec(5, 7, 0.0, repeat=2), ConvSpec(3, 9, 0.0, repeat=2)],
    epilogue=[ConvSpec(5, 10, 0.0, dilation=2), ConvSpec(1, 11, 0.0)],
)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny_model(seed: int = 0, **overrides) -> Jasper:
    torch.manual_seed(seed)
    model = Jasper(**{**TINY, **overrides}).double()
    with torch.no_grad():  # non-trivial BatchNorm parameters and running statistics, so that each one matters
        for bn in (m for m in model.modules() if isinstance(m, MaskedBatchNorm1d)):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return model


def padded_batch(utterances: list[torch.Tensor], extra: int = 0, fill: float = 1e3):
    """Utterances (F, T_i) as one (B, F, max T + extra) batch whose padding holds large garbage, and lengths."""
    lengths = torch.tensor([u.shape[-1] for u in utterances])
    batch = torch.full((len(utterances), utterances[0].shape[0], int(lengths.max()) + extra), fill, dtype=torch.float64)
    batch += torch.randn_like(batch)
    for index, utterance in enumerate(utterances):
        batch[index, :, : utterance.shape[-1]] = utterance
    return batch, lengths


def jasper_param_count(in_features, num_classes, prologue, blocks, epilogue, dense_residual) -> int:
    """All parameters, from the architecture alone: bias-free convs, BatchNorm scale and shift, the classifier's
    weight and bias; block i projects i residual sources (prologue and blocks 1..i-1) when dense, else its input."""
    def conv_bn(c_in: int, c_out: int, kernel: int) -> int:
        return c_in * c_out * kernel + 2 * c_out

    total = conv_bn(in_features, prologue.channels, prologue.kernel)
    sources = [prologue.channels]
    for spec in blocks:
        total += conv_bn(sources[-1], spec.channels, spec.kernel)
        total += (spec.repeat - 1) * conv_bn(spec.channels, spec.channels, spec.kernel)
        total += sum(conv_bn(c, spec.channels, 1) for c in (sources if dense_residual else sources[-1:]))
        sources.append(spec.channels)
    channels = sources[-1]
    for spec in epilogue:
        total += conv_bn(channels, spec.channels, spec.kernel)
        channels = spec.channels
    return total + channels * num_classes + num_classes


# ---------------------------------------------------------------- size and structure


@pytest.mark.parametrize(
    "dense_residual, expected, authors", [(True, 332_632_349, 332.6e6), (False, 322_286_877, 322.3e6)]
)
def test_jasper10x5_has_the_authors_parameter_counts_on_meta(dense_residual, expected, authors) -> None:
    with torch.device("meta"):
        model = Jasper(dense_residual=dense_residual)
    assert all(p.device.type == "meta" for p in model.parameters())
    formula = jasper_param_count(64, 29, JASPER10X5_PROLOGUE, JASPER10X5_BLOCKS, JASPER10X5_EPILOGUE, dense_residual)
    assert count(model) == formula == expected
    assert abs(count(model) - authors) / authors < 5e-4  # within 0.05% of the configs' 332.6M / 322.3M


def test_the_configs_build_the_paper_model_and_a_tiny_one() -> None:
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        full_cfg = compose(config_name="config", overrides=["model=jasper10x5"])
        plain_cfg = compose(config_name="config", overrides=["model=jasper10x5", "model.dense_residual=false"])
        tiny_cfg = compose(config_name="config", overrides=["model=jasper_tiny"])
    with torch.device("meta"):
        full, plain, tiny = (instantiate(c.model) for c in (full_cfg, plain_cfg, tiny_cfg))
        default = Jasper()
    assert str(full) == str(default)  # the config lists exactly the default (paper) architecture
    assert (count(full), count(plain)) == (332_632_349, 322_286_877)
    assert count(tiny) == 130_525  # the figure the config's comment states
    prologue_conv = tiny.prologue.conv_bn.conv
    assert prologue_conv.stride == (2,) and tiny.epilogue[0].conv_bn.conv.dilation == (2,)
    assert tiny.epilogue[-1].conv_bn.conv.kernel_size == (1,) and tiny.blank == 28


@pytest.mark.parametrize("dense_residual", [True, False])
def test_residual_projections_follow_the_dense_or_plain_pattern(dense_residual: bool) -> None:
    model = Jasper(**TINY, dense_residual=dense_residual)
    outputs = [TINY["prologue"].channels] + [spec.channels for spec in TINY["blocks"]]
    for index, (block, spec) in enumerate(zip(model.blocks, TINY["blocks"])):
        sources = outputs[: index + 1] if dense_residual else [outputs[index]]
        assert [p.conv.in_channels for p in block.residuals] == sources
        assert all(p.conv.out_channels == spec.channels and p.conv.kernel_size == (1,) for p in block.residuals)
        assert all(p.conv.bias is None for p in block.residuals)
        assert len(block.sub_blocks) == spec.repeat


@pytest.mark.parametrize("init", ["authors", "xavier_uniform"])
def test_init_follows_the_authors_or_uniform_xavier_with_bias_only_on_the_classifier(init: str) -> None:
    """authors [O]: encoder convs from TF's xavier_initializer(uniform=False), a normal of std sqrt(1.3 / fan_avg)
    cut at 2 std (so a draw's std is about sqrt(1 / fan_avg)), the classifier uniform Xavier."""
    torch.manual_seed(0)
    model = Jasper(in_features=64, num_classes=29, prologue=ConvSpec(11, 256, 0.2, stride=2),
                   blocks=[ConvSpec(11, 256, 0.2)], epilogue=[], init=init)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert [m for m in convs if m.bias is not None] == [model.classifier]
    assert torch.equal(model.classifier.bias, torch.zeros(29))
    weight = model.prologue.conv_bn.conv.weight  # fan_in = 64 * 11, fan_out = 256 * 11
    fan_avg = (64 * 11 + 256 * 11) / 2
    uniform_bound = (3 / fan_avg) ** 0.5
    torch.testing.assert_close(weight.std().item(), fan_avg**-0.5, rtol=0.02, atol=0)  # the same variance
    if init == "authors":
        cut = 2 * (1.3 / fan_avg) ** 0.5
        assert uniform_bound * 1.2 < weight.abs().max() <= cut  # beyond the uniform bound: not uniform
    else:
        assert 0.99 * uniform_bound < weight.abs().max() <= uniform_bound
    classifier_bound = (6 / (256 + 29)) ** 0.5
    assert 0.9 * classifier_bound < model.classifier.weight.abs().max() <= classifier_bound
    bn = model.blocks[0].residuals[0].bn
    assert (bn.eps, bn.momentum) == (1e-3, 0.1)
    with pytest.raises(ValueError, match="model.init must be one of"):
        Jasper(init="kaiming")


def test_dropout_comes_from_the_specs_or_the_override() -> None:
    with torch.device("meta"):
        model = Jasper(dropout=None)
    rates = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    expected = [0.2] + [spec.dropout for spec in JASPER10X5_BLOCKS for _ in range(spec.repeat)] + [0.4, 0.4]
    assert rates == expected
    assert {m.p for m in Jasper(**TINY, dropout=0.3).modules() if isinstance(m, nn.Dropout)} == {0.3}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(blocks=[ConvSpec(4, 6, 0.0)]), "odd"),
        (dict(blocks=[ConvSpec(3, 6, 0.0, stride=2)]), "only the prologue may stride"),
        (dict(epilogue=[ConvSpec(3, 6, 0.0, repeat=2)]), "single conv"),
        (dict(blocks=[]), "at least one block"),
    ],
)
def test_bad_architectures_are_refused(overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        Jasper(**{**TINY, **overrides})


def test_bad_inputs_are_refused() -> None:
    model = Jasper(**TINY)
    with pytest.raises(ValueError, match=r"features must be \(batch, 8, time\)"):
        model(torch.randn(2, 7, 20), torch.tensor([20, 10]))
    with pytest.raises(ValueError, match="one per utterance"):
        model(torch.randn(2, 8, 20), torch.tensor([20]))


# ---------------------------------------------------------------- the wiring against plain torch


def reference_forward(model: Jasper, features: torch.Tensor) -> torch.Tensor:
    """Logits of one unpadded utterance (1, F, T) from torch's own conv1d and batch_norm, no masks (dropout 0).

    In training, batch_norm normalises with the utterance's own statistics, in eval with the running ones."""
    def conv_bn(layer: ConvBN, x: torch.Tensor) -> torch.Tensor:
        conv, bn = layer.conv, layer.bn
        y = F.conv1d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation)
        return F.batch_norm(y, bn.running_mean.clone(), bn.running_var.clone(), bn.weight, bn.bias,
                            training=model.training, eps=bn.eps)

    def sub_block(layer: SubBlock, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        y = conv_bn(layer.conv_bn, x)
        return F.relu(y if residual is None else y + residual)

    x = sub_block(model.prologue, features)
    outputs = [x]
    for block in model.blocks:
        sources = outputs if model.dense_residual else [x]
        residual = sum(conv_bn(projection, source) for projection, source in zip(block.residuals, sources, strict=True))
        for layer in block.sub_blocks[:-1]:
            x = sub_block(layer, x)
        x = sub_block(block.sub_blocks[-1], x, residual)
        outputs.append(x)
    for layer in model.epilogue:
        x = sub_block(layer, x)
    return F.conv1d(x, model.classifier.weight, model.classifier.bias).transpose(1, 2)


@pytest.mark.parametrize("dense_residual", [True, False])
@pytest.mark.parametrize("training", [False, True])
def test_forward_matches_plain_torch_on_one_utterance(dense_residual: bool, training: bool) -> None:
    model = tiny_model(dense_residual=dense_residual).train(training)
    features = torch.randn(1, 8, 23, dtype=torch.float64)
    expected = reference_forward(model, features)
    logits, out_lengths = model(features, torch.tensor([23]))
    assert logits.shape == expected.shape == (1, 12, 5) and out_lengths.tolist() == [12]
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- padding


def test_an_utterance_gets_the_same_output_alone_and_padded_in_a_batch_in_eval_mode() -> None:
    model = tiny_model().eval()
    short, long = torch.randn(8, 19, dtype=torch.float64), torch.randn(8, 40, dtype=torch.float64)
    batch, lengths = padded_batch([short, long], extra=5)
    logits, out_lengths = model(batch, lengths)
    for index, utterance in enumerate([short, long]):
        alone, alone_length = model(utterance[None], torch.tensor([utterance.shape[-1]]))
        assert alone.shape[1] == alone_length.item() == out_lengths[index].item()
        torch.testing.assert_close(logits[index, : out_lengths[index]], alone[0], rtol=1e-10, atol=1e-10)


def test_in_training_padding_changes_neither_outputs_nor_running_statistics() -> None:
    """A lone utterance padded with garbage trains exactly as unpadded; two utterances give the same result in
    either order and with any amount of padding (dropout 0: the batch statistics are the only coupling)."""
    model = tiny_model().train()
    short, long = torch.randn(8, 17, dtype=torch.float64), torch.randn(8, 30, dtype=torch.float64)

    def run(utterances, extra):
        trained = copy.deepcopy(model)
        logits, out_lengths = trained(*padded_batch(utterances, extra))
        valid = [logits[i, :n] for i, n in enumerate(out_lengths.tolist())]
        return valid, {k: v for k, v in trained.state_dict().items() if "running" in k or "num_batches" in k}

    (alone,), alone_stats = run([short], extra=0)
    (padded,), padded_stats = run([short], extra=9)
    torch.testing.assert_close(padded, alone, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(padded_stats, alone_stats, rtol=1e-10, atol=1e-10)

    (a_first, b_first), stats_ab = run([short, long], extra=0)
    (b_second, a_second), stats_ba = run([long, short], extra=13)
    torch.testing.assert_close((a_first, b_first), (a_second, b_second), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(stats_ab, stats_ba, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(a_first, alone)  # batched with `long`, `short` is normalised by the joint statistics


def test_every_batchnorm_of_the_model_takes_its_statistics_from_the_valid_frames() -> None:
    """After one training step from running statistics (0, 1), each BatchNorm's running mean is 0.1 x the mean and
    its running variance 0.9 + 0.1 x the unbiased variance of its input's valid frames laid end to end."""
    model = tiny_model().train()
    inputs = {}
    for bn in (m for m in model.modules() if isinstance(m, MaskedBatchNorm1d)):
        bn.reset_running_stats()
        bn.register_forward_hook(lambda module, args, output: inputs.__setitem__(module, args))
    model(*padded_batch([torch.randn(8, 21, dtype=torch.float64), torch.randn(8, 34, dtype=torch.float64)]))
    assert len(inputs) == sum(isinstance(m, MaskedBatchNorm1d) for m in model.modules()) == 1 + 5 + 6 + 2
    for bn, (x, mask) in inputs.items():
        frames = torch.cat([x[b, :, mask[b, 0]] for b in range(x.shape[0])], dim=1)  # (C, valid frames)
        assert frames.shape[1] == 11 + 17  # the two utterances' frames after the stride-2 prologue
        torch.testing.assert_close(bn.running_mean, 0.1 * frames.mean(dim=1), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * frames.var(dim=1), rtol=1e-10, atol=1e-12)


def test_padded_frames_get_no_gradient_and_leave_the_weights_gradient_unchanged() -> None:
    model = tiny_model().train()
    utterance = torch.randn(8, 25, dtype=torch.float64)
    weights = torch.randn(13, 5, dtype=torch.float64)  # a loss over the 13 valid output frames

    def gradients(extra: int):
        trained = copy.deepcopy(model)
        features, lengths = padded_batch([utterance], extra)
        features.requires_grad_(True)
        logits, out_lengths = trained(features, lengths)
        (logits[0, : out_lengths[0]] * weights).sum().backward()
        return features.grad, {name: p.grad for name, p in trained.named_parameters()}

    features_grad, param_grads = gradients(extra=11)
    assert torch.all(features_grad[..., 25:] == 0) and features_grad[..., :25].abs().min() > 0
    reference_features_grad, reference_param_grads = gradients(extra=0)
    torch.testing.assert_close(features_grad[..., :25], reference_features_grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(param_grads, reference_param_grads, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel, stride, dilation", [(11, 2, 1), (5, 2, 1), (7, 3, 2), (29, 1, 2), (1, 1, 1)])
def test_output_lengths_match_the_convolution(kernel: int, stride: int, dilation: int) -> None:
    conv = MaskedConv1d(2, 3, kernel, stride=stride, dilation=dilation)
    for length in range(1, 40):
        out = conv(torch.randn(1, 2, length), torch.ones(1, 1, length, dtype=torch.bool))
        assert conv.output_lengths(torch.tensor([length])).tolist() == [out.shape[-1]]
        assert conv.output_lengths(length) == out.shape[-1]
        if stride == 1:
            assert out.shape[-1] == length  # "same" padding


def test_the_model_reports_how_many_output_frames_are_valid() -> None:
    model = tiny_model().eval()
    lengths = torch.tensor([1, 2, 15, 16, 31, 32])
    logits, out_lengths = model(torch.randn(6, 8, 32, dtype=torch.float64), lengths)
    assert out_lengths.tolist() == [(n - 1) // 2 + 1 for n in lengths.tolist()] == [1, 1, 8, 8, 16, 16]
    assert logits.shape == (6, 16, 5) and out_lengths.dtype == torch.int64
    for n in lengths.tolist():  # alone, each utterance's logits are exactly out_lengths long
        assert model(torch.randn(1, 8, n, dtype=torch.float64), torch.tensor([n]))[0].shape[1] == (n - 1) // 2 + 1


# ---------------------------------------------------------------- the masked BatchNorm itself


@pytest.mark.parametrize("momentum", [0.1, None])
def test_masked_batchnorm_is_batchnorm_over_the_valid_frames(momentum: float | None) -> None:
    torch.manual_seed(0)
    masked, reference = MaskedBatchNorm1d(4, momentum=momentum), nn.BatchNorm1d(4, eps=1e-3, momentum=momentum)
    with torch.no_grad():
        for bn in (masked, reference):
            bn.weight.copy_(torch.tensor([0.5, 1.0, 1.5, 2.0]))
            bn.bias.copy_(torch.tensor([-1.0, 0.0, 0.5, 1.0]))
    for lengths in ([9, 4, 1], [6, 9, 2]):  # two steps: the running statistics accumulate like torch's
        x = 3 + 2 * torch.randn(3, 4, 9, dtype=torch.float64).float()
        mask = torch.arange(9)[None, None, :] < torch.tensor(lengths)[:, None, None]
        x = torch.where(mask, x, torch.full_like(x, 1e4))  # padding far from the data
        frames = torch.cat([x[b, :, :n] for b, n in enumerate(lengths)], dim=1)[None]  # (1, C, valid frames)
        out, expected = masked(x, mask), reference(frames)
        torch.testing.assert_close(torch.cat([out[b, :, :n] for b, n in enumerate(lengths)], dim=1)[None], expected)
        torch.testing.assert_close(masked.running_mean, reference.running_mean)
        torch.testing.assert_close(masked.running_var, reference.running_var)
        assert masked.num_batches_tracked == reference.num_batches_tracked
    masked.eval(), reference.eval()
    x = torch.randn(2, 4, 5)
    torch.testing.assert_close(masked(x, torch.ones(2, 1, 5, dtype=torch.bool)), reference(x))


def test_batchnorm_with_padding_included_is_torch_batchnorm_on_the_padded_batch() -> None:
    """bn_include_padding (the authors' and NeMo's encoders): every frame, padded ones too, in the statistics."""
    torch.manual_seed(0)
    with_padding = MaskedBatchNorm1d(4, include_padding=True)
    reference = nn.BatchNorm1d(4, eps=1e-3)
    x = 3 + 2 * torch.randn(3, 4, 9)
    mask = torch.arange(9)[None, None, :] < torch.tensor([9, 4, 1])[:, None, None]
    x = x * mask  # padded frames as a masked conv leaves them: zero
    torch.testing.assert_close(with_padding(x, mask), reference(x))
    torch.testing.assert_close(with_padding.running_var, reference.running_var)
    valid_only = MaskedBatchNorm1d(4)
    valid_only(x, mask)
    assert not torch.allclose(valid_only.running_mean, reference.running_mean, atol=1e-2)  # the option matters


def test_the_model_option_lets_padding_change_an_utterances_training_output() -> None:
    """With bn_include_padding the valid outputs of an utterance depend on how much padding it is batched with
    (what the default's masked statistics prevent: test_in_training_padding_changes_neither_...)."""
    utterance = torch.randn(8, 17, dtype=torch.float64)
    for include, changes in ((False, False), (True, True)):
        model = tiny_model(bn_include_padding=include).train()
        assert all(m.include_padding is include for m in model.modules() if isinstance(m, MaskedBatchNorm1d))
        outputs = []
        for extra in (0, 15):
            features, lengths = padded_batch([utterance], extra, fill=0.0)
            logits, out_lengths = copy.deepcopy(model)(features, lengths)
            outputs.append(logits[0, : out_lengths[0]])
        assert (not torch.allclose(*outputs, rtol=1e-6, atol=1e-6)) is changes


def test_masked_batchnorm_keeps_half_precision_inputs_and_float32_statistics() -> None:
    bn = MaskedBatchNorm1d(3)
    x = 100 + torch.randn(2, 3, 50)  # a large mean: bfloat16 statistics would lose the variance
    mask = torch.arange(50)[None, None, :] < torch.tensor([50, 30])[:, None, None]
    out = bn(x.bfloat16(), mask)
    assert out.dtype == torch.bfloat16 and bn.running_mean.dtype == torch.float32
    reference = MaskedBatchNorm1d(3)(x.bfloat16().float(), mask)
    torch.testing.assert_close(out.float(), reference, rtol=2e-2, atol=2e-2)


def test_masked_batchnorm_is_a_norm_layer_to_the_optimizer_and_untouched_by_sync_batchnorm() -> None:
    from novograd.optim.factory import param_groups

    model = Jasper(**TINY)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in converted.modules())  # it knows no mask
    decay, no_decay = param_groups(model, exclude_from_weight_decay=True)
    bn_params = {id(p) for m in model.modules() if isinstance(m, MaskedBatchNorm1d) for p in m.parameters()}
    assert bn_params <= {id(p) for p in no_decay["params"]}
    assert {id(p) for p in decay["params"]} == {id(m.weight) for m in model.modules() if isinstance(m, nn.Conv1d)}


# ---------------------------------------------------------------- training


def test_tiny_model_trains_with_ctc_forward_and_backward() -> None:
    torch.manual_seed(0)
    model = Jasper(**{**TINY, "num_classes": 29}, dropout=0.2).train()
    features, lengths = torch.randn(3, 8, 40), torch.tensor([40, 31, 22])
    targets, target_lengths = torch.randint(0, 28, (3, 6)), torch.tensor([6, 5, 3])  # no blank (28) in targets
    logits, out_lengths = model(features, lengths)
    assert logits.dtype == torch.float32 and logits.shape == (3, 20, 29) and out_lengths.tolist() == [20, 16, 11]
    log_probs = logits.log_softmax(dim=-1).transpose(0, 1)  # (T', B, C) for ctc_loss
    loss = F.ctc_loss(log_probs, targets, out_lengths, target_lengths, blank=model.blank, reduction="sum") / 3
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_tiny_model_runs_under_cpu_autocast() -> None:
    torch.manual_seed(0)
    model = Jasper(**TINY).train()
    features, lengths = torch.randn(2, 8, 30), torch.tensor([30, 21])
    expected, _ = copy.deepcopy(model)(features, lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = model(features, lengths)
    assert logits.dtype == torch.float32
    valid = torch.arange(15)[None, :] < torch.tensor([15, 11])[:, None]
    torch.testing.assert_close(logits[valid], expected[valid], rtol=0.1, atol=0.1)


@pytest.mark.slow
def test_compiled_model_has_one_graph_and_matches_eager() -> None:
    torch.manual_seed(0)
    model = Jasper(**TINY).train()
    features, lengths = torch.randn(2, 8, 30), torch.tensor([30, 21])
    compiled = torch.compile(copy.deepcopy(model), fullgraph=True)
    logits, out_lengths = compiled(features, lengths)
    expected, expected_lengths = model(features, lengths)
    assert torch.equal(out_lengths, expected_lengths)
    valid = torch.arange(15)[None, :] < expected_lengths[:, None]
    torch.testing.assert_close(logits[valid], expected[valid], rtol=1e-4, atol=1e-4)
