"""Small WMT14-shaped parallel corpora, so smoke runs and tests go through the real tokenizer and data path.

`make_synthetic_wmt14` generates text in two invented "languages" (words of 2-4 letters over disjoint alphabets),
writes it as line-aligned files, and hands them to `data.wmt14.prepare_translation_data`: the same sentencepiece
BPE training, encoding, filtering and on-disk layout as the real corpus, read by the same `TranslationDataset`,
with splits named `train`, `newstest2013`, `newstest2014` and `newstest2014_filtered` so the real
evaluation-set config applies unchanged.

Two kinds:
- `smoke`: source and target sentences are unrelated random words (same word count). Nothing to learn; it
  exercises every code path, the length-ratio filter included (BPE lengths of unrelated sentences differ).
- `learnable`: the target is the source read backwards, each word replaced through a fixed one-to-one
  dictionary, 3 to 12 words. A tiny Transformer learns this in minutes on a CPU, so BLEU rises far above 0.
  The vocabulary is small enough that most words end up as single BPE tokens.

Written once per machine into a directory named by a hash of the parameters (written into a private staging
directory, then renamed into place, so concurrent ranks or tests never read a half-written corpus).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from data.cache import cached_directory
from data.wmt14 import prepare_translation_data

#: Bump when the generated content changes, so stale caches are not reused.
_FORMAT_VERSION = 2
KINDS = ("smoke", "learnable")
_SRC_ALPHABET = "abcdefghij"
_TGT_ALPHABET = "klmnopqrst"
_EVAL_SPLITS = ("newstest2013", "newstest2014", "newstest2014_filtered")


def make_synthetic_wmt14(
    kind: str = "smoke",
    num_train: int = 512,
    num_eval: int = 32,
    vocab_size: int = 64,
    num_words: int = 16,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    words_per_sentence: tuple[int, int] = (3, 12),
) -> Path:
    """Return the root of a prepared synthetic corpus (the layout of data/wmt14.py), creating it if needed.

    Args:
        kind: "smoke" (unrelated random sentences) or "learnable" (reversed word-by-word translation).
        num_train: training pairs generated (the length-ratio filter may drop some; meta.json counts them).
        num_eval: pairs in each evaluation split (never filtered).
        vocab_size: the BPE vocabulary (4 special ids included); the corpus must hold enough distinct subwords,
            which 16 words per language do for up to about 100.
        num_words: dictionary size of each language.
        seed: fixes the text and the BPE.
        cache_dir: where the corpus is written; defaults to `$TMPDIR/novograd-synthetic-wmt14`.
        words_per_sentence: the fewest and most words of a sentence (debug=fullsize: the longest pairs).
    """
    if kind not in KINDS:
        raise ValueError(f"synthetic WMT14 kind must be one of {KINDS}, got {kind!r}")
    shortest, longest = words_per_sentence
    if min(num_train, num_eval, num_words, shortest) < 1 or longest < shortest:
        raise ValueError(
            f"synthetic WMT14 needs positive num_train, num_eval, num_words and words_per_sentence [min, max] with "
            f"min <= max; got {num_train}, {num_eval}, {num_words}, {list(words_per_sentence)}"
        )
    params = {
        "version": _FORMAT_VERSION,
        "kind": kind,
        "num_train": num_train,
        "num_eval": num_eval,
        "vocab_size": vocab_size,
        "num_words": num_words,
        "seed": seed,
        "words_per_sentence": [shortest, longest],
    }
    def write(root: Path) -> None:
        texts = _write_text(root / "raw", kind, num_train, num_eval, num_words, seed, (shortest, longest))
        prepare_translation_data(root, texts, languages=("synthetic-src", "synthetic-tgt"),
                                 vocab_size=vocab_size, character_coverage=1.0, seed=seed,
                                 source=f"synthetic {kind}", log=lambda message: None)
        shutil.rmtree(root / "raw")  # the evaluation splits keep their own copy of the raw text

    return cached_directory("wmt14", params, write, cache_dir)


def _write_text(
    raw_dir: Path, kind: str, num_train: int, num_eval: int, num_words: int, seed: int,
    words_per_sentence: tuple[int, int],
) -> dict[str, tuple[Path, Path]]:
    """Write `<split>.src` / `<split>.tgt` text files; return {split: (src path, tgt path)}."""
    rng = np.random.default_rng(seed)
    src_words = _lexicon(rng, _SRC_ALPHABET, num_words)
    tgt_words = _lexicon(rng, _TGT_ALPHABET, num_words)
    dictionary = rng.permutation(num_words)  # source word i translates to target word dictionary[i]
    raw_dir.mkdir(parents=True)
    texts = {}
    for split, count in (("train", num_train), *((name, num_eval) for name in _EVAL_SPLITS)):
        lines = {"src": [], "tgt": []}
        for _ in range(count):
            source = rng.integers(num_words, size=rng.integers(words_per_sentence[0], words_per_sentence[1] + 1))
            target = dictionary[source[::-1]] if kind == "learnable" else rng.integers(num_words, size=len(source))
            lines["src"].append(" ".join(src_words[i] for i in source))
            lines["tgt"].append(" ".join(tgt_words[i] for i in target))
        paths = (raw_dir / f"{split}.src", raw_dir / f"{split}.tgt")
        for path, side in zip(paths, ("src", "tgt")):
            path.write_text("".join(line + "\n" for line in lines[side]), encoding="utf-8")
        texts[split] = paths
    return texts


def _lexicon(rng: np.random.Generator, alphabet: str, num_words: int) -> list[str]:
    """`num_words` distinct words of 2 to 4 letters from `alphabet`."""
    words: dict[str, None] = {}  # insertion-ordered set, so the lexicon depends on the seed only
    while len(words) < num_words:
        words["".join(rng.choice(list(alphabet), size=rng.integers(2, 5)))] = None
    return list(words)
