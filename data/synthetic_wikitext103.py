"""Tiny WikiText-103-shaped corpora, written as text and prepared by the real code path (`write_corpus`), so that
smoke runs and tests read exactly the format of the real corpus.

Two kinds, both over `vocab_size` symbols: `<eos>` and the words `w01`, `w02`, ... (zero-padded to one width).

- **smoke**: every token drawn uniformly and independently. Nothing to learn beyond the marginal; it only has to
  flow through the pipeline. Best possible perplexity: `vocab_size`.
- **learnable**: a copy process with a fixed distance D (`copy_distance`) and probability p (`copy_prob`). Each
  position t >= D copies the token at t - D with probability p and otherwise draws a fresh uniform token (which
  may equal the copied one); the first D positions are fresh. Each residue class t mod D is thus its own Markov
  chain, and the classes are independent. Consequences, exact for the stationary stream:
  * a predictor that cannot see position t - D (a context of fewer than D tokens, e.g. one segment of
    tgt_len < D without memory) sees only tokens of other residue classes, which are independent of x_t, and
    x_t is uniform: its best perplexity is `vocab_size`;
  * a predictor that sees x_{t-D} (memory of at least D - 1 hidden states before a segment: the target of
    position t is x_{t+1}, whose source x_{t+1-D} lies D - 1 back) can do no better than
    P(x_t = x_{t-D}) = p + (1 - p)/V, every other word (1 - p)/V, because more history adds nothing to a Markov
    chain: its best perplexity is exp(H) with H = -q ln q - (V - 1) r ln r, q = p + (1 - p)/V, r = (1 - p)/V.
  `theoretical_perplexities` computes both. With V = 64, D = 24, p = 0.9: 64 without the source, 2.074 with it,
  so a tiny Transformer-XL trained with tgt_len 16 and mem_len 32 can only reach a low perplexity through its
  memory. The first D tokens of each evaluation stream have no source in context and cost ln V, so a measured
  perplexity sits slightly above the bound (unless `data.eval.warm_up` reads the text before each stream first).

The text is the token stream written with `<eos>` as line ends (so encoding it, which appends `<eos>` to each line,
gives back the stream exactly); the last token of each split is forced to `<eos>` for that. The vocabulary that
`write_corpus` builds orders the symbols by frequency, so corpus ids are a permutation of the generated symbols.

`make_synthetic_wikitext103` writes the corpus once into a directory named by a hash of its parameters. Several
ranks (or test processes) may call it at once: each writes into a private staging directory and renames it into
place; the first rename wins and the others discard their copy.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from data.cache import cached_directory
from data.wikitext103 import EOS, SPLITS, TEXT_FILES, write_corpus

#: Bump when the generated content changes, so stale caches are not reused.
_FORMAT_VERSION = 1
KINDS = ("smoke", "learnable")


def symbol_names(vocab_size: int) -> list[str]:
    """Symbol s of the generated streams: `<eos>` for 0, else the word `w` + s (zero-padded)."""
    width = len(str(vocab_size - 1))
    return [EOS, *(f"w{symbol:0{width}d}" for symbol in range(1, vocab_size))]


def copy_stream(
    rng: np.random.Generator, length: int, vocab_size: int, copy_distance: int, copy_prob: float
) -> np.ndarray:
    """`length` symbols of the copy process (copy_prob 0: independent uniform symbols); see the module docstring."""
    fresh = rng.integers(0, vocab_size, size=length)
    copies = rng.random(length) < copy_prob
    copies[:copy_distance] = False
    stream = fresh.copy()
    # Positions [start, start + D) copy from [start - D, start), which is final by then: one vector step per D.
    for start in range(copy_distance, length, copy_distance):
        block = slice(start, min(start + copy_distance, length))
        sources = slice(start - copy_distance, block.stop - copy_distance)
        stream[block] = np.where(copies[block], stream[sources], fresh[block])
    return stream


def theoretical_perplexities(vocab_size: int, copy_prob: float) -> dict[str, float]:
    """Best perplexities on the (stationary) copy process: `with_source`, for a predictor that sees the token
    `copy_distance` back, and `without_source`, for one whose context is shorter than that."""
    copied = copy_prob + (1 - copy_prob) / vocab_size
    other = (1 - copy_prob) / vocab_size
    entropy = -copied * math.log(copied) - ((vocab_size - 1) * other * math.log(other) if other > 0 else 0.0)
    return {"with_source": math.exp(entropy), "without_source": float(vocab_size)}


def stream_text(stream: np.ndarray, names: list[str]) -> str:
    """The stream as text: words separated by spaces, each `<eos>` (symbol 0) a line end. Needs stream[-1] == 0."""
    line_ends = np.flatnonzero(stream == 0)
    lines, start = [], 0
    for end in line_ends:
        lines.append(" ".join(names[symbol] for symbol in stream[start:end]) + "\n")
        start = end + 1
    return "".join(lines)


def make_synthetic_wikitext103(
    directory: str | os.PathLike[str] | None = None,
    kind: str = "smoke",
    num_train_tokens: int = 20_000,
    num_eval_tokens: int = 4_000,
    seed: int = 0,
    vocab_size: int = 64,
    copy_distance: int = 24,
    copy_prob: float = 0.9,
) -> Path:
    """Return the root of a prepared synthetic corpus (read it with `data.wikitext103.load_corpus`), creating it if
    needed.

    Args:
        directory: where corpora are cached, one subdirectory per parameter set; None:
            `$TMPDIR/novograd-synthetic-wikitext103`.
        kind: "smoke" (independent uniform tokens) or "learnable" (the copy process).
        num_train_tokens: tokens of the train split; num_eval_tokens: of each of valid and test.
        seed: fixes every token.
        vocab_size: symbols, `<eos>` included; also the corpus's vocabulary size.
        copy_distance, copy_prob: D and p of the learnable kind (ignored by "smoke").
    """
    if kind not in KINDS:
        raise ValueError(f"synthetic WikiText-103 kind must be one of {KINDS}, got {kind!r}")
    if vocab_size < 2 or min(num_train_tokens, num_eval_tokens) < 1 or copy_distance < 1 or not 0 <= copy_prob < 1:
        raise ValueError(
            "synthetic WikiText-103 needs vocab_size >= 2, positive num_train_tokens and num_eval_tokens, "
            "copy_distance >= 1 and 0 <= copy_prob < 1; got "
            f"{vocab_size}, {num_train_tokens}, {num_eval_tokens}, {copy_distance}, {copy_prob}"
        )
    params = {
        "version": _FORMAT_VERSION,
        "kind": kind,
        "num_train_tokens": num_train_tokens,
        "num_eval_tokens": num_eval_tokens,
        "seed": seed,
        "vocab_size": vocab_size,
        **({"copy_distance": copy_distance, "copy_prob": copy_prob} if kind == "learnable" else {}),
    }
    def write(root: Path) -> None:
        _write_corpus(root, kind, num_train_tokens, num_eval_tokens, seed, vocab_size, copy_distance, copy_prob)

    return cached_directory("wikitext103", params, write, directory)


def _write_corpus(
    root: Path,
    kind: str,
    num_train_tokens: int,
    num_eval_tokens: int,
    seed: int,
    vocab_size: int,
    copy_distance: int,
    copy_prob: float,
) -> None:
    rng = np.random.default_rng(seed)
    names = symbol_names(vocab_size)
    text_dir = root / "text"
    text_dir.mkdir(parents=True)
    text_files = {}
    for split in SPLITS:
        length = num_train_tokens if split == "train" else num_eval_tokens
        stream = copy_stream(rng, length, vocab_size, copy_distance, copy_prob if kind == "learnable" else 0.0)
        stream[-1] = 0  # end on <eos>, so that the text's last line holds the stream's tail
        if split == "train" and len(np.unique(stream)) < vocab_size:
            raise ValueError(
                f"num_train_tokens={num_train_tokens} is too small for every one of the {vocab_size} symbols to occur "
                "in the training split (the vocabulary is built from it); use more training tokens"
            )
        text_files[split] = text_dir / TEXT_FILES[split]
        text_files[split].write_text(stream_text(stream, names), encoding="utf-8")
    write_corpus(text_files, root, expected_vocab_size=vocab_size, source=f"synthetic {kind}")
