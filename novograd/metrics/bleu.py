"""BLEU as Table 7 reports it: detokenized SacreBLEU and tokenized BLEU with compounds split.

- `sacrebleu_score`: SacreBLEU's corpus BLEU on detokenized text with its default settings (13a tokenizer, mixed
  case, exponential smoothing), returned with SacreBLEU's signature so a score says how it was computed.
- `tokenized_bleu`: the "tokenized BLEU" of Transformer papers. Two procedures (`procedure`):
  - "t2t" (the default): Tensor2Tensor's `get_ende_bleu.sh`, the script of the TensorFlow Transformer lineage the
    authors' OpenSeq2Seq code comes from: `tokenizer.perl -l de` on hypothesis and reference (default escaping, no
    `-a`, no punctuation normalisation), compounds split (`rich-text` -> `rich ##AT##-##AT## text`), then
    `multi-bleu.perl`.
  - "fairseq": fairseq's WMT14 pipeline, whose `compound_split_bleu.sh` scores text that `prepare-wmt14en2de.sh`
    tokenized: `normalize-punctuation.perl -l de`, `remove-non-printing-char.perl`, `tokenizer.perl -a -l de`
    (hyphens become `@-@`), the same compound split, then `fairseq-score`.
  Tokenization is sacremoses' port of `tokenizer.perl`, made equal to the perl script where the port departs from
  it: the script always splits the period off a sentence's last word ("split last words independently as they are
  unlikely to be non-breaking prefixes"), while sacremoses keeps it when the word is a non-breaking prefix, such
  as German's ordinals 1-99 ("Platz 3." stays one token) or "z.B.". `multi-bleu.perl` and `fairseq-score` both
  compute plain corpus BLEU on whitespace-separated tokens: n-gram precisions up to 4, their geometric mean and
  the brevity penalty, and 0 when some order has no match. SacreBLEU with `tokenize='none'` and
  `smooth_method='none'` is that computation.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

#: The tokenized-BLEU procedures `tokenized_bleu` and `bleu_statistics` offer (module docstring).
TOKENIZED_BLEU_PROCEDURES = ("t2t", "fairseq")

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


def tokenized_bleu(
    hypotheses: Sequence[str], references: Sequence[str], lang: str = "de", procedure: str = "t2t"
) -> float:
    """Tokenized, compound-split BLEU (0-100) of detokenized hypotheses and references (module docstring)."""
    _check_parallel(hypotheses, references)
    tokenize = bleu_tokenizer(procedure, lang)
    bleu = _bleu(tokenized=True)
    return bleu.corpus_score([tokenize(h) for h in hypotheses], [[tokenize(r) for r in references]]).score


@lru_cache(maxsize=None)
def bleu_tokenizer(procedure: str, lang: str = "de") -> Callable[[str], str]:
    """Detokenized line -> the line tokenized BLEU scores, by `procedure` ("t2t" or "fairseq")."""
    if procedure not in TOKENIZED_BLEU_PROCEDURES:
        raise ValueError(f"tokenized BLEU procedure must be one of {TOKENIZED_BLEU_PROCEDURES}, got {procedure!r}")
    tokenizer = _perl_moses_tokenizer()(lang=lang)
    if procedure == "t2t":
        return lambda line: split_compounds(tokenizer.tokenize(line, return_str=True, escape=True))
    from sacremoses import MosesPunctNormalizer

    normalizer = MosesPunctNormalizer(lang=lang)

    def fairseq(line: str) -> str:
        line = remove_non_printing_characters(normalizer.normalize(line))
        return split_compounds(tokenizer.tokenize(line, return_str=True, escape=True, aggressive_dash_splits=True))

    return fairseq


def remove_non_printing_characters(text: str) -> str:
    """`remove-non-printing-char.perl`: every character of Unicode category C (control, format, unassigned,
    private use, surrogate) becomes a space."""
    return "".join(" " if unicodedata.category(char).startswith("C") else char for char in text)


@lru_cache(maxsize=1)
def _perl_moses_tokenizer() -> type:
    """sacremoses' MosesTokenizer with tokenizer.perl's rule for a sentence's last word (module docstring)."""
    from sacremoses import MosesTokenizer

    class PerlMosesTokenizer(MosesTokenizer):
        def handles_nonbreaking_prefixes(self, text: str) -> str:
            tokens = text.split()
            if tokens and (last := _ENDS_WITH_PERIOD.match(tokens[-1])):
                tokens[-1] = last.group(1) + " ."  # then no rule of the port can keep it whole
            return super().handles_nonbreaking_prefixes(" ".join(tokens))

    return PerlMosesTokenizer


_ENDS_WITH_PERIOD = re.compile(r"^(\S+)\.$")


def _bleu(tokenized: bool) -> Any:
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize="none", smooth_method="none") if tokenized else BLEU()


# Corpus BLEU from sums: BLEU is a function of corpus totals (hypothesis and reference lengths, matched and total
# n-grams of each order), so each rank and batch can add its own and one all-reduce gives the corpus score exactly,
# as for WER. The totals are SacreBLEU's own statistics (its `_extract_corpus_statistics` and
# `_compute_score_from_stats`, the two halves of `corpus_score`); tests/test_bleu.py holds them equal to it.

def bleu_statistics(
    hypotheses: Sequence[str], references: Sequence[str], tokenized: bool = False, lang: str = "de",
    procedure: str = "t2t",
) -> list[int]:
    """The summed BLEU statistics of these sentences, for `sacrebleu_score` or (`tokenized`) `tokenized_bleu`."""
    _check_parallel(hypotheses, references)
    if tokenized:
        tokenize = bleu_tokenizer(procedure, lang)
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
