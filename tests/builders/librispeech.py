"""Tiny LibriSpeech archives in the official openslr.org/12 format, for the tests of the prepare path.

`write_archive` writes `<split>.tar.gz` as openslr distributes it: `LibriSpeech/<split>/<speaker>/<chapter>/`
holding `<speaker>-<chapter>-<utterance>.flac` (16 kHz mono 16-bit FLAC, written with soundfile) and one
`<speaker>-<chapter>.trans.txt` per chapter (`<utterance id> <UPPER-CASE TEXT>` per line), plus the top-level
`LibriSpeech/README.TXT` beside the split. Damage can be asked for, so tests can check each error.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np
import soundfile

SAMPLE_RATE = 16000
#: A few utterances per split (id -> (seconds, transcript)): two speakers, one with two chapters.
UTTERANCES = {
    "84-121-0000": (0.6, "HE'S HERE"),
    "84-121-0001": (0.4, "NO"),
    "84-122-0000": (0.5, "A B C"),
    "174-50-0000": (0.7, "IT IS SO"),
}


def flac_bytes(seconds: float, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> bytes:
    """`seconds` of quiet noise as mono PCM-16 FLAC bytes (16 kHz, as LibriSpeech, unless told otherwise)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, 0.1 * rng.standard_normal(int(seconds * sample_rate)), sample_rate, subtype="PCM_16",
                    format="FLAC")
    return buffer.getvalue()


def write_archive(
    archives: Path,
    split: str,
    utterances: Mapping[str, tuple[float, str]] = UTTERANCES,
    seed: int = 0,
    garbage_header: Collection[str] = (),
    transcript_bytes: Mapping[str, bytes] | None = None,
    truncate_to: int | None = None,
    sample_rates: Mapping[str, int] | None = None,
) -> Path:
    """Write `archives/<split>.tar.gz` in the official layout and return its path.

    Args:
        utterances: utterance id (`<speaker>-<chapter>-<n>`) -> (seconds of audio, transcript as LibriSpeech
            writes it, upper-case).
        seed: fixes the audio.
        garbage_header: utterance ids whose FLAC is replaced by bytes that are no FLAC header.
        transcript_bytes: `<speaker>-<chapter>` -> the raw bytes of that chapter's `.trans.txt`, replacing the
            lines made from `utterances` (e.g. a non-UTF-8 byte, an empty transcript).
        truncate_to: cut the finished `.tar.gz` to this many bytes (a broken download).
        sample_rates: utterance id -> a sample rate other than LibriSpeech's 16 kHz for its FLAC.
    """
    archives.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    path = archives / f"{split}.tar.gz"
    chapters: dict[str, list[str]] = {}
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "LibriSpeech/README.TXT", b"LibriSpeech ASR corpus (a tiny test copy)\n")
        for name, (seconds, text) in utterances.items():
            speaker, chapter, _ = name.split("-")
            rate = (sample_rates or {}).get(name, SAMPLE_RATE)
            audio = b"\x00garbage, no FLAC header" * 40 if name in garbage_header else flac_bytes(seconds, rng, rate)
            _add(tar, f"LibriSpeech/{split}/{speaker}/{chapter}/{name}.flac", audio)
            chapters.setdefault(f"{speaker}-{chapter}", []).append(f"{name} {text}\n")
        for stem, lines in chapters.items():
            speaker, chapter = stem.split("-")
            data = (transcript_bytes or {}).get(stem, "".join(lines).encode())
            _add(tar, f"LibriSpeech/{split}/{speaker}/{chapter}/{stem}.trans.txt", data)
    if truncate_to is not None:
        path.write_bytes(path.read_bytes()[:truncate_to])
    return path


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
