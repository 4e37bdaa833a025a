"""LibriSpeech for Jasper (Tables 4-5): manifests, the character vocabulary, log-mel features, batches and WER.

Layout under `root` (what `scripts/prepare_librispeech.py` writes, and the synthetic twins too):
`LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utterance>.flac` as in the official archives, and
one JSON-lines manifest per split, `<split>.json`, in NeMo's format: `{"audio_filepath", "duration", "text"}` per
line, the path relative to the manifest's directory (absolute paths are read too), the duration in seconds from
the FLAC header, the transcript lower-case with its apostrophes.

Features, in the authors' order [O] (OpenSeq2Seq `get_speech_features_librosa` with Jasper's data layer):
peak-normalise the waveform to [-1, 1]; speed perturbation (training); Gaussian dither; pre-emphasis 0.97;
|STFT|^2 (n_fft 512, 20 ms symmetric Hann window, 10 ms hop, centred frames, reflect padding); slaney mel filter
bank 0-8000 Hz, 64 bins; log(x + guard); per-utterance, per-bin mean/std normalisation over time. Time is padded
to a multiple of 16 frames in `collate`. `LogMelFeatures` takes every choice where NeMo differs as an argument
(configs/data/librispeech.yaml names both presets; NeMo's zero STFT padding and its `samples // hop` frame count
are `stft_pad_mode` and `exclude_last_frame`).

Randomness (speed choice from python's `random`, dither from torch's generator) uses the global generators, which
the engine seeds per sample from (seed, epoch, index) before `__getitem__`, so a sample is reproducible wherever
and whenever it is loaded.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch

from data.corrupt import SkipPolicy, UnreadableFileError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
#: Output classes in index order [O]: space, a-z, apostrophe; the CTC blank is the last index.
VOCABULARY = " abcdefghijklmnopqrstuvwxyz'"
BLANK = len(VOCABULARY)  # 28
NUM_OUTPUTS = len(VOCABULARY) + 1  # 29
TRAIN_SPLITS = ("train-clean-100", "train-clean-360", "train-other-500")
EVAL_SPLITS = ("dev-clean", "dev-other", "test-clean", "test-other")
PREPARE_COMMAND = "make prepare-librispeech ARCHIVES=/path/to/archives LIBRISPEECH_ROOT=/path/to/librispeech"

# Byte -> token id; -1 marks a byte outside the vocabulary (every non-ASCII character has such a byte in UTF-8).
_TOKEN_OF_BYTE = np.full(256, -1, dtype=np.int16)
_TOKEN_OF_BYTE[np.frombuffer(VOCABULARY.encode("ascii"), dtype=np.uint8)] = np.arange(len(VOCABULARY))


class UnreadableAudioError(UnreadableFileError):
    """An audio file that cannot be decoded or is not 16 kHz mono; the message names the file."""


# --- vocabulary --------------------------------------------------------------------------------------------------

def encode(text: str) -> torch.Tensor:
    """Token ids (int64) of a lower-case transcript; a character outside `VOCABULARY` is a ValueError naming it."""
    return torch.from_numpy(_token_ids(text).astype(np.int64))


def decode(ids: Iterable[int] | torch.Tensor) -> str:
    """The text of token ids (no CTC merging here: the blank, like any id outside the vocabulary, is an error)."""
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    outside = [i for i in ids if not 0 <= i < len(VOCABULARY)]
    if outside:
        raise ValueError(f"ids {outside} are not characters (0..{len(VOCABULARY) - 1}; {BLANK} is the blank)")
    return "".join(VOCABULARY[i] for i in ids)


def _token_ids(text: str) -> np.ndarray:
    """`encode` as a small numpy array (int16), one vectorised lookup instead of a dictionary access per character."""
    ids = _TOKEN_OF_BYTE[np.frombuffer(text.encode("utf-8"), dtype=np.uint8)]
    if (ids < 0).any():
        unknown = sorted({character for character in text if character not in VOCABULARY})
        raise ValueError(
            f"characters {unknown} of {text!r} are not in the vocabulary {VOCABULARY!r} (space, a-z, apostrophe)"
        )
    return ids


# --- word error rate ---------------------------------------------------------------------------------------------

def word_error_counts(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[int, int]:
    """(word edits, reference words) of a corpus: substitutions + deletions + insertions of the word-level
    Levenshtein alignment of each pair, and the reference word count, both summed over the corpus.

    Corpus WER [O][N] is their ratio, sum of edits / sum of reference words, not a mean of per-utterance WERs; the
    engine adds these counts over batches and ranks. Words are split on whitespace (runs of spaces and leading or
    trailing spaces, as CTC decoding may leave, do not count).
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not references:
        return 0, 0
    import jiwer

    words = jiwer.process_words(list(references), list(hypotheses))
    edits = words.substitutions + words.deletions + words.insertions
    return edits, words.hits + words.substitutions + words.deletions


# --- audio and features ------------------------------------------------------------------------------------------

def read_audio(path: str | os.PathLike[str], sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """The float32 waveform of a mono audio file at `sample_rate`, or `UnreadableAudioError` naming the file."""
    try:
        samples, file_rate = soundfile.read(path, dtype="float32", always_2d=False)
    except (RuntimeError, OSError) as error:  # soundfile's LibsndfileError is a RuntimeError
        raise UnreadableAudioError(
            f"cannot decode audio file {path}: {error}. Download its split's archive again, delete the split's "
            f"manifest (<split>.json) and re-run `{PREPARE_COMMAND}`, which extracts the new archive; or set "
            "data.skip_corrupt=true to skip unreadable files and count them."
        ) from error
    if file_rate != sample_rate or samples.ndim != 1:
        channels = 1 if samples.ndim == 1 else samples.shape[1]
        raise UnreadableAudioError(
            f"{path} is {channels}-channel audio at {file_rate} Hz; "
            f"LibriSpeech features expect mono {sample_rate} Hz"
        )
    return torch.from_numpy(samples)


def speed_perturb(waveform: torch.Tensor, speed: float, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Play `waveform` `speed` times faster, as sox's `speed` effect does: resample it from `speed * sample_rate`
    to `sample_rate`, which scales duration by 1/speed and every frequency by `speed` (pitch moves too).

    The authors' code [O] resamples from `sample_rate` to `int(speed * sample_rate)` instead, i.e. plays at
    1/speed; over the symmetric set {0.9, 1.0, 1.1} the two differ only in 1/0.9 = 1.11 against 1.1.
    """
    import torchaudio.functional

    return torchaudio.functional.speed(waveform, sample_rate, speed)[0]


class LogMelFeatures:
    """A waveform (1-D float tensor at `sample_rate`) to normalised log-mel features `(num_mels, frames)`.

    The steps and their order are the authors' [O] (see the module docstring); the defaults are theirs. Frames:
    `1 + samples // hop` (centred frames; `samples // hop` with `exclude_last_frame`). Picklable, so DataLoader
    workers can receive it.

    Args:
        sample_rate: the only rate accepted (LibriSpeech: 16 kHz).
        num_mels: mel bins of the slaney-scale, slaney-normalised filter bank between `f_min` and `f_max` Hz.
        n_fft, window_size, window_stride: FFT size, and window length and hop in seconds (a symmetric Hann
            window, np.hanning's and NeMo's `periodic=False`, centred in the n_fft frame).
        peak_normalize: scale the waveform so that its largest magnitude is 1, before anything else.
        dither: standard deviation of the Gaussian noise added to the waveform (0: none).
        dither_in_eval: dither evaluation utterances too (the authors' code does, NeMo only dithers in training).
        preemphasis: y[t] = x[t] - preemphasis * x[t-1] (y[0] = x[0]).
        guard: added to the mel energies before the log, so silence stays finite.
        normalize: per-bin normalisation over time, `(x - mean) / (std + epsilon)` with `std` computed with
            `ddof` (0: np.std's biased estimate, 1: unbiased).
        stft_pad_mode: how the signal is extended by n_fft / 2 at each end for the centred frames: "reflect"
            (librosa's default, the authors' [O]) or "constant" (zeros, NeMo's [N]).
        exclude_last_frame: keep `samples // hop` frames instead of `1 + samples // hop`, as NeMo counts its
            valid frames (its last centred frame is neither normalised nor seen by the model [N]).
    """

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        num_mels: int = 64,
        n_fft: int = 512,
        window_size: float = 0.02,
        window_stride: float = 0.01,
        f_min: float = 0.0,
        f_max: float = 8000.0,
        peak_normalize: bool = True,
        dither: float = 1e-5,
        dither_in_eval: bool = True,
        preemphasis: float = 0.97,
        guard: float = 1e-20,
        normalize: Mapping[str, float] | None = None,
        stft_pad_mode: str = "reflect",
        exclude_last_frame: bool = False,
    ) -> None:
        import torchaudio.transforms

        if stft_pad_mode not in ("reflect", "constant"):
            raise ValueError(f"data.features.stft_pad_mode must be reflect or constant, got {stft_pad_mode!r}")

        normalize = dict(normalize) if normalize is not None else {"ddof": 0, "epsilon": 0.0}
        if set(normalize) != {"ddof", "epsilon"} or normalize["ddof"] not in (0, 1) or normalize["epsilon"] < 0:
            raise ValueError(f"data.features.normalize needs ddof (0 or 1) and epsilon >= 0, got {normalize}")
        win_length, hop_length = round(window_size * sample_rate), round(window_stride * sample_rate)
        if not 0 < hop_length <= win_length <= n_fft:
            raise ValueError(
                f"need 0 < window_stride <= window_size <= n_fft / sample_rate; got {window_stride} s, "
                f"{window_size} s, n_fft {n_fft} at {sample_rate} Hz"
            )
        self.sample_rate = sample_rate
        self.num_mels = num_mels
        self.hop_length = hop_length
        self.peak_normalize = peak_normalize
        self.dither = dither
        self.dither_in_eval = dither_in_eval
        self.preemphasis = preemphasis
        self.guard = guard
        self.ddof = int(normalize["ddof"])
        self.epsilon = float(normalize["epsilon"])
        self.exclude_last_frame = exclude_last_frame
        self.power_spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=n_fft,
            win_length=win_length,
            hop_length=hop_length,
            window_fn=torch.hann_window,
            wkwargs={"periodic": False},
            power=2.0,
            center=True,
            pad_mode=stft_pad_mode,
        )
        self.mel_scale = torchaudio.transforms.MelScale(
            n_mels=num_mels,
            sample_rate=sample_rate,
            f_min=f_min,
            f_max=f_max,
            n_stft=n_fft // 2 + 1,
            norm="slaney",
            mel_scale="slaney",
        )

    def __call__(self, waveform: torch.Tensor, train: bool, speed: float = 1.0) -> torch.Tensor:
        """Features of one utterance; `train` decides the dither (with `dither_in_eval`), `speed` != 1 perturbs."""
        if self.peak_normalize:
            peak = waveform.abs().max()
            if peak > 0:  # an all-zero clip stays zero
                waveform = waveform / peak
        if speed != 1.0:
            waveform = speed_perturb(waveform, speed, self.sample_rate)
        if self.dither > 0 and (train or self.dither_in_eval):
            waveform = waveform + self.dither * torch.randn(waveform.shape)
        return self.normalize(self.log_mel(waveform))

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """Pre-emphasis, power spectrogram, mel filter bank, log: `(num_mels, frames)` before normalisation."""
        emphasized = torch.cat([waveform[:1], waveform[1:] - self.preemphasis * waveform[:-1]])
        power = self.power_spectrogram(emphasized)
        if self.exclude_last_frame:
            power = power[:, : waveform.shape[0] // self.hop_length]
        return torch.log(self.mel_scale(power) + self.guard)

    def normalize(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Each bin to mean 0 and unit std over time. With ddof 0 and epsilon 0 (the authors'), a bin that is
        constant over time (digital silence without dither) divides by zero, as it does in their code."""
        mean = log_mel.mean(dim=1, keepdim=True)
        std = log_mel.std(dim=1, correction=self.ddof, keepdim=True)
        return (log_mel - mean) / (std + self.epsilon)


# --- manifests ---------------------------------------------------------------------------------------------------

def write_manifest(
    split_dir: str | os.PathLike[str], manifest: str | os.PathLike[str],
    on_utterance: Callable[[int], None] | None = None,
) -> int:
    """Write the JSON-lines manifest of one extracted split (`<split>/<speaker>/<chapter>/*.trans.txt` and FLACs);
    return its number of utterances.

    Durations come from the FLAC headers (`soundfile.info`), not from decoding. Paths are written relative to the
    manifest's directory, so the prepared folder can move. The manifest appears only once complete (written to a
    temporary name, then renamed), so its presence marks the split as done; on any error the temporary file is
    removed. `on_utterance(flac_bytes)` is called after each utterance (progress reports).

    Checked, each a `BadTranscriptError` or `UnreadableAudioError` naming the file and line: transcripts are UTF-8,
    not empty, and within the vocabulary (after lower-casing); every listed FLAC has a readable header saying
    mono 16 kHz.
    """
    split_dir, manifest = Path(split_dir), Path(manifest)
    transcript_files = sorted(split_dir.glob("*/*/*.trans.txt"))
    if not transcript_files:
        raise FileNotFoundError(f"{split_dir} holds no <speaker>/<chapter>/*.trans.txt: not an extracted split")
    temporary = manifest.with_name(f".{manifest.name}.tmp")
    count = 0
    try:
        with open(temporary, "w", encoding="utf-8") as out:
            for transcript_file in transcript_files:
                for number, utterance, text in _transcript_lines(transcript_file):
                    audio = transcript_file.parent / f"{utterance}.flac"
                    try:
                        info = soundfile.info(str(audio))
                    except (RuntimeError, OSError) as error:
                        raise UnreadableAudioError(
                            f"cannot read the header of {audio} (listed in {transcript_file}:{number}): {error}"
                        ) from error
                    if info.samplerate != SAMPLE_RATE or info.channels != 1:
                        raise UnreadableAudioError(
                            f"{audio} (listed in {transcript_file}:{number}) is {info.channels}-channel audio at "
                            f"{info.samplerate} Hz; LibriSpeech is mono {SAMPLE_RATE} Hz"
                        )
                    duration = info.duration
                    entry = {"audio_filepath": os.path.relpath(audio, manifest.parent), "duration": duration,
                             "text": text}
                    out.write(json.dumps(entry) + "\n")
                    count += 1
                    if on_utterance is not None:
                        on_utterance(audio.stat().st_size)
        os.replace(temporary, manifest)
    finally:
        temporary.unlink(missing_ok=True)
    return count


class BadTranscriptError(ValueError):
    """A transcript line that cannot be used (not UTF-8, empty, outside the vocabulary); the message names the file
    and line."""


def _transcript_lines(transcript_file: Path) -> Iterator[tuple[int, str, str]]:
    """(line number, utterance id, lower-case transcript) of each non-blank line of a LibriSpeech `.trans.txt`.

    An empty transcript is refused rather than indexed: no LibriSpeech utterance is silent, so it marks a damaged
    file, and its reference would count every word the model says as an insertion (dev-clean WER 100.44 with one).
    """
    for number, raw in enumerate(transcript_file.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise BadTranscriptError(
                f"{transcript_file}:{number}: not UTF-8 ({error.reason} at byte {error.start} of the line: "
                f"{raw[max(0, error.start - 20) : error.start + 20]!r}). Fix the line or replace the split's archive, "
                "then re-run."
            ) from None
        if not line.strip():
            continue
        utterance, _, text = line.strip().partition(" ")
        text = text.strip().lower()
        if not text:
            raise BadTranscriptError(
                f"{transcript_file}:{number}: utterance {utterance} has an empty transcript. Give it its text or "
                "replace the split's archive, then re-run."
            )
        try:
            _token_ids(text)
        except ValueError as error:
            raise BadTranscriptError(f"{transcript_file}:{number}: utterance {utterance}: {error}") from None
        yield number, utterance, text


def check_prepared(root: str | os.PathLike[str] | None, manifests: Iterable[str]) -> Path:
    """`root` as a Path if it holds every manifest of `manifests` (names relative to it), else the error that says
    how to prepare LibriSpeech: what "the data is there" means, for the datasets and the launcher's check."""
    if root is None:
        raise ValueError(f"data.root is null: set it (or LIBRISPEECH_ROOT) to the folder `{PREPARE_COMMAND}` made")
    root = Path(root).expanduser()
    for name in manifests:
        _existing_manifest(root / name)
    return root


def _existing_manifest(manifest: str | os.PathLike[str]) -> Path:
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(
            f"LibriSpeech manifest {manifest} not found. Prepare LibriSpeech from the official archives "
            f"(openslr.org/12) with `{PREPARE_COMMAND}`, then point data.root (or the LIBRISPEECH_ROOT environment "
            "variable) at it."
        )
    return manifest


def read_manifest(manifest: str | os.PathLike[str]) -> tuple[list[str], list[float], list[str]]:
    """(audio paths, durations in seconds, transcripts) of a manifest; relative paths resolved against its folder.

    A missing manifest is a FileNotFoundError that says how to prepare LibriSpeech; a malformed line or an empty
    transcript is a ValueError naming the manifest and the line.
    """
    manifest = _existing_manifest(manifest)
    paths, durations, texts = [], [], []
    with open(manifest, "rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw.decode("utf-8"))
                path, duration, text = entry["audio_filepath"], float(entry["duration"]), entry["text"]
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(
                    f"{manifest}:{number}: not a manifest line with audio_filepath, duration and text ({error})"
                ) from error
            if not str(text).strip():
                raise BadTranscriptError(
                    f"{manifest}:{number}: {path} has an empty transcript; every utterance needs its text (an empty "
                    "reference turns every hypothesised word into an error). Fix or remove the line."
                )
            paths.append(os.path.join(manifest.parent, path))  # an absolute path stays as it is
            durations.append(duration)
            texts.append(text)
    return paths, durations, texts


class _PackedRows:
    """Variable-length rows of one numpy array, stored as one buffer plus offsets.

    DataLoader workers are forked: a Python list of 281K strings would be copied page by page into every worker
    as reference counts are touched (PyTorch issue 13246), one numpy buffer is never written and stays shared.
    """

    def __init__(self, rows: Sequence[np.ndarray], dtype: type) -> None:
        self.offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(row) for row in rows], out=self.offsets[1:])
        self.values = np.concatenate(rows).astype(dtype) if rows else np.empty(0, dtype=dtype)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.values[self.offsets[index] : self.offsets[index + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


class LibriSpeechDataset(torch.utils.data.Dataset):
    """Utterances of one or more manifests: `dataset[i]` is `(features (num_mels, frames) float32, tokens (L,)
    int64, skipped)`, `skipped` True when utterance i could not be read and another one stands in its place
    (`skip_corrupt` only).

    Args:
        manifests: JSON-lines manifests, read once here (order kept: manifest by manifest, line by line).
        features: the feature pipeline (speed perturbation and dither included).
        train: training set: speed perturbation (if `speed_perturb`) and dither; otherwise neither, unless
            `features.dither_in_eval`.
        speed_perturb: the speeds one is drawn from per utterance with python's `random` (training only); None: off.
        max_duration: utterances longer than this many seconds (by the manifest) are dropped; the count is logged
            and kept in `num_dropped`. None keeps every utterance (the evaluation sets).
        skip_corrupt: an unreadable FLAC is replaced by the next readable utterance and flagged `skipped` (the
            workload trains on the stand-in and leaves it unscored in evaluation); False: `UnreadableAudioError`.

    Attributes:
        durations: seconds of each kept utterance (float64), in index order: what length-bucketed batch planning
            reads, without touching the audio.
        token_lengths: transcript length of each kept utterance, in characters.
        num_dropped: utterances left out by `max_duration`.
        unreadable_files: audio files found unreadable so far (`skip_corrupt`), in this process and its workers.
    """

    def __init__(
        self,
        manifests: Sequence[str | os.PathLike[str]],
        features: LogMelFeatures,
        train: bool,
        speed_perturb: Sequence[float] | None = None,
        max_duration: float | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        if speed_perturb is not None and (not speed_perturb or min(speed_perturb) <= 0):
            raise ValueError(f"data.speed_perturb must be null or a non-empty list of positive speeds: {speed_perturb}")
        self.features = features
        self.train = train
        self.speed_perturb = list(speed_perturb) if speed_perturb is not None else None
        self.manifests = [Path(m) for m in manifests]
        paths: list[np.ndarray] = []
        tokens: list[np.ndarray] = []
        durations: list[float] = []
        total = 0
        for manifest in self.manifests:
            manifest_paths, manifest_durations, manifest_texts = read_manifest(manifest)
            total += len(manifest_paths)
            for number, (path, duration, text) in enumerate(
                zip(manifest_paths, manifest_durations, manifest_texts), start=1
            ):
                if max_duration is not None and duration > max_duration:
                    continue
                try:
                    tokens.append(_token_ids(text))
                except ValueError as error:
                    raise ValueError(f"{manifest}: utterance {number} ({path}): {error}") from None
                paths.append(np.frombuffer(path.encode("utf-8"), dtype=np.uint8))
                durations.append(duration)
        self._paths = _PackedRows(paths, np.uint8)
        self._tokens = _PackedRows(tokens, np.uint8)
        self.durations = np.asarray(durations, dtype=np.float64)
        self.token_lengths = self._tokens.lengths
        self.num_dropped = total - len(durations)
        self._skip = SkipPolicy(len(durations), skip_corrupt)
        if self.num_dropped:
            log.info(
                "dropped %d of %d utterances longer than %s s from %s",
                self.num_dropped, total, max_duration, ", ".join(m.name for m in self.manifests),
            )

    def __len__(self) -> int:
        return len(self.durations)

    def audio_path(self, index: int) -> str:
        return self._paths[index].tobytes().decode("utf-8")

    def transcript(self, index: int) -> str:
        return decode(self._tokens[index].tolist())

    @property
    def unreadable_files(self) -> list[str]:
        return [self.audio_path(i) for i in self._skip.unreadable_indices]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        (features, tokens), skipped = self._skip.read(index, self._utterance)
        return features, tokens, skipped

    def _utterance(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        waveform = read_audio(self.audio_path(index), self.features.sample_rate)
        speed = random.choice(self.speed_perturb) if self.train and self.speed_perturb else 1.0
        features = self.features(waveform, train=self.train, speed=speed)
        return features, torch.from_numpy(self._tokens[index].astype(np.int64))


def collate(samples: Sequence[tuple[torch.Tensor, torch.Tensor, bool]], pad_to: int = 16) -> dict[str, torch.Tensor]:
    """A batch of `(features, tokens, skipped)` samples as padded tensors.

    Returns `features` (B, num_mels, T) zero-padded with T the longest utterance's frames rounded up to a multiple
    of `pad_to` (the authors' 16 [O]), `feature_lengths` (B,) the frames before padding, `tokens` (B, L) padded
    with the blank id (never a target, so padding cannot pass for a character), `token_lengths` (B,), and
    `skipped` (B,) bool, the stand-ins for unreadable utterances.
    """
    feature_lengths = torch.tensor([features.shape[1] for features, _, _ in samples], dtype=torch.int64)
    token_lengths = torch.tensor([tokens.shape[0] for _, tokens, _ in samples], dtype=torch.int64)
    frames = -(-int(feature_lengths.max()) // pad_to) * pad_to
    batch_features = samples[0][0].new_zeros(len(samples), samples[0][0].shape[0], frames)
    batch_tokens = torch.full((len(samples), int(token_lengths.max())), BLANK, dtype=torch.int64)
    for row, (features, tokens, _) in enumerate(samples):
        batch_features[row, :, : features.shape[1]] = features
        batch_tokens[row, : tokens.shape[0]] = tokens
    return {
        "features": batch_features,
        "feature_lengths": feature_lengths,
        "tokens": batch_tokens,
        "token_lengths": token_lengths,
        "skipped": torch.tensor([skipped for _, _, skipped in samples], dtype=torch.bool),
    }


def build_librispeech_datasets(
    root: str | os.PathLike[str] | None,
    train_manifests: Sequence[str],
    eval_manifests: Mapping[str, str],
    features: Mapping[str, Any],
    speed_perturb: Sequence[float] | None,
    max_duration: float | None,
    skip_corrupt: bool = False,
) -> tuple[LibriSpeechDataset, dict[str, LibriSpeechDataset]]:
    """The training set and the named evaluation sets (configs/data/librispeech.yaml documents each argument);
    manifest names are relative to `root`."""
    root = check_prepared(root, [*train_manifests, *eval_manifests.values()])
    pipeline = LogMelFeatures(**features)
    train = LibriSpeechDataset(
        [root / name for name in train_manifests], pipeline, train=True, speed_perturb=speed_perturb,
        max_duration=max_duration, skip_corrupt=skip_corrupt,
    )
    evaluation = {
        name: LibriSpeechDataset([root / manifest], pipeline, train=False, skip_corrupt=skip_corrupt)
        for name, manifest in eval_manifests.items()
    }
    return train, evaluation
