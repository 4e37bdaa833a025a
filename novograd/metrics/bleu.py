"""BLEU as Table 7 reports it: detokenized SacreBLEU and tokenized BLEU with compounds split.

- `sacrebleu_score`: SacreBLEU's corpus BLEU on detokenized text with its default settings (13a tokenizer, mixed
  case, exponential smoothing), returned with SacreBLEU's signature so a score says how it was computed.
- `tokenized_bleu`: the "tokenized BLEU" of Transformer papers, as fairseq's `compound_split_bleu.sh` and
  Tensor2Tensor's `get_ende_bleu.sh` compute it: Moses-tokenize hypothesis and reference (German rules, the
  default escaping of `tokenizer.perl`, no aggressive hyphen splitting), split hyphenated compounds
  (`rich-text` -> `rich ##AT##-##AT## text`) and score the result with multi-bleu semantics. Those scripts ran
  `multi-bleu.perl` (Tensor2Tensor) or `fairseq-score` (fairseq), which both compute plain corpus BLEU on
  whitespace-separated tokens: n-gram precisions up to 4, their geometric mean and the brevity penalty, and 0
  when some order has no match. SacreBLEU with `tokenize='none'` and `smooth_method='none'` is that computation;
  its default exponential smoothing would differ only when an n-gram order has no match at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

#: The compound-splitting rule of the scripts above, `s{(\S)-(\S)}{$1 ##AT##-##AT## $2}g`. Like sed and perl,
#: re.sub replaces non-overlapping matches left to right, so `a-b-c` becomes `a ##AT##-##AT## b-c`.
_COMPOUND_HYPHEN = re.compile(r"(\S)-(\S)")


def split_compounds(text: str) -> str:
    """Put a space and ##AT## markers around every hyphen between two non-space characters."""
    return _COMPOUND_HYPHEN.sub(r"\1 ##AT##-##AT## \2", text)


def _check_parallel(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{len(hypotheses)} hypotheses for {len(references)} references: BLEU needs one hypothesis per "
            "reference sentence, in the same order"
        )


def sacrebleu_score(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """Corpus SacreBLEU of detokenized hypotheses against one detokenized reference each.

    Returns the score (0-100) and SacreBLEU's signature, e.g.
    `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`.
    """
    from sacrebleu.metrics import BLEU

    _check_parallel(hypotheses, references)
    bleu = BLEU()
    score = bleu.corpus_score(list(hypotheses), [list(references)])
    return score.score, str(bleu.get_signature())


def tokenized_bleu(hypotheses: Sequence[str], references: Sequence[str], lang: str = "de") -> float:
    """Tokenized, compound-split BLEU (0-100) of detokenized hypotheses and references (module docstring)."""
    _check_parallel(hypotheses, references)
    tokenize = _moses_compound_split(lang)
    bleu = _bleu(tokenized=True)
    return bleu.corpus_score([tokenize(h) for h in hypotheses], [[tokenize(r) for r in references]]).score


def _moses_compound_split(lang: str) -> Callable[[str], str]:
    from sacremoses import MosesTokenizer

    tokenizer = MosesTokenizer(lang=lang)
    return lambda line: split_compounds(tokenizer.tokenize(line, return_str=True, escape=True))


def _bleu(tokenized: bool) -> Any:
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize="none", smooth_method="none") if tokenized else BLEU()


# Corpus BLEU from sums: BLEU is a function of corpus totals (hypothesis and reference lengths, matched and total
# n-grams of each order), so each rank and batch can add its own and one all-reduce gives the corpus score exactly,
# as for WER. The totals are SacreBLEU's own statistics (its `_extract_corpus_statistics` and
# `_compute_score_from_stats`, the two halves of `corpus_score`); tests/test_bleu.py holds them equal to it.

def bleu_statistics(
    hypotheses: Sequence[str], references: Sequence[str], tokenized: bool = False, lang: str = "de"
) -> list[int]:
    """The summed BLEU statistics of these sentences, for `sacrebleu_score` or (`tokenized`) `tokenized_bleu`."""
    _check_parallel(hypotheses, references)
    if tokenized:
        tokenize = _moses_compound_split(lang)
        hypotheses, references = [tokenize(h) for h in hypotheses], [tokenize(r) for r in references]
    per_sentence = _bleu(tokenized)._extract_corpus_statistics(list(hypotheses), [list(references)])
    return [sum(column) for column in zip(*per_sentence)] if per_sentence else []


def bleu_signature(tokenized: bool = False) -> str:
    """SacreBLEU's signature of the BLEU that `bleu_statistics(..., tokenized)` feeds: how the score was computed."""
    bleu = _bleu(tokenized)
    bleu.corpus_score(["x"], [["x"]])  # the signature names the number of references, known once one is scored
    return str(bleu.get_signature())


def bleu_from_statistics(statistics: Sequence[float], tokenized: bool = False) -> float:
    """The corpus BLEU (0-100) of statistics summed with `bleu_statistics`."""
    return _bleu(tokenized)._compute_score_from_stats([int(round(value)) for value in statistics]).score
