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
from collections.abc import Sequence

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
    from sacrebleu.metrics import BLEU
    from sacremoses import MosesTokenizer

    _check_parallel(hypotheses, references)
    tokenizer = MosesTokenizer(lang=lang)

    def prepare(line: str) -> str:
        return split_compounds(tokenizer.tokenize(line, return_str=True, escape=True))

    bleu = BLEU(tokenize="none", smooth_method="none")
    return bleu.corpus_score([prepare(h) for h in hypotheses], [[prepare(r) for r in references]]).score
