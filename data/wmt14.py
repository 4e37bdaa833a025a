"""WMT14 English-German for Transformer-big: a joint sentencepiece BPE, pre-encoded token arrays, and a Dataset.

The text is tokenised once, by `prepare_translation_data` (called by scripts/prepare_wmt14.py for the real corpus
and by data/synthetic_wmt14.py for its twins), into this layout under `root`:

    meta.json                         written last: its presence marks a complete dataset. Vocabulary size, special
                                      ids, filters, languages, and per-split counts (pairs read, kept, dropped).
    spm.model                         the joint source+target sentencepiece BPE model
    spm.json                          the parameters spm.model was trained with (a re-run reuses it if they match)
    <split>/                          train, newstest2013 (valid), newstest2014 (test)
        src.tokens.npy, tgt.tokens.npy    every sentence's ids followed by EOS, concatenated; uint16 when the
                                          vocabulary fits, else int32
        src.offsets.npy, tgt.offsets.npy  int64, N + 1 entries: pair i is tokens[offsets[i]:offsets[i + 1]]
        src.txt, tgt.txt                  evaluation splits only: the raw (detokenized) text, line i = pair i;
                                          tgt.txt holds the references for BLEU
        split.json                        the split's counts and the parameters it was encoded with

Everything is read memory-mapped, so a DataLoader worker touches only the pairs it loads, and an epoch is planned
from the offsets alone (lengths = np.diff(offsets)) without decoding anything.

Special ids are fixed: PAD 0, UNK 1, BOS 2, EOS 3. A sequence's *length* counts its EOS: it is the number of
positions the model sees (the target shifted right, BOS + tgt[:-1], has the same length as the target). The
dataset returns src + EOS and tgt + EOS; `collate` builds the decoder input by the shift.

Training pairs are filtered at preparation (fairseq's and Moses' clean-corpus conventions): a pair is dropped when
either side is empty, else when either side is longer than `max_len` (256 [O]/fairseq, lengths as above), else
when the longer side is more than `max_len_ratio` (1.5, Moses' clean-corpus-n default as used by fairseq's
prepare-wmt14en2de.sh) times the shorter. Each pair counts under the first reason that applies; the counts go to
meta.json. Evaluation sets are never filtered: BLEU is over every sentence of newstest2013/2014. A Dataset can
tighten the training filters further at load time (e.g. [O]'s 56-token limit) without re-preparing.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import itertools
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import data.progress
from data.progress import Progress, format_duration

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SIDES = ("src", "tgt")
TRAIN_SPLIT = "train"
FORMAT_VERSION = 1
PREPARE_COMMAND = "make prepare-wmt14 WMT14_ROOT=DIR [SOURCE=hub|DIR]"
_ENCODE_CHUNK_LINES = 100_000


# --- tokenizer ------------------------------------------------------------------------------------------------

class Tokenizer:
    """The joint sentencepiece BPE model: text to ids and ids back to detokenized text.

    Picklable (sentencepiece processors pickle their model), so DataLoader workers and evaluation can share it.
    """

    def __init__(self, model_path: str | os.PathLike[str]) -> None:
        import sentencepiece

        self.model_path = Path(model_path)
        self.processor = sentencepiece.SentencePieceProcessor(model_file=str(self.model_path))
        ids = (self.processor.pad_id(), self.processor.unk_id(), self.processor.bos_id(), self.processor.eos_id())
        if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise ValueError(
                f"{self.model_path} has pad/unk/bos/eos ids {ids}, expected {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}: "
                f"it was not trained by this suite's prepare; run `{PREPARE_COMMAND}`."
            )

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Subword ids of `text`, without BOS or EOS."""
        return self.processor.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return self.processor.encode(list(texts), num_threads=num_threads)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Detokenized text of `ids`, up to the first EOS; PAD and BOS are dropped (a decoder's raw output)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        ids = list(ids)
        if EOS_ID in ids:
            ids = ids[: ids.index(EOS_ID)]
        return self.processor.decode([i for i in ids if i not in (PAD_ID, BOS_ID)])

    def decode_batch(self, batch: Sequence[Sequence[int]] | torch.Tensor) -> list[str]:
        return [self.decode(ids) for ids in batch]


# --- reading --------------------------------------------------------------------------------------------------

def read_meta(root: str | os.PathLike[str]) -> dict[str, Any]:
    """meta.json of a prepared dataset, or a FileNotFoundError that says how to prepare one."""
    path = Path(root).expanduser() / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"WMT14 not found: {path} is missing (no prepared dataset under {path.parent}, or its preparation did "
            f"not finish). Prepare it with `{PREPARE_COMMAND}`, then point data.root (or the WMT14_ROOT environment "
            "variable) at it."
        )
    meta = json.loads(path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {meta.get('format_version')}, this code reads {FORMAT_VERSION}: re-run "
            f"`{PREPARE_COMMAND}` on it."
        )
    return meta


class TranslationDataset(torch.utils.data.Dataset):
    """One prepared split: `dataset[i]` is (src ids + EOS, tgt ids + EOS) as int64 tensors.

    Args:
        root: a directory written by `prepare_translation_data`.
        split: `train`, or an evaluation set's name (newstest2013, newstest2014).
        max_len, max_len_ratio: training split only: drop pairs beyond these limits at load time. They may only
            tighten the filters the split was prepared with (dropped pairs cannot come back); None keeps those.

    `src_lengths` and `tgt_lengths` (numpy int64, lengths including EOS) come from the offsets alone, for
    planning token-budget batches. The token arrays are memory-mapped lazily in each process, so pickling the
    dataset for a spawned worker copies no tokens.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        max_len: int | None = None,
        max_len_ratio: float | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.meta = read_meta(self.root)
        if split not in self.meta["splits"]:
            raise ValueError(f"{self.root} holds no split {split!r}; it holds {sorted(self.meta['splits'])}")
        self.split = split
        self.split_dir = self.root / split
        self._arrays: dict[str, np.ndarray] = {}
        src_lengths, tgt_lengths = (np.diff(self._array(f"{side}.offsets")) for side in SIDES)
        self._pairs = self._filter(src_lengths, tgt_lengths, max_len, max_len_ratio)
        if self._pairs is not None:
            src_lengths, tgt_lengths = src_lengths[self._pairs], tgt_lengths[self._pairs]
        self.src_lengths: np.ndarray = src_lengths
        self.tgt_lengths: np.ndarray = tgt_lengths

    def _filter(
        self, src_lengths: np.ndarray, tgt_lengths: np.ndarray, max_len: int | None, max_len_ratio: float | None
    ) -> np.ndarray | None:
        """Indices of the pairs within the load-time limits, or None when they keep every pair."""
        if self.split != TRAIN_SPLIT or (max_len is None and max_len_ratio is None):
            return None
        prepared = self.meta["filters"]
        for name, value in (("max_len", max_len), ("max_len_ratio", max_len_ratio)):
            if value is not None and value > prepared[name]:
                flag = name.replace("_", "-")
                raise ValueError(
                    f"data.{name}={value} is looser than the {prepared[name]} {self.root} was prepared with; the "
                    f"pairs beyond it were dropped. Re-run scripts/prepare_wmt14.py --{flag} {value} (or lower "
                    f"data.{name})."
                )
        max_len = prepared["max_len"] if max_len is None else max_len
        max_len_ratio = prepared["max_len_ratio"] if max_len_ratio is None else max_len_ratio
        keep = pair_filter(src_lengths, tgt_lengths, max_len, max_len_ratio) == KEPT
        return None if keep.all() else np.flatnonzero(keep)

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        return Tokenizer(self.root / "spm.model")

    @property
    def references(self) -> list[str]:
        """Raw target text of an evaluation split, one string per pair: the BLEU references."""
        return self._raw_text("tgt")

    @property
    def sources(self) -> list[str]:
        """Raw source text of an evaluation split, one string per pair."""
        return self._raw_text("src")

    def _raw_text(self, side: str) -> list[str]:
        path = self.split_dir / f"{side}.txt"
        if not path.is_file():
            raise ValueError(f"the {self.split!r} split keeps no raw text ({path}); only evaluation splits do")
        # newline="\n": only "\n" ends a sentence, as when it was written (a stray "\r" stays inside its line).
        with open(path, encoding="utf-8", newline="\n") as file:
            return [line.removesuffix("\n") for line in file]

    def __len__(self) -> int:
        return len(self.src_lengths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pair = int(self._pairs[index]) if self._pairs is not None else index
        return self._sentence("src", pair), self._sentence("tgt", pair)

    def _sentence(self, side: str, pair: int) -> torch.Tensor:
        offsets = self._array(f"{side}.offsets")
        ids = self._array(f"{side}.tokens")[offsets[pair] : offsets[pair + 1]]
        return torch.from_numpy(ids.astype(np.int64))

    def _array(self, name: str) -> np.ndarray:
        """`split_dir/name.npy`, memory-mapped on first use in this process."""
        if name not in self._arrays:
            self._arrays[name] = np.load(self.split_dir / f"{name}.npy", mmap_mode="r")
        return self._arrays[name]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}}  # a pickled memmap would carry a copy of its whole array


def collate(samples: Sequence[tuple[torch.Tensor, torch.Tensor]], pad_id: int = PAD_ID) -> dict[str, torch.Tensor]:
    """Pad a list of (src, tgt) pairs into a batch; the decoder input is the target shifted right.

    Returns `src` (B, S) and `target` (B, T) right-padded with `pad_id`; `tgt_input` (B, T) = BOS + target[:-1]
    per row (teacher forcing: position t predicts target[t] from target[:t]); `src_lengths` (B,) including EOS;
    `ntokens`, a 0-dim tensor: the non-pad target tokens, the count the loss is normalised by.
    """
    from torch.nn.utils.rnn import pad_sequence

    sources = [src for src, _ in samples]
    targets = [tgt for _, tgt in samples]
    bos = torch.tensor([BOS_ID], dtype=torch.long)
    shifted = [torch.cat([bos, tgt[:-1]]) for tgt in targets]
    target = pad_sequence(targets, batch_first=True, padding_value=pad_id)
    return {
        "src": pad_sequence(sources, batch_first=True, padding_value=pad_id),
        "src_lengths": torch.tensor([len(src) for src in sources], dtype=torch.long),
        "tgt_input": pad_sequence(shifted, batch_first=True, padding_value=pad_id),
        "target": target,
        "ntokens": target.ne(pad_id).sum(),
    }


def build_wmt14_datasets(
    root: str | os.PathLike[str],
    vocab_size: int,
    eval_sets: Mapping[str, str],
    max_len: int | None = None,
    max_len_ratio: float | None = None,
) -> tuple[TranslationDataset, dict[str, TranslationDataset]]:
    """The training split and the named evaluation sets ({"valid": "newstest2013", ...}) of a prepared root.

    `vocab_size` (the model's, data.vocab_size) must be the vocabulary the data was encoded with.
    """
    train = TranslationDataset(root, TRAIN_SPLIT, max_len=max_len, max_len_ratio=max_len_ratio)
    if train.vocab_size != vocab_size:
        raise ValueError(
            f"{train.root} was encoded with a {train.vocab_size}-token vocabulary but data.vocab_size is "
            f"{vocab_size}: set data.vocab_size={train.vocab_size} or re-prepare with --vocab-size {vocab_size}."
        )
    return train, {name: TranslationDataset(root, split) for name, split in eval_sets.items()}


# --- writing --------------------------------------------------------------------------------------------------

KEPT, DROPPED_EMPTY, DROPPED_TOO_LONG, DROPPED_RATIO = 0, 1, 2, 3
_DROP_REASONS = {DROPPED_EMPTY: "dropped_empty", DROPPED_TOO_LONG: "dropped_too_long", DROPPED_RATIO: "dropped_ratio"}


def pair_filter(src_lengths: np.ndarray, tgt_lengths: np.ndarray, max_len: int, max_len_ratio: float) -> np.ndarray:
    """Per pair, KEPT or the first reason to drop it. Lengths include EOS, so an empty sentence has length 1."""
    shorter = np.minimum(src_lengths, tgt_lengths)
    longer = np.maximum(src_lengths, tgt_lengths)
    return np.select(
        [shorter <= 1, longer > max_len, longer > max_len_ratio * shorter],
        [DROPPED_EMPTY, DROPPED_TOO_LONG, DROPPED_RATIO],
        default=KEPT,
    )


def prepare_translation_data(
    root: str | os.PathLike[str],
    texts: Mapping[str, tuple[Path, Path]],
    languages: tuple[str, str],
    vocab_size: int,
    max_len: int = 256,
    max_len_ratio: float = 1.5,
    input_sentence_size: int = 2_000_000,
    character_coverage: float = 0.9999,
    seed: int = 0,
    num_threads: int = 1,
    source: str = "",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the joint BPE on the training text, encode every split, write the layout of this module's docstring.

    Args:
        root: output directory (created).
        texts: split name -> (source text file, target text file), parallel and line-aligned, UTF-8. Must hold
            `train`; every other split is an evaluation set (kept whole, raw text copied).
        languages: (source, target) language codes, recorded in meta.json.
        vocab_size: sentencepiece vocabulary, special ids included.
        max_len, max_len_ratio: the training-pair filters (see the module docstring).
        input_sentence_size: sentences sentencepiece samples (shuffled) from both training sides to learn the BPE;
            the whole corpus is too large to learn from and would gain nothing.
        character_coverage: fraction of characters the vocabulary covers; the rest become UNK. Below 1.0 so that
            the stray characters of web-crawled text (Common Crawl) do not each take a slot of the 8192.
        seed: sentencepiece's sampling seed.
        num_threads: for sentencepiece training and encoding.
        source: where the text came from, recorded in meta.json.

    Resumable: the BPE model and each split are reused when their stamp (the parameters and input files they were
    made from) matches, so a re-run after an interruption redoes only what is missing. Every output is written
    under a temporary name (a hidden file or directory, which a re-run clears) and renamed into place, and
    meta.json is written last. One preparation at a time per root.
    """
    root = Path(root).expanduser()
    if TRAIN_SPLIT not in texts:
        raise ValueError(f"texts must hold a {TRAIN_SPLIT!r} split; got {sorted(texts)}")
    for files in texts.values():
        _check_aligned(files)
    root.mkdir(parents=True, exist_ok=True)
    (root / "meta.json").unlink(missing_ok=True)  # incomplete until rewritten at the end
    for leftover in root.glob(".*.*"):  # staging files and directories of an interrupted run
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
    spm_params = {
        "model_type": "bpe",
        "vocab_size": vocab_size,
        "input_sentence_size": input_sentence_size,
        "shuffle_input_sentence": True,
        "character_coverage": character_coverage,
        "seed": seed,
        "pad_id": PAD_ID,
        "unk_id": UNK_ID,
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
    }
    _train_sentencepiece(root, texts[TRAIN_SPLIT], spm_params, num_threads, log)
    tokenizer = Tokenizer(root / "spm.model")
    model_digest = hashlib.sha256((root / "spm.model").read_bytes()).hexdigest()
    splits = {}
    for split, files in texts.items():
        is_train = split == TRAIN_SPLIT
        stamp = {
            "spm_model_sha256": model_digest,
            "inputs": [_file_stamp(path) for path in files],
            "filters": {"max_len": max_len, "max_len_ratio": max_len_ratio} if is_train else None,
        }
        splits[split] = _encode_split(root, split, files, tokenizer, stamp, num_threads, log)
    meta = {
        "format_version": FORMAT_VERSION,
        "languages": {"src": languages[0], "tgt": languages[1]},
        "vocab_size": tokenizer.vocab_size,
        "special_ids": {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID},
        "length": "subword tokens + EOS",
        "filters": {"max_len": max_len, "max_len_ratio": max_len_ratio, "applied_to": TRAIN_SPLIT},
        "sentencepiece": spm_params,
        "source": source,
        "splits": splits,
    }
    _write_atomically(root / "meta.json", json.dumps(meta, indent=2))
    return meta


def _file_stamp(path: Path) -> dict[str, Any]:
    """Identifies an input file's version cheaply (no hashing of gigabytes of text)."""
    stat = Path(path).stat()
    return {"name": Path(path).name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _train_sentencepiece(
    root: Path, train_files: tuple[Path, Path], params: dict[str, Any], num_threads: int, log: Callable[[str], None]
) -> None:
    import sentencepiece

    stamp = {**params, "inputs": [_file_stamp(path) for path in train_files]}
    stamp_path = root / "spm.json"
    if (root / "spm.model").is_file() and stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
        log(f"reusing {root / 'spm.model'}")
        return
    log(f"training a {params['vocab_size']}-token joint BPE on {params['input_sentence_size']} sampled sentences "
        f"of {train_files[0].name} and {train_files[1].name} (progress every {data.progress.INTERVAL_S:.0f} s)")
    # Sentences come through an iterator and the model back as bytes, rather than file names in and a model
    # prefix out: sentencepiece records those paths inside the model, which would then differ by where it was made.
    model = io.BytesIO()
    reading = Progress("BPE: sentences read", log, bar=False)  # a bar would be torn by the heartbeat's lines
    sentences = itertools.chain.from_iterable(_lines(path) for path in train_files)
    sentencepiece.set_random_generator_seed(params["seed"])
    with _heartbeat(log, "BPE training"):
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=reading.counted(sentences),
            model_writer=model,
            num_threads=num_threads,
            minloglevel=1,  # warnings and errors only: its own log runs to hundreds of lines; _heartbeat reports
            **{key: value for key, value in params.items() if key != "seed"},
        )
    log(f"BPE trained on {reading.count:,} sentences in {format_duration(reading.elapsed_s)}")
    _write_atomically(root / "spm.model", model.getvalue())
    _write_atomically(stamp_path, json.dumps(stamp, indent=2))


@contextlib.contextmanager
def _heartbeat(log: Callable[[str], None], what: str) -> Iterator[None]:
    """While the body runs (a library call that reports nothing), log every `progress.INTERVAL_S` that it still is."""
    stop, start = threading.Event(), time.monotonic()

    def beat() -> None:
        while not stop.wait(data.progress.INTERVAL_S):
            log(f"{what}: running for {format_duration(time.monotonic() - start)}")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _lines(path: Path) -> Iterator[str]:
    """The lines of a text file without their ends.

    newline="\\n": only "\\n" ends a sentence. Python's universal newlines would also split at a stray "\\r"
    (present in crawled text) and misalign the two sides of a corpus.
    """
    with open(path, encoding="utf-8", newline="\n") as file:
        for line in file:
            yield line.removesuffix("\n").removesuffix("\r")


class TextError(ValueError):
    """An input text file that cannot be prepared; the message names the file (and line) and what to do."""


def check_text_file(path: Path) -> int:
    """The number of lines of a text file, after checking that it is UTF-8 (a TextError names the first bad line).

    Read in blocks cut after a line end, so a multi-byte character is never split between two blocks.
    """
    count, last, carry = 0, b"\n", b""
    with open(path, "rb") as file:
        while block := file.read(1 << 24):
            block, last = carry + block, block[-1:]
            cut = block.rfind(b"\n") + 1
            block, carry = block[:cut], block[cut:]
            _check_utf8(path, block, count)
            count += block.count(b"\n")
    _check_utf8(path, carry, count)
    return count + (last != b"\n")  # a last line without its "\\n" still counts


def _check_utf8(path: Path, block: bytes, lines_before: int) -> None:
    try:
        block.decode("utf-8")
    except UnicodeDecodeError as error:
        line_start = block.rfind(b"\n", 0, error.start) + 1
        line = lines_before + block.count(b"\n", 0, error.start) + 1
        raise TextError(
            f"{path}, line {line}: byte {block[error.start]:#04x} at column {error.start - line_start + 1} is not "
            f"UTF-8 ({error.reason}). Every WMT14 text file must be UTF-8: re-encode the file (e.g. `iconv -f "
            "latin1 -t utf-8`) or fix that line, then re-run."
        ) from None


def _check_aligned(files: tuple[Path, Path]) -> None:
    counts = [check_text_file(path) for path in files]
    if counts[0] != counts[1]:
        raise TextError(
            f"{files[0]} ({counts[0]} lines) and {files[1]} ({counts[1]} lines) are not line-aligned: line i of "
            "one must be the translation of line i of the other."
        )


def _encode_split(
    root: Path,
    split: str,
    files: tuple[Path, Path],
    tokenizer: Tokenizer,
    stamp: dict[str, Any],
    num_threads: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Encode one split into root/split/ (or reuse it when its stamp matches); return its counts."""
    split_dir = root / split
    info_path = split_dir / "split.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if info["stamp"] == stamp:
            log(f"reusing {split_dir}")
            return info["counts"]
    log(f"encoding {split} from {files[0]} and {files[1]}")
    staging = root / f".{split}.{os.getpid()}"
    staging.mkdir()
    try:
        progress = Progress(f"{split}: pairs encoded", log, bar=False)  # lines only: a caller's silent log silences it
        counts = _write_split(staging, files, tokenizer, stamp["filters"], num_threads, progress)
        (staging / "split.json").write_text(json.dumps({"stamp": stamp, "counts": counts}, indent=2))
        shutil.rmtree(split_dir, ignore_errors=True)
        os.replace(staging, split_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"{split}: {counts}")
    return counts


def _write_split(
    out_dir: Path,
    files: tuple[Path, Path],
    tokenizer: Tokenizer,
    filters: dict[str, float] | None,
    num_threads: int,
    progress: Progress,
) -> dict[str, int]:
    """Encode the line-aligned `files` into token arrays in `out_dir`; `filters` None keeps every pair and the
    raw text (an evaluation split)."""
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    writers = {side: _TokenArrayWriter(out_dir, side, dtype) for side in SIDES}
    counts = {"pairs_read": 0, "pairs_kept": 0, **{reason: 0 for reason in _DROP_REASONS.values()}}
    with contextlib.ExitStack() as stack:
        raw_text = {} if filters is not None else {
            side: stack.enter_context(open(out_dir / f"{side}.txt", "w", encoding="utf-8", newline="\n"))
            for side in SIDES
        }
        for lines in _parallel_chunks(files):
            encoded = {side: tokenizer.encode_batch(lines[side], num_threads) for side in SIDES}
            lengths = {side: np.array([len(ids) + 1 for ids in encoded[side]], dtype=np.int64) for side in SIDES}
            counts["pairs_read"] += len(lengths["src"])
            progress.update(len(lengths["src"]))
            if filters is None:
                keep = np.ones(len(lengths["src"]), dtype=bool)
                for side, file in raw_text.items():
                    file.writelines(line + "\n" for line in lines[side])
            else:
                verdict = pair_filter(lengths["src"], lengths["tgt"], filters["max_len"], filters["max_len_ratio"])
                for code, reason in _DROP_REASONS.items():
                    counts[reason] += int(np.count_nonzero(verdict == code))
                keep = verdict == KEPT
            counts["pairs_kept"] += int(keep.sum())
            for side in SIDES:
                writers[side].append([encoded[side][i] for i in np.flatnonzero(keep)], lengths[side][keep])
    for side in SIDES:
        counts[f"{side}_tokens"], counts[f"max_{side}_len"] = writers[side].finish()
    return counts


def _parallel_chunks(files: tuple[Path, Path]) -> Iterator[dict[str, list[str]]]:
    """Chunks of aligned lines, {"src": [...], "tgt": [...]}, without line ends."""
    pairs = zip(_lines(files[0]), _lines(files[1]), strict=True)
    while chunk := list(itertools.islice(pairs, _ENCODE_CHUNK_LINES)):
        yield {side: list(lines) for side, lines in zip(SIDES, zip(*chunk))}


class _TokenArrayWriter:
    """Appends sentences (ids, then EOS) to a flat array on disk without holding the split in memory; `finish`
    turns it into side.tokens.npy and side.offsets.npy."""

    def __init__(self, out_dir: Path, side: str, dtype: type[np.integer]) -> None:
        self.out_dir, self.side, self.dtype = out_dir, side, dtype
        self.raw_path = out_dir / f"{side}.tokens.bin"
        self.raw = open(self.raw_path, "wb")
        self.lengths: list[np.ndarray] = []

    def append(self, sentences: list[list[int]], lengths: np.ndarray) -> None:
        if sentences:
            flat = np.fromiter(itertools.chain.from_iterable(ids + [EOS_ID] for ids in sentences),
                               dtype=self.dtype, count=int(lengths.sum()))
            flat.tofile(self.raw)
        self.lengths.append(lengths)

    def finish(self) -> tuple[int, int]:
        """Write the .npy files; return (total tokens, longest sentence)."""
        self.raw.close()
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, dtype=np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        np.save(self.out_dir / f"{self.side}.offsets.npy", offsets)
        total = int(offsets[-1])
        tokens = np.lib.format.open_memmap(self.out_dir / f"{self.side}.tokens.npy", mode="w+",
                                           dtype=self.dtype, shape=(total,))
        if total:
            raw = np.memmap(self.raw_path, dtype=self.dtype, mode="r", shape=(total,))
            for start in range(0, total, 1 << 26):
                tokens[start : start + (1 << 26)] = raw[start : start + (1 << 26)]
            del raw
        tokens.flush()
        del tokens
        self.raw_path.unlink()
        return total, int(lengths.max(initial=0))


def _write_atomically(path: Path, content: str | bytes) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_bytes(content.encode() if isinstance(content, str) else content)
    os.replace(staging, path)
