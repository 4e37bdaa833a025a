"""Beam search: exact against exhaustive search and against a slow one-sentence-at-a-time version of the same
algorithm, independent of batching, never worse than greedy, and within its length limits."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from models.beam_search import beam_search, length_penalty
from models.transformer import DecoderCache, Transformer

PAD, BOS, EOS = 0, 1, 2
NEVER_GENERATED = (PAD, BOS)


def gnmt_penalty(length: int, alpha: float) -> float:
    """GNMT's length penalty, written here independently of the module under test."""
    return ((5 + length) / 6) ** alpha


class ScriptedModel:
    """A decoder whose next-token logits are a fixed random function of (source, prefix), or given outright.

    It has the interface beam_search uses (encode, start_decoding, decode_step, a cache with select_beams), so the
    search can be checked against exhaustive enumeration on distributions far from uniform, where greedy choices
    are often wrong and the best hypothesis may be long.
    """

    training = False
    pad_id, bos_id, eos_id = PAD, BOS, EOS

    def __init__(self, vocab_size: int, seed: int, scale: float = 3.0, fixed: dict | None = None) -> None:
        self.vocab_size, self.seed, self.scale, self.fixed = vocab_size, seed, scale, fixed or {}
        self.steps = 0  # decode_step calls

    def logits(self, source: tuple[int, ...], prefix: tuple[int, ...]) -> torch.Tensor:
        if prefix in self.fixed:
            return torch.tensor(self.fixed[prefix]).log()
        generator = torch.Generator().manual_seed(hash((self.seed, source, prefix)) & 0x7FFFFFFF)
        return torch.randn(self.vocab_size, generator=generator) * self.scale

    def encode(self, src_tokens):
        return src_tokens, src_tokens.eq(PAD)

    def start_decoding(self, memory, src_pad_mask, beam_size=1):
        sources = [tuple(row[~pad].tolist()) for row, pad in zip(memory, src_pad_mask) for _ in range(beam_size)]
        return ScriptedCache(sources, [() for _ in sources], beam_size)

    def decode_step(self, tokens, cache):
        self.steps += 1
        cache.prefixes = [prefix + (token,) for prefix, token in zip(cache.prefixes, tokens.tolist())]
        return torch.stack([self.logits(s, p) for s, p in zip(cache.sources, cache.prefixes)])


class ScriptedCache:
    def __init__(self, sources, prefixes, beam_size):
        self.sources, self.prefixes, self.beam_size = sources, prefixes, beam_size

    def select_beams(self, beams):
        rows = [b * self.beam_size + j for b, row in enumerate(beams.tolist()) for j in row]
        assert all(self.sources[i] == self.sources[b * self.beam_size] for b, row in enumerate(beams.tolist())
                   for i in rows[b * self.beam_size : (b + 1) * self.beam_size])  # beams stay in their sentence
        self.prefixes = [self.prefixes[i] for i in rows]


def tiny_transformer(vocab: int = 9, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(vocab, d_model=32, d_ff=64, num_heads=4, encoder_layers=2, decoder_layers=2, dropout=0.0)
    with torch.no_grad():  # sharper next-token distributions than at init, so hypotheses differ in score
        model.embed_tokens.weight.mul_(3.0)
    return model.eval()


def next_log_probs(model, source: list[int], prefix: list[int]) -> torch.Tensor:
    """Log-probabilities after `prefix` (BOS first): the scripted table, or a full teacher-forced forward pass."""
    if isinstance(model, ScriptedModel):
        logits = model.logits(tuple(source), tuple(prefix))
    else:
        with torch.no_grad():
            logits = model(torch.tensor([source]), torch.tensor([prefix]))[0, -1]
    return logits.float().log_softmax(-1)


def sequence_score(model, source: list[int], tokens: list[int], alpha: float) -> float:
    """Summed log-probability of tokens + EOS after BOS, divided by the GNMT penalty of len(tokens) + 1."""
    sequence = [BOS, *tokens, EOS]
    total = sum(next_log_probs(model, source, sequence[:i])[sequence[i]].item() for i in range(1, len(sequence)))
    return total / gnmt_penalty(len(tokens) + 1, alpha)


def reference_beam_search(model, source: list[int], beam: int, alpha: float, max_len: int) -> list[int]:
    """The search of models/beam_search.py for one sentence, written with lists and full forward passes."""
    alive, finished = [([BOS], 0.0)], []
    for step in range(max_len + 1):
        candidates = []
        for tokens, score in alive:
            log_probs = next_log_probs(model, source, tokens)
            for token in range(model.vocab_size):
                if token in NEVER_GENERATED or (step == max_len and token != EOS):
                    continue
                candidates.append((tokens + [token], score + log_probs[token].item()))
        candidates = sorted(candidates, key=lambda c: -c[1])[: 2 * beam]
        alive = [c for c in candidates if c[0][-1] != EOS][:beam]
        penalty = gnmt_penalty(step + 1, alpha)
        finished += [(tokens, score / penalty) for tokens, score in candidates if tokens[-1] == EOS]
        finished = sorted(finished, key=lambda f: -f[1])[:beam]
        best_possible = alive[0][1] / gnmt_penalty(max_len + 1, alpha) if alive else -math.inf
        if len(finished) == beam and finished[-1][1] > best_possible:
            break
    return finished[0][0][1:-1]


def greedy(model, source: list[int], max_len: int) -> list[int]:
    tokens = [BOS]
    while tokens[-1] != EOS:
        log_probs = next_log_probs(model, source, tokens)
        log_probs[list(NEVER_GENERATED)] = -math.inf
        if len(tokens) - 1 == max_len:
            log_probs[:EOS] = log_probs[EOS + 1 :] = -math.inf
        tokens.append(int(log_probs.argmax()))
    return tokens[1:-1]


def padded(sources: list[list[int]]) -> torch.Tensor:
    batch = torch.full((len(sources), max(map(len, sources))), PAD)
    for row, source in enumerate(sources):
        batch[row, : len(source)] = torch.tensor(source)
    return batch


SOURCES = [[3, 4, 4, 3, 5], [4], [5, 3, 3], [3, 5, 4, 4, 6, 7, 8, 3], [6, 6]]


# ---------------------------------------------------------------- exactness


def test_length_penalty_is_gnmts():
    assert length_penalty(1, 0.6) == 1.0
    assert length_penalty(7, 0.6) == pytest.approx(2**0.6)
    torch.testing.assert_close(length_penalty(torch.tensor([1, 13]), 0.5), torch.tensor([1.0, 3**0.5]))


def test_a_wide_beam_finds_the_best_sequence_of_exhaustive_search():
    """V = 5 (two real tokens), at most 4 tokens before EOS: 31 sequences; a beam of 32 never prunes any."""
    max_len, alpha, found_lengths, greedy_wrong = 4, 0.6, set(), 0
    for seed in range(12):
        model = ScriptedModel(vocab_size=5, seed=seed)
        source = [3, 4, 4]
        everything = [list(c) for n in range(max_len + 1) for c in itertools.product([3, 4], repeat=n)]
        best = max(everything, key=lambda tokens: sequence_score(model, source, tokens, alpha))
        result = beam_search(model, torch.tensor([source]), beam_size=32, alpha=alpha, max_len_a=0, max_len_b=max_len)
        assert result == [best]
        found_lengths.add(len(best))
        greedy_wrong += greedy(model, source, max_len) != best
    assert len(found_lengths) >= 3 and greedy_wrong > 0  # the cases are not all trivial


@pytest.mark.parametrize("alpha", [0.6, 2.0])
def test_a_wide_beam_on_a_transformer_finds_the_exhaustive_best(alpha):
    model = tiny_transformer(vocab=5)
    for source in ([3, 4, 4, 3], [4], [3, 3, 4]):
        everything = [list(c) for n in range(4) for c in itertools.product([3, 4], repeat=n)]
        best = max(everything, key=lambda tokens: sequence_score(model, source, tokens, alpha))
        result = beam_search(model, torch.tensor([source]), beam_size=16, alpha=alpha, max_len_a=0, max_len_b=3)
        assert result == [best]


@pytest.mark.parametrize("beam", [1, 2, 4])
def test_batched_search_is_the_one_sentence_reference(beam):
    model = tiny_transformer()
    results = beam_search(model, padded(SOURCES), beam_size=beam, alpha=0.6, max_len_a=1.0, max_len_b=3)
    expected = [reference_beam_search(model, s, beam, alpha=0.6, max_len=len(s) + 3) for s in SOURCES]
    assert results == expected


def test_scripted_search_is_the_one_sentence_reference():
    model = ScriptedModel(vocab_size=8, seed=3)
    results = beam_search(model, padded(SOURCES), beam_size=3, alpha=1.0, max_len_a=0.5, max_len_b=2)
    assert results == [reference_beam_search(model, s, 3, alpha=1.0, max_len=int(0.5 * len(s) + 2)) for s in SOURCES]


def test_encoder_keys_values_expanded_once_give_the_search_that_regathers_them_each_step(monkeypatch):
    """The search with the encoder's keys/values expanded once per beam equals the earlier one that re-gathered
    them (and the source mask) with the self-attention cache on every step, hypotheses and scores alike."""
    model = tiny_transformer()
    sources = padded(SOURCES)
    expanded_once = beam_search(model, sources, beam_size=4)
    gathered_each_step = []
    select_beams = DecoderCache.select_beams

    def regather_everything(cache, beams):
        index = (torch.arange(beams.size(0))[:, None] * cache.beam_size + beams).view(-1)
        cache.memory_kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in cache.memory_kv]
        cache.src_mask = cache.src_mask.index_select(0, index)
        gathered_each_step.append(index)
        select_beams(cache, beams)

    monkeypatch.setattr(DecoderCache, "select_beams", regather_everything)
    assert beam_search(model, sources, beam_size=4) == expanded_once
    assert gathered_each_step and any(not torch.equal(i, i.sort().values) for i in gathered_each_step)


def test_batched_result_does_not_depend_on_the_batch():
    model = tiny_transformer()
    together = beam_search(model, padded(SOURCES), beam_size=4)
    alone = [beam_search(model, torch.tensor([s]), beam_size=4)[0] for s in SOURCES]
    reversed_batch = beam_search(model, padded(SOURCES[::-1]), beam_size=4)[::-1]
    assert together == alone == reversed_batch


# ---------------------------------------------------------------- beam 1 and greedy


def test_beam_one_scores_at_least_as_well_as_greedy():
    for seed in range(20):
        model = ScriptedModel(vocab_size=7, seed=seed)
        source = [3, 4]
        result = beam_search(model, torch.tensor([source]), beam_size=1, alpha=0.6, max_len_a=0, max_len_b=6)[0]
        greedy_result = greedy(model, source, max_len=6)
        assert sequence_score(model, source, result, 0.6) >= sequence_score(model, source, greedy_result, 0.6)


def test_beam_one_keeps_the_eos_branch_greedy_walks_past():
    """First token: x 0.6, EOS 0.4; after x: x 0.5, y 0.3, EOS 0.2; after x x: EOS 0.5. Greedy answers x x (0.15);
    beam 1 keeps the empty hypothesis it saw finish on the way (0.4) and stops as soon as its alive x x (0.3)
    can no longer beat it (alpha 0: no length penalty)."""
    x, y, never = 3, 4, 1e-9
    fixed = {
        (BOS,): [never, never, 0.4, 0.6, never],
        (BOS, x): [never, never, 0.2, 0.5, 0.3],
        (BOS, x, x): [never, never, 0.5, 0.25, 0.25],
    }
    model = ScriptedModel(vocab_size=5, seed=0, fixed=fixed)
    assert greedy(model, [x], max_len=3) == [x, x]
    assert beam_search(model, torch.tensor([[x]]), beam_size=1, alpha=0.0, max_len_a=0, max_len_b=3) == [[]]
    assert model.steps == 2  # stopped after two tokens, though the limit allowed four steps


# ---------------------------------------------------------------- length limits and outputs


def test_hypotheses_respect_the_per_sentence_length_limit_and_hold_no_special_tokens():
    model = ScriptedModel(vocab_size=9, seed=1)
    results = beam_search(model, padded(SOURCES), beam_size=4, alpha=3.0, max_len_a=1.0, max_len_b=1)
    for source, tokens in zip(SOURCES, results):
        assert len(tokens) <= len(source) + 1
        assert not set(tokens) & {PAD, BOS, EOS}
    assert any(len(t) == len(s) + 1 for s, t in zip(SOURCES, results))  # alpha 3 favours length: limits bind
    assert beam_search(model, padded(SOURCES), beam_size=4, max_len_a=0, max_len_b=0) == [[]] * len(SOURCES)


def test_training_mode_is_refused():
    model = tiny_transformer().train()
    with pytest.raises(RuntimeError, match="model.eval"):
        beam_search(model, torch.tensor([[3, 4]]))
