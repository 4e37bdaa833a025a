"""Batched beam search with the GNMT length penalty, on the Transformer's incremental decoder.

The search is the authors' (OpenSeq2Seq's `beam_search.py`, from Tensor2Tensor), run for every sentence and beam
of a batch at once:
- each step grows the K alive hypotheses of a sentence by every token and keeps the 2K best extensions by summed
  log-probability; of those, the K best that did not end in EOS stay alive, and those that did compete, scored
  by log-probability / ((5 + length) / 6) ** alpha (length counts EOS, not BOS), for the sentence's K finished
  slots;
- a sentence is done when even its best alive hypothesis cannot beat its worst finished one: log-probabilities
  only fall and the penalty grows with length, so an alive hypothesis scores at most its log-probability divided
  by the penalty of the longest allowed length; or when it reaches its length limit.
The best finished hypothesis is the translation. Unlike fairseq's search, which stops at the first K finished
hypotheses, this one goes on while a longer hypothesis could still score better; so even beam 1 is not greedy
decoding: its alive hypothesis follows the greedy path past greedy's EOS, every EOS extension on the way
competes for the finished slot, and the result is greedy's hypothesis or one that scores better.

Where this differs from OpenSeq2Seq, it is for batching and follows fairseq: the length limit is per sentence,
max_len_a * source length + max_len_b tokens before EOS (source length counts the non-pad tokens; OpenSeq2Seq
decoded one sentence per batch with a limit of source length + 50), EOS is forced at the limit so every sentence
ends with a finished hypothesis, and pad and BOS are never generated. So a sentence's translation does not
depend on the other sentences of its batch.

One host synchronisation per step (is every sentence done?); everything else stays on the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.transformer import Transformer


def length_penalty(length: Tensor | int, alpha: float) -> Tensor | float:
    """GNMT's length penalty ((5 + length) / 6) ** alpha (Wu et al. 2016); scores are log-probability / this."""
    return ((5 + length) / 6) ** alpha


@torch.no_grad()
def beam_search(
    model: Transformer,
    src_tokens: Tensor,
    beam_size: int = 4,
    alpha: float = 0.6,
    max_len_a: float = 1.0,
    max_len_b: int = 50,
) -> list[list[int]]:
    """Translate a batch: (batch, S) right-padded source ids -> the best hypothesis of each sentence.

    Args:
        model: the translation model, in eval mode.
        src_tokens: source ids, padded with `model.pad_id`.
        beam_size: hypotheses kept alive (and finished) per sentence; the paper's decoder used 4.
        alpha: exponent of the GNMT length penalty; 0.6 in the authors' decoder.
        max_len_a, max_len_b: a sentence may have at most max_len_a * source length + max_len_b tokens before EOS.
    Returns:
        one list of token ids per sentence, without BOS and EOS.
    """
    if model.training:
        raise RuntimeError("beam_search needs the model in eval mode (model.eval()): dropout would randomise it")
    batch, k, vocab = src_tokens.size(0), beam_size, model.vocab_size
    device = src_tokens.device
    memory, src_pad_mask = model.encode(src_tokens)
    cache = model.start_decoding(memory, src_pad_mask, beam_size=k)  # rows: sentence-major, k per sentence

    max_lengths = (max_len_a * (~src_pad_mask).sum(dim=1) + max_len_b).long()  # tokens before EOS
    steps = int(max_lengths.max()) + 1  # + the EOS step
    width = steps + 1  # BOS + tokens

    alive_tokens = torch.full((batch, k, width), model.pad_id, dtype=torch.long, device=device)
    alive_tokens[:, :, 0] = model.bos_id
    # Only the first beam is live at the start: the K copies would otherwise propose the same extensions K times.
    alive_scores = torch.full((batch, k), float("-inf"), device=device)
    alive_scores[:, 0] = 0.0
    finished_tokens = torch.full_like(alive_tokens, model.pad_id)
    finished_scores = torch.full((batch, k), float("-inf"), device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)

    never_generated = torch.zeros(vocab, dtype=torch.bool, device=device)
    never_generated[[model.pad_id, model.bos_id]] = True
    not_eos = torch.ones(vocab, dtype=torch.bool, device=device)
    not_eos[model.eos_id] = False
    best_final_penalty = length_penalty(max_lengths + 1, alpha)  # the longest allowed length, EOS included

    for step in range(steps):
        logits = model.decode_step(alive_tokens[:, :, step].reshape(-1), cache)
        log_probs = F.log_softmax(logits.float(), dim=-1).view(batch, k, vocab)
        at_limit = max_lengths.eq(step)
        banned = never_generated | (at_limit[:, None, None] & not_eos)  # (batch, 1, vocab)
        log_probs = log_probs.masked_fill(banned, float("-inf"))

        # The 2K best extensions: enough that K of them do not end in EOS.
        scores = (alive_scores[:, :, None] + log_probs).view(batch, k * vocab)
        candidate_scores, candidate_ids = scores.topk(2 * k, dim=1)
        candidate_beams = candidate_ids // vocab
        candidate_tokens = candidate_ids % vocab
        candidates = alive_tokens.gather(1, candidate_beams[:, :, None].expand(-1, -1, width))
        candidates[:, :, step + 1] = candidate_tokens
        ends = candidate_tokens.eq(model.eos_id)

        alive_scores, keep = candidate_scores.masked_fill(ends, float("-inf")).topk(k, dim=1)
        alive_tokens = candidates.gather(1, keep[:, :, None].expand(-1, -1, width))
        cache.select_beams(candidate_beams.gather(1, keep))

        # A sentence that is done keeps being extended until the whole batch is, but changes no more: past its
        # limit its hypotheses all scored -inf, and before it none can beat its worst finished one.
        new_finished_scores = (candidate_scores / length_penalty(step + 1, alpha)).masked_fill(~ends, float("-inf"))
        finished_scores, best = torch.cat([finished_scores, new_finished_scores], dim=1).topk(k, dim=1)
        finished_tokens = torch.cat([finished_tokens, candidates], dim=1).gather(
            1, best[:, :, None].expand(-1, -1, width)
        )

        cannot_improve = finished_scores[:, -1] > alive_scores[:, 0] / best_final_penalty
        done |= at_limit | cannot_improve
        if bool(done.all()):
            break

    return [_strip_specials(row, model.eos_id) for row in finished_tokens[:, 0, 1:].tolist()]


def _strip_specials(tokens: list[int], eos_id: int) -> list[int]:
    """A hypothesis row after BOS -> its tokens before EOS (the rest of the row is padding)."""
    return tokens[: tokens.index(eos_id)]
