"""Small LibriSpeech-shaped corpora of FLACs and manifests, so smoke runs and tests exercise the real data path.

`make_synthetic_librispeech` writes the layout `scripts/prepare_librispeech.py` makes from the official archives
(`LibriSpeech/<split>/<speaker>/<chapter>/*.flac` with `*.trans.txt`, and `<split>.json` manifests written by the
same `write_manifest`), once per machine into a folder named by a hash of its parameters; `LibriSpeechDataset`
then reads it exactly as it reads LibriSpeech. Splits: train-clean-100 (the training set) and the four evaluation
splits. Two kinds:

* "smoke": Gaussian noise of 0.4-1.6 s under random transcripts over the whole vocabulary; nothing to learn, only
  the shapes, lengths and code paths of the real thing.
* "learnable": each character is a tone of its own frequency (50-80 ms, then 15-25 ms of near-silence, so that a
  repeated letter is two tones), short transcripts of 2-4 words of 2-5 letters over `LEARNABLE_LETTERS`, the word
  space a tone too. Each symbol's frequency is the centre of its own mel bin, 7 bins from the next, so the symbols
  stay apart in the 64 log-mel features even after speed perturbation (+-10 % moves a tone by at most ~2 bins).
  Transcribing it is a per-frame classification a tiny Jasper learns with CTC in minutes on a CPU.

Several ranks (or test processes) may call it at once: each writes into a private temporary folder and renames it
into place; the first rename wins and the others discard their copy.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile

from data.cache import cached_directory
from data.librispeech import EVAL_SPLITS, SAMPLE_RATE, VOCABULARY, write_manifest

#: Bump when the generated content changes, so stale caches are not reused.
_FORMAT_VERSION = 1
TRAIN_SPLIT = "train-clean-100"
KINDS = ("smoke", "learnable")
#: The letters of the learnable twin, and the mel bins (of 64, 0-8000 Hz) whose centre frequency each symbol
#: sounds at: the word space first, then the letters in this order.
LEARNABLE_LETTERS = "aeinorst"
LEARNABLE_BINS = tuple(range(3, 64, 7))  # 3, 10, ..., 59: one per symbol
_UTTERANCES_PER_CHAPTER = 8


def make_synthetic_librispeech(
    directory: str | os.PathLike[str] | None = None,
    kind: str = "smoke",
    num_train: int = 32,
    num_eval: int = 8,
    seed: int = 0,
    smoke_seconds: tuple[float, float] = (0.4, 1.6),
) -> dict[str, Path]:
    """The manifests of a synthetic twin, {split: path} for train-clean-100 and the four evaluation splits (all in
    one folder), creating it if needed; the content is a pure function of the arguments other than `directory`.

    Args:
        directory: where the twin's folder is made; None: `$TMPDIR/novograd-synthetic-librispeech`.
        kind: "smoke" (noise) or "learnable" (a tone per character), see the module docstring.
        num_train: utterances of the training split.
        num_eval: utterances of each evaluation split.
        seed: fixes every waveform and transcript.
        smoke_seconds: the shortest and longest smoke utterance (debug=fullsize: the longest training length).
    """
    if kind not in KINDS:
        raise ValueError(f"synthetic LibriSpeech kind must be one of {KINDS}, got {kind!r}")
    if num_train < 1 or num_eval < 1:
        raise ValueError(f"synthetic LibriSpeech needs num_train >= 1 and num_eval >= 1, got {num_train}, {num_eval}")
    if not 0 < smoke_seconds[0] <= smoke_seconds[1]:
        raise ValueError(f"synthetic LibriSpeech smoke_seconds must be [shortest, longest] > 0, got {smoke_seconds}")
    params = {"version": _FORMAT_VERSION, "kind": kind, "num_train": num_train, "num_eval": num_eval, "seed": seed,
              "smoke_seconds": list(smoke_seconds)}
    sizes = {TRAIN_SPLIT: num_train, **{split: num_eval for split in EVAL_SPLITS}}

    def write(root: Path) -> None:
        utterance = (functools.partial(_smoke_utterance, seconds=smoke_seconds) if kind == "smoke"
                     else _learnable_utterance)
        for split_index, (split, size) in enumerate(sizes.items()):
            rng = np.random.default_rng([seed, split_index])
            _write_split(root / "LibriSpeech" / split, split_index, size, utterance, rng)
            write_manifest(root / "LibriSpeech" / split, root / f"{split}.json")

    root = cached_directory("librispeech", params, write, directory, prefix=f"{kind}-")
    return {split: root / f"{split}.json" for split in sizes}


def _write_split(
    split_dir: Path,
    split_index: int,
    size: int,
    utterance: Callable[[np.random.Generator], tuple[np.ndarray, str]],
    rng: np.random.Generator,
) -> None:
    """`size` utterances as LibriSpeech does: chapters of up to 8 under one speaker each, FLAC + trans.txt."""
    for first in range(0, size, _UTTERANCES_PER_CHAPTER):
        chapter = first // _UTTERANCES_PER_CHAPTER
        speaker, chapter_id = 100 * (split_index + 1) + chapter, 1000 + chapter
        chapter_dir = split_dir / str(speaker) / str(chapter_id)
        chapter_dir.mkdir(parents=True)
        lines = []
        for number in range(min(_UTTERANCES_PER_CHAPTER, size - first)):
            name = f"{speaker}-{chapter_id}-{number:04d}"
            waveform, text = utterance(rng)
            soundfile.write(chapter_dir / f"{name}.flac", waveform, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
            lines.append(f"{name} {text.upper()}\n")  # LibriSpeech's transcripts are upper-case
        (chapter_dir / f"{speaker}-{chapter_id}.trans.txt").write_text("".join(lines))


def _smoke_utterance(rng: np.random.Generator, seconds: tuple[float, float]) -> tuple[np.ndarray, str]:
    """`seconds` (shortest, longest) of Gaussian noise, and 1-4 random words of 1-6 characters from the whole
    vocabulary."""
    samples = int(rng.uniform(*seconds) * SAMPLE_RATE)
    letters = VOCABULARY.strip()
    words = ["".join(rng.choice(list(letters), size=rng.integers(1, 7))) for _ in range(rng.integers(1, 5))]
    return np.clip(0.1 * rng.standard_normal(samples), -1, 1), " ".join(words)


def tone_frequencies() -> dict[str, float]:
    """The learnable twin's frequency (Hz) of each symbol: the centre of its mel bin (`LEARNABLE_BINS`)."""
    centres = _slaney_mel_to_hz(np.linspace(0.0, _slaney_hz_to_mel(SAMPLE_RATE / 2), 64 + 2))[1:-1]
    return {symbol: float(centres[b]) for symbol, b in zip(" " + LEARNABLE_LETTERS, LEARNABLE_BINS, strict=True)}


def _learnable_utterance(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """2-4 words of 2-5 letters, one tone per character (space included), between 50-150 ms near-silences."""
    words = ["".join(rng.choice(list(LEARNABLE_LETTERS), size=rng.integers(2, 6))) for _ in range(rng.integers(2, 5))]
    text = " ".join(words)
    frequencies = tone_frequencies()
    pieces = [np.zeros(int(rng.uniform(0.05, 0.15) * SAMPLE_RATE))]
    for character in text:
        samples = int(rng.uniform(0.05, 0.08) * SAMPLE_RATE)
        frequency = frequencies[character] * rng.uniform(0.99, 1.01)
        phase = rng.uniform(0, 2 * np.pi)
        tone = rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * frequency * np.arange(samples) / SAMPLE_RATE + phase)
        pieces += [tone * _fade(samples), np.zeros(int(rng.uniform(0.015, 0.025) * SAMPLE_RATE))]
    pieces.append(np.zeros(int(rng.uniform(0.05, 0.15) * SAMPLE_RATE)))
    waveform = np.concatenate(pieces)
    waveform += 0.01 * rng.standard_normal(waveform.shape)  # a noise floor 40 dB down, so silence is not digital
    return 0.9 * waveform / np.abs(waveform).max(), text


def _fade(samples: int, ramp_seconds: float = 0.005) -> np.ndarray:
    """Raised-cosine ramps in and out: a tone switched on abruptly would splash energy over every mel bin."""
    ramp = min(int(ramp_seconds * SAMPLE_RATE), samples // 2)
    envelope = np.ones(samples)
    rise = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    envelope[:ramp], envelope[samples - ramp :] = rise, rise[::-1]
    return envelope


def _slaney_hz_to_mel(hz: float | np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default): linear below 1 kHz (3 mel per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz * 3.0 / 200.0
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) * 27.0 / np.log(6.4), linear)


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((mel - 15.0) * np.log(6.4) / 27.0), mel * 200.0 / 3.0)
