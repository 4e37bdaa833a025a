"""Transformer-big: the paper's parameter count, the layers' maths against slow explicit versions, shared
embeddings, initialisation, incremental decoding and the label-smoothed loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from models.transformer import DecoderLayer, EncoderLayer, MultiheadAttention, Transformer, label_smoothed_nll_loss
from novograd.engine.compose import compose_config

PAD, BOS, EOS = 0, 1, 2


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def big_param_count(
    vocab: int, d: int = 1024, ff: int = 4096, enc: int = 6, dec: int = 6, pre_norm=True, attention_bias=False
) -> int:
    """Transformer-big with shared embeddings, from the architecture alone: the authors' layout by default
    (OpenSeq2Seq: no attention biases, a final LayerNorm per stack), fairseq's with the two flags flipped."""
    attention = 4 * (d * d + (d if attention_bias else 0))  # q, k, v, out projections
    layer_norm = 2 * d
    ffn = d * ff + ff + ff * d + d
    encoder_layer = attention + ffn + 2 * layer_norm
    decoder_layer = 2 * attention + ffn + 3 * layer_norm
    final_norms = 2 * layer_norm if pre_norm else 0
    return vocab * d + enc * encoder_layer + dec * decoder_layer + final_norms


FAIRSEQ = dict(pre_norm=False, attention_bias=True, activation_dropout=0.0, qkv_init_gain=1 / math.sqrt(2))


def tiny(vocab: int = 11, pre_norm: bool = False, **kwargs) -> Transformer:
    """A small model, post-norm unless asked (the layers' tests run both layouts)."""
    torch.manual_seed(0)
    args = dict(d_model=32, d_ff=64, num_heads=4, encoder_layers=2, decoder_layers=2, dropout=0.0,
                activation_dropout=0.0, attention_bias=not pre_norm)
    return Transformer(vocab_size=vocab, pre_norm=pre_norm, **{**args, **kwargs}).eval()


def random_batch(vocab: int = 11, lengths=(5, 3, 6), tgt_len: int = 7, seed: int = 1):
    """Right-padded sources of the given lengths and BOS-first target inputs, ids in [3, vocab)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.full((len(lengths), max(lengths)), PAD)
    for row, length in enumerate(lengths):
        src[row, :length] = torch.randint(3, vocab, (length,), generator=g)
    tgt = torch.randint(3, vocab, (len(lengths), tgt_len), generator=g)
    tgt[:, 0] = BOS
    return src, tgt


# ---------------------------------------------------------------- size and configs


def test_transformer_big_in_the_authors_layout_has_184_676_352_parameters_on_meta():
    with torch.device("meta"):
        model = Transformer()
    assert count(model) == big_param_count(8192) == 184_676_352
    assert round(count(model) / 1e6, 2) == 184.68  # OpenSeq2Seq's count; the paper's "185M"
    assert not any(name.endswith("_proj.bias") for name, _ in model.named_parameters())
    assert isinstance(model.encoder_norm, nn.LayerNorm) and isinstance(model.decoder_norm, nn.LayerNorm)
    layer = model.decoder_layers[0]
    assert layer.pre_norm and layer.ffn.activation_dropout.p == layer.dropout.p == 0.3


def test_transformer_big_in_fairseqs_layout_has_184_745_984_parameters_on_meta():
    with torch.device("meta"):
        model = Transformer(**FAIRSEQ)
    assert count(model) == big_param_count(8192, pre_norm=False, attention_bias=True) == 184_745_984
    attention_biases = sum(p.numel() for name, p in model.named_parameters() if name.endswith("_proj.bias"))
    assert attention_biases == 18 * 4 * 1024  # 6 encoder + 12 decoder attention blocks
    assert count(model) - attention_biases + 2 * 2 * 1024 == 184_676_352  # the layouts' whole difference


def test_configs_build_both_layouts_and_the_tiny_model():
    big = compose_config(["model=transformer_big"], output_dir="unused").model
    fairseq = compose_config(["model=transformer_big_fairseq"], output_dir="unused").model
    with torch.device("meta"):
        assert count(instantiate(big)) == 184_676_352
        assert count(instantiate(fairseq)) == 184_745_984
    assert (big.dropout, big.attention_dropout, big.activation_dropout, big.pre_norm, big.attention_bias) == (
        0.3, 0.1, 0.3, True, False)
    assert {key: fairseq[key] for key in FAIRSEQ} == pytest.approx(FAIRSEQ, rel=1e-15)
    # activation_dropout follows each row's dropout (Table 7: 0.2 with NovoGrad), unless set.
    row = compose_config(["experiment=table7/novograd"], output_dir="unused").model
    assert (row.dropout, row.activation_dropout, row.pre_norm) == (0.2, 0.2, True)
    tiny_cfg = compose_config(["model=transformer_tiny"], output_dir="unused").model
    model = instantiate(tiny_cfg, vocab_size=100)
    assert count(model) == big_param_count(100, d=64, ff=128, enc=2, dec=2) == 166_144 + 64 * 100
    assert (model.d_model, len(model.encoder_layers), len(model.decoder_layers)) == (64, 2, 2)


def test_special_ids_must_be_distinct_and_in_the_vocabulary():
    with pytest.raises(ValueError, match="distinct ids below vocab_size"):
        Transformer(vocab_size=16, pad_id=1, bos_id=1, eos_id=2)
    with pytest.raises(ValueError, match="sentencepiece"):
        Transformer(vocab_size=16, eos_id=16)


# ---------------------------------------------------------------- shared embeddings and init


def test_one_matrix_embeds_source_and_target_and_projects_the_output():
    """The embedding is the only vocabulary-sized parameter, and the logits are the hidden states times it."""
    model = tiny()
    assert [name for name, p in model.named_parameters() if model.vocab_size in p.shape] == ["embed_tokens.weight"]
    src, tgt = random_batch()
    with torch.no_grad():
        model.embed_tokens.weight[5] = 0.0  # the output projection is this matrix, without a bias
    logits = model(src, tgt)
    assert torch.equal(logits[..., 5], torch.zeros_like(logits[..., 5]))


def test_embedding_input_is_scaled_by_sqrt_d_model_plus_sinusoids():
    model = tiny()
    tokens = torch.tensor([[4, 9, PAD]])
    x = model.embed(tokens, start=3)
    positions = torch.arange(3, 6, dtype=torch.float32)[:, None]
    half = model.d_model // 2
    frequencies = 10000.0 ** (-torch.arange(half) / (half - 1))
    expected_positions = torch.cat([torch.sin(positions * frequencies), torch.cos(positions * frequencies)], dim=1)
    expected = model.embed_tokens.weight[tokens[0]] * math.sqrt(model.d_model) + expected_positions
    torch.testing.assert_close(x[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("qkv_gain", [1.0, 1 / math.sqrt(2)])  # the authors' TensorFlow default, fairseq's
def test_initialisation_is_xavier_with_the_layouts_qkv_gain(qkv_gain):
    torch.manual_seed(0)
    d = 256
    model = Transformer(vocab_size=4000, d_model=d, d_ff=512, num_heads=4, encoder_layers=1, decoder_layers=1,
                        attention_bias=True, qkv_init_gain=qkv_gain)
    embedding = model.embed_tokens.weight
    assert torch.equal(embedding[PAD], torch.zeros(d))
    assert embedding[PAD + 1 :].std().item() == pytest.approx(d**-0.5, rel=0.02)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            fan_out, fan_in = module.weight.shape
            gain = qkv_gain if name.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj") else 1.0
            bound = gain * math.sqrt(6 / (fan_in + fan_out))  # Xavier uniform
            assert module.weight.abs().max().item() <= bound
            assert module.weight.abs().max().item() > 0.95 * bound
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
        if isinstance(module, nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones(d)) and torch.equal(module.bias, torch.zeros(d))


# ---------------------------------------------------------------- layers against explicit maths


def explicit_attention(attention: MultiheadAttention, x, kv_input, allowed) -> torch.Tensor:
    """Multi-head attention written out: projections, per-head softmax(q k^T / sqrt(d_head)) v, output projection.
    `allowed` (batch, query length, key length) is True where a query may attend."""
    batch, q_len, d = x.shape
    heads, head_dim = attention.num_heads, d // attention.num_heads

    def heads_of(t):
        return t.view(batch, -1, heads, head_dim).transpose(1, 2)

    q = heads_of(attention.q_proj(x))
    k, v = heads_of(attention.k_proj(kv_input)), heads_of(attention.v_proj(kv_input))
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, q_len, d)
    return attention.out_proj(out)


def explicit_layer_norm(x, norm: nn.LayerNorm):
    """LayerNorm written out: (x - mean) / sqrt(biased variance + eps) * weight + bias, over the features."""
    mean = x.mean(-1, keepdim=True)
    variance = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + norm.eps) * norm.weight + norm.bias


def explicit_sublayer(x, norm, sublayer, pre_norm):
    """Pre-norm (the authors' PrePostProcessingWrapper): x + sublayer(norm(x)); post-norm: norm(x + sublayer(x))."""
    if pre_norm:
        return x + sublayer(explicit_layer_norm(x, norm))
    return explicit_layer_norm(x + sublayer(x), norm)


def explicit_ffn(ffn):
    return lambda y: ffn.fc2(torch.relu(ffn.fc1(y)))


def explicit_self_attention(attention, allowed):
    return lambda y: explicit_attention(attention, y, y, allowed)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_encoder_layer_matches_explicit_maths(pre_norm):
    model = tiny(pre_norm=pre_norm)
    layer: EncoderLayer = model.encoder_layers[0]
    src, _ = random_batch()
    x = torch.randn(*src.shape, model.d_model)
    allowed = src.ne(PAD)[:, None, :].expand(-1, src.size(1), -1)
    h = explicit_sublayer(x, layer.self_attn_norm, explicit_self_attention(layer.self_attn, allowed), pre_norm)
    expected = explicit_sublayer(h, layer.ffn_norm, explicit_ffn(layer.ffn), pre_norm)
    torch.testing.assert_close(layer(x, model._attention_mask(src.eq(PAD))), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_decoder_layer_matches_explicit_maths(pre_norm):
    model = tiny(pre_norm=pre_norm)
    layer: DecoderLayer = model.decoder_layers[0]
    src, tgt = random_batch()
    x, memory = torch.randn(*tgt.shape, model.d_model), torch.randn(*src.shape, model.d_model)
    causal = torch.ones(tgt.size(1), tgt.size(1), dtype=torch.bool).tril().expand(tgt.size(0), -1, -1)
    to_source = src.ne(PAD)[:, None, :].expand(-1, tgt.size(1), -1)
    h = explicit_sublayer(x, layer.self_attn_norm, explicit_self_attention(layer.self_attn, causal), pre_norm)
    h = explicit_sublayer(
        h, layer.cross_attn_norm, lambda y: explicit_attention(layer.cross_attn, y, memory, to_source), pre_norm
    )
    expected = explicit_sublayer(h, layer.ffn_norm, explicit_ffn(layer.ffn), pre_norm)
    out, _ = layer(x, layer.cross_attn.project_keys_values(memory), model._attention_mask(src.eq(PAD)))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_pre_norm_encoder_is_the_explicit_stack_with_a_final_layer_norm():
    """The authors' encoder written out: embed, pre-norm layers, then the stack's own LayerNorm."""
    model = tiny(pre_norm=True, layer_norm_eps=1e-6)
    with torch.no_grad():  # non-trivial LayerNorm parameters, so that weight and bias are seen to act
        for norm in (m for m in model.modules() if isinstance(m, nn.LayerNorm)):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    src, _ = random_batch()
    allowed = src.ne(PAD)[:, None, :].expand(-1, src.size(1), -1)
    x = model.embed(src)
    for layer in model.encoder_layers:
        assert layer.self_attn_norm.eps == 1e-6 and layer.self_attn.q_proj.bias is None
        x = explicit_sublayer(x, layer.self_attn_norm, explicit_self_attention(layer.self_attn, allowed), True)
        x = explicit_sublayer(x, layer.ffn_norm, explicit_ffn(layer.ffn), True)
    expected = explicit_layer_norm(x, model.encoder_norm)
    memory, _ = model.encode(src)
    torch.testing.assert_close(memory, expected, rtol=1e-5, atol=1e-5)
    without_final_norm = x
    assert not torch.allclose(memory, without_final_norm, atol=1e-2)  # negative control: the final norm acts


def test_pre_norm_ends_each_stack_with_a_layer_norm():
    post, pre = tiny(), tiny(pre_norm=True)
    assert isinstance(post.encoder_norm, nn.Identity) and isinstance(post.decoder_norm, nn.Identity)
    assert isinstance(pre.encoder_norm, nn.LayerNorm) and isinstance(pre.decoder_norm, nn.LayerNorm)
    src, _ = random_batch()
    memory, pad = pre.encode(src)
    real = memory[~pad]  # fresh LayerNorm: zero mean and unit variance over features
    torch.testing.assert_close(real.mean(-1), torch.zeros(len(real)), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- masking, causality, dropout


def test_decoder_is_causal():
    model = tiny()
    src, tgt = random_batch()
    changed = tgt.clone()
    changed[:, 4:] = 3
    a, b = model(src, tgt), model(src, changed)
    torch.testing.assert_close(a[:, :4], b[:, :4], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_source_padding_changes_nothing():
    model = tiny()
    src, tgt = random_batch()
    for row in range(src.size(0)):
        length = int(src[row].ne(PAD).sum())
        alone = model(src[row : row + 1, :length], tgt[row : row + 1])
        torch.testing.assert_close(model(src, tgt)[row : row + 1], alone, rtol=1e-5, atol=1e-5)


def test_dropout_acts_only_in_training_and_each_kind_on_its_own():
    src, tgt = random_batch()
    no_dropout = tiny(dropout=0.0, attention_dropout=0.0)
    eval_logits = no_dropout(src, tgt)
    torch.testing.assert_close(no_dropout.train()(src, tgt), eval_logits, rtol=0, atol=0)
    attention_only = tiny(dropout=0.0, attention_dropout=0.5)
    torch.testing.assert_close(attention_only(src, tgt), eval_logits, rtol=0, atol=0)
    assert not torch.allclose(attention_only.train()(src, tgt), eval_logits)
    residual_only = tiny(dropout=0.5, attention_dropout=0.0).train()
    assert not torch.allclose(residual_only(src, tgt), eval_logits)
    after_relu_only = tiny(dropout=0.0, attention_dropout=0.0, activation_dropout=0.5).train()
    assert not torch.allclose(after_relu_only(src, tgt), eval_logits)


# ---------------------------------------------------------------- incremental decoding


@pytest.mark.parametrize("pre_norm", [False, True])
def test_incremental_decoding_gives_the_full_forward_logits(pre_norm):
    model = tiny(pre_norm=pre_norm)
    src, tgt = random_batch()
    full = model(src, tgt)
    cache = model.start_decoding(*model.encode(src))
    steps = [model.decode_step(tgt[:, t], cache) for t in range(tgt.size(1))]
    torch.testing.assert_close(torch.stack(steps, dim=1), full, rtol=0, atol=1e-5)
    assert cache.length == tgt.size(1) and cache.self_kv[0][0].shape[2] == tgt.size(1)


def test_selected_beams_decode_the_hypotheses_they_continue():
    """Two beams per sentence: after select_beams, each row decodes as a full forward pass of the prefix it
    continues, over its own sentence's encoder output (which select_beams does not move)."""
    model = tiny()
    src, _ = random_batch()
    beam = 2
    g = torch.Generator().manual_seed(5)
    prefixes = torch.randint(3, 11, (src.size(0) * beam, 6), generator=g)
    prefixes[:, 0] = BOS
    cache = model.start_decoding(*model.encode(src), beam_size=beam)
    for t in range(3):
        model.decode_step(prefixes[:, t], cache)
    beams = torch.tensor([[1, 1], [1, 0], [0, 0]])  # duplicates and swaps, as beam search does
    rows = (torch.arange(src.size(0))[:, None] * beam + beams).view(-1)
    continued = torch.cat([prefixes[rows, :3], prefixes[:, 3:]], dim=1)
    cache.select_beams(beams)
    steps = [model.decode_step(continued[:, t], cache) for t in range(3, continued.size(1))]
    full = model(src.repeat_interleave(beam, dim=0), continued)
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, 3:], rtol=0, atol=1e-5)


# ---------------------------------------------------------------- loss


def test_label_smoothed_loss_is_torch_cross_entropy_with_label_smoothing():
    torch.manual_seed(0)
    vocab = 13
    logits = torch.randn(3, 6, vocab) * 3
    target = torch.randint(3, vocab, (3, 6))
    target[0, 4:] = PAD
    target[2, 1:] = PAD
    loss, nll = label_smoothed_nll_loss(logits, target, ignore_index=PAD, epsilon=0.1)
    flat_logits, flat_target = logits.view(-1, vocab), target.view(-1)
    expected = F.cross_entropy(flat_logits, flat_target, label_smoothing=0.1, reduction="sum", ignore_index=PAD)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(nll, F.cross_entropy(flat_logits, flat_target, reduction="sum", ignore_index=PAD))
    # Definition written out: 1 - eps on the reference, eps / V on every token, over the 11 non-pad positions.
    log_probs = logits.log_softmax(-1)[target.ne(PAD)]
    reference = target[target.ne(PAD)]
    smoothed = -(0.9 * log_probs.gather(1, reference[:, None]).squeeze(1) + 0.1 / vocab * log_probs.sum(-1)).sum()
    assert len(reference) == 11
    torch.testing.assert_close(loss, smoothed, rtol=1e-6, atol=1e-5)


def test_loss_is_computed_in_fp32_from_low_precision_logits():
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 8192).bfloat16()
    target = torch.randint(3, 8192, (4, 5))
    loss, nll = label_smoothed_nll_loss(logits, target, ignore_index=PAD)
    assert loss.dtype == nll.dtype == torch.float32
    expected_loss, expected_nll = label_smoothed_nll_loss(logits.float(), target, ignore_index=PAD)
    assert torch.equal(loss, expected_loss) and torch.equal(nll, expected_nll)
