"""Transformer-XL: the paper's parameter count, relative attention and the adaptive softmax against slow obvious
implementations, and segment-level recurrence against one long forward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from models.transformer_xl import AdaptiveLogSoftmax, TransformerXL, rel_shift
from novograd.engine.compose import compose_config

TINY = dict(vocab_size=60, n_layer=2, d_model=16, n_head=2, d_head=4, d_inner=24, dropout=0.0, cutoffs=[10, 30])


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def transformer_xl_count(vocab, n_layer, d_model, n_head, d_head, d_inner, n_clusters) -> int:
    """All parameters from the architecture alone, for a tied softmax with div_val 1."""
    inner = n_head * d_head
    attention = 3 * d_model * inner + d_model * inner + inner * d_model + 2 * d_model  # q, k, v; W_r; out; LN
    feed_forward = d_model * d_inner + d_inner + d_inner * d_model + d_model + 2 * d_model
    shared_biases = 2 * inner  # u, v
    softmax = vocab + n_clusters * (d_model + 1)  # word biases; cluster vectors and biases (vectors tied)
    return vocab * d_model + n_layer * (attention + feed_forward) + shared_biases + softmax


def test_base_model_has_the_papers_191_95m_parameters_on_meta():
    with torch.device("meta"):
        model = TransformerXL(vocab_size=267_735)
    expected = transformer_xl_count(267_735, 16, 512, 8, 64, 2048, n_clusters=3)
    assert count(model) == expected == 191_950_298
    assert round(expected / 1e6, 2) == 191.95  # DeepLearningExamples' base; the paper rounds to 191M
    assert model.softmax.weight is model.embedding.weight
    with torch.device("meta"):
        untied = TransformerXL(vocab_size=267_735, tie_weight=False)
    assert count(untied) - count(model) == 267_735 * 512


def test_configs_build_the_base_and_a_runnable_tiny_model():
    base = compose_config(["model=transformer_xl_base"]).model
    with torch.device("meta"):
        model = instantiate(base)
    assert count(model) == 191_950_298
    assert (base.tgt_len, base.mem_len, base.clamp_len, base.same_length) == (128, 512, None, False)
    tiny = instantiate(compose_config(["model=transformer_xl_tiny"]).model)
    tokens = torch.randint(0, tiny.softmax.vocab_size, (2, tiny.tgt_len))
    nll, mems = tiny(tokens, tokens.roll(-1, 1))
    assert nll.shape == (2, tiny.tgt_len) and len(mems) == len(tiny.layers)


def test_initialisation_follows_deeplearningexamples():
    torch.manual_seed(0)
    model = TransformerXL(vocab_size=500, n_layer=2, d_model=64, n_head=4, d_head=16, d_inner=256, cutoffs=[100])
    matrices = [model.embedding.weight, model.softmax.cluster_weight, model.content_bias, model.position_bias]
    matrices += [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    for weight in matrices:
        assert weight.mean().abs() < 0.01 and abs(weight.std().item() - 0.02) < 0.004
    gains = torch.cat([m.weight for m in model.modules() if isinstance(m, nn.LayerNorm)])
    assert abs(gains.mean().item() - 1) < 0.01 and abs(gains.std().item() - 0.02) < 0.004
    biases = [m.bias for m in model.modules() if isinstance(m, (nn.Linear, nn.LayerNorm)) and m.bias is not None]
    assert all(not b.any() for b in biases + [model.softmax.bias, model.softmax.cluster_bias])


# ---------------------------------------------------------------------------------------------------------------
# Relative attention against explicit loops


def sinusoid(distance: int, dim: int) -> torch.Tensor:
    """R_distance of Transformer-XL: sines of distance / 10000^(2k/dim), k < dim/2, then the cosines."""
    angles = [distance / 10000 ** (2 * k / dim) for k in range(dim // 2)]
    return torch.tensor([math.sin(a) for a in angles] + [math.cos(a) for a in angles], dtype=torch.float64)


def reference_attention(attention, x, memory, u, v, clamp_len, max_distance) -> torch.Tensor:
    """Query i (key position M+i) scores key j by ((q_i + u) . k_j + (q_i + v) . W_r R_{M+i-j}) / sqrt(d_head) over
    the keys with 0 <= M+i-j (<= max_distance), softmax, sum of values, output projection, residual, LayerNorm."""
    context = torch.cat([memory, x], dim=1)
    batch, query_len, d_model = x.shape
    mem_len, key_len = memory.shape[1], context.shape[1]
    heads, d_head = u.shape
    w_key, w_value = attention.key_value.weight.chunk(2)
    out = torch.zeros(batch, query_len, heads * d_head, dtype=x.dtype)
    for b in range(batch):
        for h in range(heads):
            rows = slice(h * d_head, (h + 1) * d_head)
            for i in range(query_len):
                q = attention.query.weight[rows] @ x[b, i]
                scores, values = [], []
                for j in range(key_len):
                    distance = mem_len + i - j
                    if distance < 0 or (max_distance is not None and distance > max_distance):
                        continue
                    clamped = distance if clamp_len is None else min(distance, clamp_len)
                    r = attention.position.weight[rows] @ sinusoid(clamped, d_model)
                    k = w_key[rows] @ context[b, j]
                    scores.append(((q + u[h]) @ k + (q + v[h]) @ r) / math.sqrt(d_head))
                    values.append(w_value[rows] @ context[b, j])
                probs = torch.softmax(torch.stack(scores), dim=0)
                out[b, i, rows] = (probs[:, None] * torch.stack(values)).sum(0)
    return attention.layer_norm(x + out @ attention.out.weight.T)


@pytest.mark.parametrize(
    "memory_len, mem_len, clamp_len, same_length",
    [(0, 8, None, False), (3, 8, None, False), (3, 8, 2, False), (3, 3, None, True), (5, 2, 1, True)],
)
def test_relative_attention_matches_explicit_loops(memory_len, mem_len, clamp_len, same_length):
    torch.manual_seed(0)
    model = TransformerXL(**TINY, mem_len=mem_len, clamp_len=clamp_len, same_length=same_length).double()
    seen = []
    for layer in model.layers:
        layer.attention.register_forward_hook(lambda module, args, output: seen.append((module, args, output)))
    tokens = torch.randint(0, 60, (2, 4))
    mems = [torch.randn(2, memory_len, 16, dtype=torch.float64) for _ in model.layers]
    model(tokens, tokens, mems)
    assert len(seen) == 2
    max_distance = mem_len if same_length else None
    for attention, (x, memory, *_), output in seen:
        u, v = model.content_bias, model.position_bias
        expected = reference_attention(attention, x, memory, u, v, clamp_len, max_distance)
        torch.testing.assert_close(output, expected, rtol=1e-10, atol=1e-10)


def test_rel_shift_lines_up_distances_with_keys():
    query_len, key_len = 3, 5
    scores = torch.arange(query_len * key_len).view(query_len, key_len)  # column r: distance key_len-1-r
    shifted = rel_shift(scores)
    for i in range(query_len):
        for j in range(key_len - query_len + i + 1):  # causal positions only
            assert shifted[i, j] == scores[i, query_len - 1 - i + j]


def test_attention_gradients_reach_every_parameter_and_not_the_memory():
    torch.manual_seed(0)
    model = TransformerXL(**TINY, mem_len=4)
    tokens = torch.randint(0, 60, (2, 4))
    _, mems = model(tokens, tokens)
    nll, new_mems = model(tokens, tokens, mems)
    nll.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert not any(m.requires_grad for m in mems + new_mems)


# ---------------------------------------------------------------------------------------------------------------
# Adaptive softmax


def all_token_logprobs(softmax: AdaptiveLogSoftmax, hidden: torch.Tensor) -> torch.Tensor:
    """(N, V) log-probabilities of every word, by scoring each hidden state against every target."""
    vocab = softmax.vocab_size
    targets = torch.arange(vocab).repeat(hidden.shape[0])
    return -softmax(hidden.repeat_interleave(vocab, dim=0), targets).view(hidden.shape[0], vocab)


def test_adaptive_softmax_is_a_normalised_hierarchical_model():
    torch.manual_seed(0)
    cutoffs, vocab = [10, 20, 30], 50
    softmax = AdaptiveLogSoftmax(vocab, 8, cutoffs, weight=None)
    for p in softmax.parameters():
        nn.init.normal_(p)
    hidden = torch.randn(5, 8)
    logprobs = all_token_logprobs(softmax, hidden)
    torch.testing.assert_close(logprobs.logsumexp(-1), torch.zeros(5), atol=1e-5, rtol=0)

    head = F.log_softmax(
        hidden @ torch.cat([softmax.weight[:10], softmax.cluster_weight]).T
        + torch.cat([softmax.bias[:10], softmax.cluster_bias]),
        dim=-1,
    )
    for word in range(vocab):
        if word < 10:
            expected = head[:, word]
        else:
            cluster = sum(word >= c for c in cutoffs) - 1  # 0, 1, 2 for the tails [10, 20), [20, 30), [30, 50)
            start, end = (cutoffs + [vocab])[cluster], (cutoffs + [vocab])[cluster + 1]
            tail = F.log_softmax(hidden @ softmax.weight[start:end].T + softmax.bias[start:end], dim=-1)
            expected = head[:, 10 + cluster] + tail[:, word - start]
        torch.testing.assert_close(logprobs[:, word], expected, atol=1e-5, rtol=1e-5)


def test_adaptive_softmax_keeps_target_order_and_without_cutoffs_is_cross_entropy():
    torch.manual_seed(0)
    softmax = AdaptiveLogSoftmax(50, 8, [10, 20, 30], weight=None)
    for p in softmax.parameters():
        nn.init.normal_(p)
    hidden, targets = torch.randn(40, 8), torch.randint(0, 50, (40,))
    full = all_token_logprobs(softmax, hidden)
    torch.testing.assert_close(softmax(hidden, targets), -full[torch.arange(40), targets])

    plain = AdaptiveLogSoftmax(50, 8, [], weight=None)
    nn.init.normal_(plain.weight), nn.init.normal_(plain.bias)
    expected = F.cross_entropy(hidden @ plain.weight.T + plain.bias, targets, reduction="none")
    torch.testing.assert_close(plain(hidden, targets), expected)


@pytest.mark.parametrize("cutoffs", [[0, 10], [10, 10], [20, 10], [10, 50]])
def test_adaptive_softmax_rejects_bad_cutoffs(cutoffs):
    with pytest.raises(ValueError, match="cutoffs"):
        AdaptiveLogSoftmax(50, 8, cutoffs, weight=None)


# ---------------------------------------------------------------------------------------------------------------
# Segment-level recurrence


def test_three_segments_with_memory_equal_one_long_forward():
    """With memory holding the whole history, attention over [memory, segment] is attention over the full prefix."""
    torch.manual_seed(0)
    segment = 5
    model = TransformerXL(**TINY, mem_len=3 * segment).eval()
    tokens, targets = torch.randint(0, 60, (2, 3 * segment)), torch.randint(0, 60, (2, 3 * segment))
    with torch.no_grad():
        whole, whole_mems = model(tokens, targets)
        mems, pieces = None, []
        for start in range(0, 3 * segment, segment):
            nll, mems = model(tokens[:, start : start + segment], targets[:, start : start + segment], mems)
            pieces.append(nll)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, atol=1e-5, rtol=1e-5)
    for carried, at_once in zip(mems, whole_mems):
        torch.testing.assert_close(carried, at_once, atol=1e-5, rtol=1e-5)


def test_memory_keeps_the_last_mem_len_layer_inputs():
    torch.manual_seed(0)
    model = TransformerXL(**TINY, mem_len=10).eval()
    mems, lengths = None, []
    with torch.no_grad():
        for _ in range(4):
            tokens = torch.randint(0, 60, (3, 4))
            _, mems = model(tokens, tokens, mems)
            lengths.append(mems[0].shape[1])
    assert lengths == [4, 8, 10, 10]
    assert len(mems) == 2 and all(m.shape == (3, 10, 16) for m in mems)
    # Layer 0's memory ends with the last segment's scaled embeddings (dropout is off in eval).
    torch.testing.assert_close(mems[0][:, -4:], model.embedding(tokens) * 4.0)


def test_mem_len_zero_carries_nothing():
    torch.manual_seed(0)
    model = TransformerXL(**TINY, mem_len=0).eval()
    tokens = torch.randint(0, 60, (2, 6))
    with torch.no_grad():
        first, mems = model(tokens, tokens)
        second, _ = model(tokens, tokens, mems)
    assert [m.shape for m in mems] == [(2, 0, 16)] * 2
    torch.testing.assert_close(second, first)


def test_eval_settings_change_the_context_and_are_validated():
    torch.manual_seed(0)
    model = TransformerXL(**TINY, mem_len=6).eval()
    tokens = torch.randint(0, 60, (2, 4))
    with torch.no_grad():
        _, mems = model(tokens, tokens)
        _, mems = model(tokens, tokens, mems)
        train_view, _ = model(tokens, tokens, mems)
        model.reset_length(tgt_len=4, mem_len=2, clamp_len=1, same_length=True)
        eval_view, new_mems = model(tokens, tokens, mems)
    assert not torch.allclose(train_view, eval_view)
    assert new_mems[0].shape == (2, 2, 16)
    with pytest.raises(ValueError, match="mem_len"):
        model.reset_length(tgt_len=4, mem_len=-1, clamp_len=None, same_length=False)
    with pytest.raises(ValueError, match="mems must be 2 tensors"):
        model(tokens, tokens, mems[:1])


def test_bfloat16_autocast_runs_and_stays_close_to_float32():
    torch.manual_seed(0)
    model = TransformerXL(**TINY, mem_len=8).eval()
    tokens = torch.randint(0, 60, (2, 8))
    with torch.no_grad():
        exact, _ = model(tokens, tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed, mems = model(tokens, tokens)
    assert mixed.dtype == torch.float32 and mems[0].dtype == torch.float32
    torch.testing.assert_close(mixed, exact, atol=0.05, rtol=0.02)
