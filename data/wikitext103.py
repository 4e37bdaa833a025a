"""WikiText-103 as the Transformer-XL authors read it: a word vocabulary from the training text, each split one flat
stream of token ids.

Tokenisation, as the authors' `Vocab` (kimiyoung/transformer-xl [O] and DeepLearningExamples [X] share it) with the
wt103 settings (no lower-casing, `<eos>` the only special symbol, no frequency cutoff, no size limit):
- a line is `line.split()` (Python's whitespace split, which also drops the leading/trailing whitespace the authors
  strip first) followed by `<eos>`; an empty or blank line therefore becomes the single token `<eos>`. Lines are the
  ones Python's text mode iterates (universal newlines), as the authors' `open(path, 'r')` loop.
- the vocabulary is counted on the training text only, without the `<eos>` tokens, and ordered `<eos>` first, then
  by decreasing count. Ties keep the order in which the words first occur in the training text: the authors call
  `collections.Counter.most_common`, a stable sort of a Counter that remembers insertion order, and so do we. On the
  real data this gives 267,735 entries (`WIKITEXT103_VOCAB_SIZE`).
- the validation and test texts are encoded with that vocabulary; WikiText-103 maps its rare words to `<unk>` in
  every split, so no word there is missing from the training vocabulary. (The authors' code fails with an assertion
  if one is; we raise a ValueError naming it.)

On-disk layout under a corpus root (written by `write_corpus`, which both `scripts/prepare_wikitext103.py` and the
synthetic twin call, so that tests read exactly the real format):
    vocab.txt                       one word per line, UTF-8; the line number (from 0) is the word's id; `<eos>` is 0
    train.npy, valid.npy, test.npy  the ids of each split, a flat int32 array in numpy's .npy format, read memory-
                                    mapped (the training split is about 103M tokens, 0.4 GB)
    corpus.json                     written last, so its presence marks a complete corpus: format version,
                                    vocabulary size, tokens per split, and where the text came from

Cutting a split into the B parallel streams of Transformer-XL is the workload's job; `streams` is the authors' cut,
`roll_offsets` DeepLearningExamples' optional rotation of each stream per epoch.
"""

from __future__ import annotations

import io
import json
import os
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from data.progress import Progress, quiet

EOS = "<eos>"
SPLITS = ("train", "valid", "test")
#: The official file of each split, inside `wikitext-103/` of wikitext-103-v1.zip.
TEXT_FILES = {"train": "wiki.train.tokens", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"}
#: Size of the vocabulary built from the real training text [P][O][X].
WIKITEXT103_VOCAB_SIZE = 267_735
VOCAB_FILE = "vocab.txt"
METADATA_FILE = "corpus.json"
FORMAT_VERSION = 1
PREPARE_HINT = (
    "Create it with `make prepare-wikitext103 WT103_ROOT={root}` (from the datasets hub when online, or add "
    "SOURCE=DIR for a folder holding wikitext-103-v1.zip or its extracted wikitext-103/ folder), then point "
    "data.root (or the WT103_ROOT environment variable) at it."
)


class TextDecodeError(ValueError):
    """A text file that is not UTF-8; `path` is the file, the message names the line and the byte."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


class _ProgressReader(io.RawIOBase):
    """A binary file that reports the bytes read through a `Progress` (of the file's size), so a batch log shows
    the step is alive (reading the 515 MB training text takes minutes)."""

    def __init__(self, path: Path, description: str, log: Callable[[str], None]) -> None:
        super().__init__()
        self.file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        self.progress = Progress(description, log, total=os.fstat(self.file.fileno()).st_size, unit="B")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def, override]
        count = self.file.readinto(buffer) or 0
        self.progress.update(count)
        return count

    def close(self) -> None:
        self.progress.close()
        self.file.close()
        super().close()


@contextmanager
def read_text(path: str | os.PathLike[str], description: str, log: Callable[[str], None]) -> Iterator[Iterable[str]]:
    """The lines of a UTF-8 text file as Python's text mode iterates them (universal newlines, as the authors'
    `open(path, 'r')`), with progress (`_ProgressReader`). A byte that is not UTF-8 raises `TextDecodeError`
    naming the file, the line (counted in \\n-terminated lines, as an editor shows them) and the byte."""
    path = Path(path)
    with io.TextIOWrapper(io.BufferedReader(_ProgressReader(path, description, log), 2**20), encoding="utf-8") as text:
        try:
            yield text
        except UnicodeDecodeError as error:
            # Text mode decodes whole chunks ahead of the lines it returns, so the line is found again here.
            raise TextDecodeError(path, _locate_bad_utf8(path, error)) from None


def _locate_bad_utf8(path: Path, error: UnicodeDecodeError) -> str:
    """Where the first non-UTF-8 byte of `path` is, and what to do about it."""
    with open(path, "rb") as binary:
        for line_number, raw in enumerate(binary, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                where = f"line {line_number}, byte {bad.start + 1} of the line (0x{raw[bad.start]:02x})"
                break
        else:  # not reached for a file that failed to decode, but say what the decoder said rather than nothing
            where = f"{error}"
    return (
        f"{path}, {where}: not UTF-8. WikiText-103's files are UTF-8 throughout, so this file is damaged or not "
        "the official one: replace it with the official file (or download wikitext-103-v1.zip again) and run again."
    )


def line_symbols(line: str) -> list[str]:
    """The tokens of one line of text: its whitespace-separated words, then `<eos>`."""
    return [*line.split(), EOS]


def count_words(path: str | os.PathLike[str], log: Callable[[str], None] = quiet) -> Counter[str]:
    """Occurrences of each word of a text file, `<eos>` not counted, in first-occurrence order."""
    counts: Counter[str] = Counter()
    with read_text(path, f"counting {Path(path).name}", log) as lines:
        for line in lines:
            counts.update(line.split())
    return counts


def build_vocab(counts: Counter[str]) -> list[str]:
    """`<eos>` first, then every counted word by decreasing count, ties in first-occurrence order."""
    return [EOS, *(word for word, _ in counts.most_common() if word != EOS)]


def encode_file(
    path: str | os.PathLike[str], word_to_id: Mapping[str, int], log: Callable[[str], None] = quiet
) -> np.ndarray:
    """The ids of every line's tokens (`line_symbols`), concatenated into one flat int32 array."""
    eos_id = word_to_id[EOS]
    ids = array("i")  # a C int: 4 compact bytes per token, where a list of Python ints would take 8 plus the int
    assert ids.itemsize == 4, "array('i') must hold 32-bit integers"
    with read_text(path, f"encoding {Path(path).name}", log) as lines:
        for line_number, line in enumerate(lines, start=1):
            try:
                ids.extend([word_to_id[word] for word in line.split()])
            except KeyError as error:
                raise ValueError(
                    f"{path}, line {line_number}: the word {error.args[0]!r} does not occur in the training text, "
                    "so it has no id. WikiText-103 maps rare words to <unk> in every split; check that the files "
                    "are the tokenized WikiText-103 (wiki.*.tokens), not the raw version (wiki.*.raw)."
                ) from None
            ids.append(eos_id)
    return np.frombuffer(ids, dtype=np.int32)


def write_corpus(
    text_files: Mapping[str, str | os.PathLike[str]],
    root: str | os.PathLike[str],
    expected_vocab_size: int | None = None,
    source: str = "",
    log: Callable[[str], None] = lambda message: None,
) -> Path:
    """Build the vocabulary from `text_files["train"]` and write every split encoded under `root`; return `root`.

    Safe to re-run and resumable: each file is written to a temporary name and renamed into place, and a file that
    is already there is kept, so an interrupted run redoes only what it had not finished. A finished corpus
    (`corpus.json` present) is left as it is.

    Args:
        text_files: the text of each split in `SPLITS`, one line per line of the official files.
        root: directory to write into (created if needed).
        expected_vocab_size: if given, a vocabulary of another size is an error (and is not written): the
            training text is not what it was meant to be.
        source: where the text came from, recorded in corpus.json.
        log: called with a line for each step, and with progress lines inside the long ones (see `read_text`).

    Raises:
        TextDecodeError: a text file is not UTF-8 (it names the file, line and byte).
        ValueError: another problem with the text, named; nothing is marked complete and finished files stay.
    """
    missing = [split for split in SPLITS if split not in text_files]
    if missing:
        raise ValueError(f"write_corpus needs the text of every split {SPLITS}; missing: {missing}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if (root / METADATA_FILE).is_file():
        log(f"{root}: already prepared ({METADATA_FILE} present)")
        return root

    vocab_path = root / VOCAB_FILE
    if vocab_path.is_file():
        vocab = read_vocab(vocab_path)
        log(f"vocabulary: {len(vocab)} words, kept from {vocab_path}")
    else:
        log(f"vocabulary: counting {text_files['train']}")
        vocab = build_vocab(count_words(text_files["train"], log))
    if expected_vocab_size is not None and len(vocab) != expected_vocab_size:
        raise ValueError(
            f"the vocabulary of {text_files['train']} has {len(vocab)} words (with <eos>), expected "
            f"{expected_vocab_size}: the training text is incomplete or not the official WikiText-103. "
            f"Replace it (and delete {vocab_path} if present), then run again."
        )
    if not vocab_path.is_file():
        _write_atomically(vocab_path, lambda file: file.write("".join(f"{word}\n" for word in vocab).encode()))
        log(f"vocabulary: {len(vocab)} words written to {vocab_path}")

    word_to_id = {word: index for index, word in enumerate(vocab)}
    num_tokens = {}
    for split in SPLITS:
        split_path = root / f"{split}.npy"
        if split_path.is_file():
            num_tokens[split] = len(np.load(split_path, mmap_mode="r"))
            log(f"{split}: {num_tokens[split]} tokens, kept from {split_path}")
            continue
        ids = encode_file(text_files[split], word_to_id, log)
        _write_atomically(split_path, lambda file, ids=ids: np.save(file, ids, allow_pickle=False))
        num_tokens[split] = len(ids)
        log(f"{split}: {num_tokens[split]} tokens written to {split_path}")

    metadata = {"format_version": FORMAT_VERSION, "vocab_size": len(vocab), "num_tokens": num_tokens, "source": source}
    _write_atomically(root / METADATA_FILE, lambda file: file.write(json.dumps(metadata, indent=2).encode()))
    return root


def _write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write` on a binary file that becomes `path` only once complete, so a reader never sees half of it."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as file:
            write(file)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def read_vocab(path: str | os.PathLike[str]) -> list[str]:
    """The words of a vocab.txt, in id order."""
    # Words never hold whitespace (they come from str.split), so splitting on "\n" is exact.
    words = Path(path).read_text(encoding="utf-8").split("\n")
    if words[-1] != "":
        raise ValueError(f"{path} does not end with a newline: it is truncated; prepare the corpus again")
    return words[:-1]


@dataclass(frozen=True)
class Corpus:
    """A prepared corpus: the vocabulary and each split's token ids (memory-mapped, read-only)."""

    root: Path
    vocab: tuple[str, ...]
    num_tokens: Mapping[str, int]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @cached_property
    def word_to_id(self) -> dict[str, int]:
        return {word: index for index, word in enumerate(self.vocab)}

    def split(self, name: str) -> np.ndarray:
        """The ids of split `name` ("train", "valid" or "test") as a read-only int32 memmap."""
        if name not in SPLITS:
            raise ValueError(f"unknown WikiText-103 split {name!r}; the splits are {list(SPLITS)}")
        ids = np.load(self.root / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        if ids.dtype != np.int32 or ids.ndim != 1 or len(ids) != self.num_tokens[name]:
            raise ValueError(
                f"{self.root / f'{name}.npy'} holds {ids.dtype} of shape {ids.shape}, expected "
                f"{self.num_tokens[name]} int32 ids: the corpus is damaged; delete {self.root} and prepare it again."
            )
        return ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        """The words of `ids`."""
        return [self.vocab[index] for index in ids]


def read_metadata(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of the complete corpus prepared under `root`, or the error that says how to prepare it: what
    "the data is there" means, for `load_corpus` and the launcher's check."""
    root = Path(root).expanduser()
    metadata_path = root / METADATA_FILE
    if not metadata_path.is_file():
        raise FileNotFoundError(
            f"WikiText-103 not found: {metadata_path} does not exist, so {root} holds no complete prepared corpus. "
            + PREPARE_HINT.format(root=root)
        )
    metadata = json.loads(metadata_path.read_text())
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{root} was prepared in format {metadata.get('format_version')}, this code reads format "
            f"{FORMAT_VERSION}; delete {metadata_path} and prepare again. " + PREPARE_HINT.format(root=root)
        )
    for name in (VOCAB_FILE, *(f"{split}.npy" for split in SPLITS)):
        if not (root / name).is_file():
            raise FileNotFoundError(
                f"{root / name} is missing; delete {metadata_path}. " + PREPARE_HINT.format(root=root)
            )
    return metadata


def load_corpus(root: str | os.PathLike[str], vocab_size: int | None = None) -> Corpus:
    """The corpus prepared under `root`, or a FileNotFoundError that says how to prepare it.

    `vocab_size`, when given (the model's `data.vocab_size`), must equal the corpus's vocabulary size.
    """
    root = Path(root).expanduser()
    metadata = read_metadata(root)
    vocab = tuple(read_vocab(root / VOCAB_FILE))
    if len(vocab) != metadata["vocab_size"] or vocab[0] != EOS:
        raise ValueError(f"{root / VOCAB_FILE} does not match {root / METADATA_FILE}: the corpus is damaged; "
                         "prepare it again")
    if vocab_size is not None and vocab_size != len(vocab):
        raise ValueError(
            f"data.vocab_size is {vocab_size} but the corpus in {root} has {len(vocab)} words; set data.vocab_size "
            f"to {len(vocab)} or point data.root at the intended corpus"
        )
    return Corpus(root=root, vocab=vocab, num_tokens=dict(metadata["num_tokens"]))


def streams(tokens: np.ndarray | Sequence[int], num_streams: int) -> np.ndarray:
    """The authors' batching of an ordered token stream: drop the tail that does not fill `num_streams` equal
    parts, and view the rest as `num_streams` contiguous rows (row i is tokens[i*L:(i+1)*L]). No copy is made."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"streams() cuts a flat token array, got shape {tokens.shape}")
    if num_streams < 1:
        raise ValueError(f"num_streams must be positive, got {num_streams}")
    length = len(tokens) // num_streams
    if length == 0:
        raise ValueError(f"{len(tokens)} tokens cannot fill {num_streams} streams with a token each")
    return tokens[: num_streams * length].reshape(num_streams, length)


def roll_offsets(seed: int, epoch: int, num_streams: int, stream_len: int) -> np.ndarray:
    """How far each of `num_streams` streams of `stream_len` tokens is rotated in epoch `epoch` (DeepLearningExamples'
    `roll`): uniform in [0, stream_len), a pure function of (seed, epoch), so every rank and every resumed run
    draws the same. (DeepLearningExamples rotates the already rotated streams again each epoch, from seed + epoch;
    a sum of uniform rotations is itself uniform, so only the particular offsets differ.)"""
    return np.random.default_rng([seed, epoch]).integers(0, stream_len, size=num_streams)
