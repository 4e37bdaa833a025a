"""LibriSpeech data: vocabulary, WER, the log-mel pipeline against formulas, the dataset and its errors, the
synthetic twins (the prepare script on official-format archives: tests/test_librispeech_prepare.py)."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile
import torch

from data.librispeech import (
    BLANK,
    NUM_OUTPUTS,
    VOCABULARY,
    LibriSpeechDataset,
    LogMelFeatures,
    UnreadableAudioError,
    collate,
    decode,
    encode,
    speed_perturb,
    word_error_counts,
)
from data.synthetic_librispeech import LEARNABLE_BINS, LEARNABLE_LETTERS, make_synthetic_librispeech, tone_frequencies
from novograd.engine.compose import compose_config
from novograd.workloads.librispeech import LibriSpeechWorkload

SR = 16000


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict[str, Path]:
    return make_synthetic_librispeech(tmp_path_factory.mktemp("synthetic"), kind="smoke", num_train=12, num_eval=3)


@pytest.fixture(scope="module")
def features() -> LogMelFeatures:
    return LogMelFeatures()


def write_flac(path: Path, waveform: np.ndarray, sample_rate: int = SR) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, waveform, sample_rate, subtype="PCM_16", format="FLAC")


def write_manifest_lines(path: Path, entries: list[dict]) -> Path:
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    return path


# --- vocabulary and WER ------------------------------------------------------------------------------------------

def test_vocabulary_layout_and_round_trip():
    assert (VOCABULARY[0], VOCABULARY[1], VOCABULARY[26], VOCABULARY[27]) == (" ", "a", "z", "'")
    assert (BLANK, NUM_OUTPUTS) == (28, 29)
    ids = encode("it's az")
    assert ids.dtype == torch.int64 and ids.tolist() == [9, 20, 27, 19, 0, 1, 26]
    assert decode(ids) == decode(ids.tolist()) == "it's az"
    with pytest.raises(ValueError, match=r"\['é'\]"):
        encode("café")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        encode("Capital")
    with pytest.raises(ValueError, match="blank"):
        decode([1, BLANK])


def levenshtein(a: list[str], b: list[str]) -> int:
    """The obvious dynamic programme: edits turning word list a into b."""
    previous = list(range(len(b) + 1))
    for i, word in enumerate(a, start=1):
        current = [i]
        for j, other in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other)))
        previous = current
    return previous[-1]


def test_word_error_counts_is_corpus_wer():
    rng = random.Random(0)
    words = ["a", "b", "cat", "it's", "dog"]
    references = [" ".join(rng.choices(words, k=rng.randint(1, 8))) for _ in range(30)]
    hypotheses = [" ".join(rng.choices(words, k=rng.randint(0, 8))) for _ in range(30)]
    hypotheses[0] = "  " + references[0] + " "  # stray spaces from CTC decoding are not words
    edits, reference_words = word_error_counts(hypotheses, references)
    assert reference_words == sum(len(r.split()) for r in references)
    assert edits == sum(levenshtein(r.split(), h.split()) for r, h in zip(references, hypotheses))
    assert edits / reference_words == pytest.approx(jiwer.wer(references, hypotheses))
    # corpus WER, not the mean of per-utterance WERs
    assert edits / reference_words != pytest.approx(np.mean([jiwer.wer(r, h) for r, h in zip(references, hypotheses)]))
    assert word_error_counts([], []) == (0, 0)
    with pytest.raises(ValueError, match="2 hypotheses for 1 references"):
        word_error_counts(["a", "b"], ["a"])


# --- features ----------------------------------------------------------------------------------------------------

def reference_slaney_edges(sample_rate=SR, n_mels=64, f_min=0.0, f_max=8000.0) -> np.ndarray:
    """The n_mels + 2 band edges (Hz) of librosa's slaney mel scale: linear below 1 kHz, logarithmic above."""
    step, log_step = 200.0 / 3.0, np.log(6.4) / 27.0

    def hz_to_mel(hz):
        return 15.0 + np.log(hz / 1000.0) / log_step if hz >= 1000.0 else hz / step

    mels = np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2)
    return np.where(mels >= 15.0, 1000.0 * np.exp(log_step * (mels - 15.0)), step * mels)


def reference_slaney_filterbank(sample_rate=SR, n_fft=512, n_mels=64) -> np.ndarray:
    """librosa.filters.mel(htk=False, norm="slaney") written out: (n_mels, n_fft // 2 + 1)."""
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = reference_slaney_edges(sample_rate, n_mels)
    weights = np.zeros((n_mels, fft_hz.size))
    for m in range(n_mels):
        rising = (fft_hz - edges[m]) / (edges[m + 1] - edges[m])
        falling = (edges[m + 2] - fft_hz) / (edges[m + 2] - edges[m + 1])
        weights[m] = np.maximum(0.0, np.minimum(rising, falling)) * 2.0 / (edges[m + 2] - edges[m])  # area norm
    return weights


def reference_features(signal: np.ndarray, guard=1e-20, ddof=0, epsilon=0.0, peak_normalize=True,
                       stft_pad_mode="reflect", exclude_last_frame=False) -> np.ndarray:
    """The pipeline in float64 numpy, frame by frame (no dither): the slow obvious version. NeMo's choices: zeros
    instead of a mirror around the signal, and `samples // 160` frames (the last centred one left out)."""
    x = signal / np.abs(signal).max() if peak_normalize else signal
    x = np.append(x[0], x[1:] - 0.97 * x[:-1])
    padded = np.pad(x, 256, mode=stft_pad_mode)
    window = np.zeros(512)
    window[96 : 96 + 320] = np.hanning(320)  # the 320-sample window centred in the 512-point frame
    frames = signal.size // 160 if exclude_last_frame else 1 + (padded.size - 512) // 160
    power = np.stack([np.abs(np.fft.rfft(window * padded[160 * t : 160 * t + 512])) ** 2 for t in range(frames)], 1)
    log_mel = np.log(reference_slaney_filterbank() @ power + guard)
    return (log_mel - log_mel.mean(1, keepdims=True)) / (log_mel.std(1, ddof=ddof, keepdims=True) + epsilon)


def test_filterbank_and_window_match_the_formulas(features):
    filterbank = features.mel_scale.fb.T.double().numpy()  # torchaudio stores (n_freqs, n_mels)
    np.testing.assert_allclose(filterbank, reference_slaney_filterbank(), rtol=1e-4, atol=1e-7)  # float32
    np.testing.assert_allclose(features.power_spectrogram.window.numpy(), np.hanning(320), atol=1e-7)


NEMO = dict(peak_normalize=False, guard=2.0**-24, normalize=dict(ddof=1, epsilon=1e-5), stft_pad_mode="constant",
            exclude_last_frame=True)


@pytest.mark.parametrize("preset", [dict(), dict(guard=2.0**-24, normalize=dict(ddof=1, epsilon=1e-5)), NEMO],
                         ids=["authors", "nemo-normalisation", "nemo"])
def test_features_match_the_numpy_reference(preset):
    rng = np.random.default_rng(0)
    t = np.arange(int(0.83 * SR)) / SR
    signal = 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(t.size)
    ours = LogMelFeatures(dither=0.0, **preset)(torch.from_numpy(signal.astype(np.float32)), train=True)
    options = {key: value for key, value in preset.items() if key != "normalize"}
    reference = reference_features(signal, **options, **preset.get("normalize", {}))
    frames = t.size // 160 if preset.get("exclude_last_frame") else 1 + t.size // 160
    assert ours.shape == (64, frames) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), reference, atol=2e-3)


def test_nemo_padding_and_frame_count_change_the_edges_only():
    """Zeros instead of a mirror change the first and last frames (the only ones whose 20 ms window reaches past the
    signal);
    leaving the last frame out changes the per-bin statistics, hence every frame a little."""
    signal = torch.from_numpy(np.random.default_rng(1).standard_normal(8000).astype(np.float32))
    reflect = LogMelFeatures(dither=0.0).log_mel(signal)
    zeros = LogMelFeatures(dither=0.0, stft_pad_mode="constant").log_mel(signal)
    changed = (reflect - zeros).abs().amax(dim=0) > 1e-4
    assert changed[0] and changed[-1] and not changed[1:-1].any()
    full = LogMelFeatures(dither=0.0)(signal, train=False)
    short = LogMelFeatures(dither=0.0, exclude_last_frame=True)(signal, train=False)
    assert (full.shape[1], short.shape[1]) == (51, 50)
    assert 0 < (full[:, :50] - short).abs().max() < 0.5
    with pytest.raises(ValueError, match="stft_pad_mode"):
        LogMelFeatures(stft_pad_mode="edge")


@pytest.mark.parametrize("mel_bin", [4, 13, 30, 50])
def test_a_pure_tone_lands_in_its_mel_bin(features, mel_bin):
    hz = reference_slaney_edges()[mel_bin + 1]  # the bin's centre
    waveform = torch.sin(2 * torch.pi * hz * torch.arange(SR) / SR)
    assert int(features.log_mel(waveform).mean(dim=1).argmax()) == mel_bin
    normalized = features(waveform, train=True)
    torch.testing.assert_close(normalized.mean(1), torch.zeros(64), atol=1e-4, rtol=0)
    torch.testing.assert_close(normalized.std(1, correction=0), torch.ones(64), atol=1e-4, rtol=0)


def test_dither_comes_from_torch_generator_and_follows_train_flag():
    waveform = torch.zeros(SR // 4)
    waveform[100] = 1.0  # nearly silent: the dither decides most bins
    authors, nemo = LogMelFeatures(), LogMelFeatures(dither_in_eval=False)

    def seeded(pipeline, seed, train):
        torch.manual_seed(seed)
        return pipeline(waveform, train=train)

    assert torch.equal(seeded(authors, 1, True), seeded(authors, 1, True))
    assert not torch.equal(seeded(authors, 1, True), seeded(authors, 2, True))
    assert not torch.equal(seeded(authors, 1, False), seeded(authors, 2, False))  # the authors dither eval too
    assert torch.equal(seeded(nemo, 1, False), seeded(nemo, 2, False))


@pytest.mark.parametrize("speed", [0.9, 1.1])
def test_speed_perturbation_is_sox_speed(speed):
    tone = torch.sin(2 * torch.pi * 1000.0 * torch.arange(SR) / SR)
    perturbed = speed_perturb(tone, speed)
    assert abs(perturbed.numel() - SR / speed) <= 1  # duration scaled by 1 / speed
    spectrum = torch.fft.rfft(perturbed * torch.hann_window(perturbed.numel())).abs()
    peak_hz = float(spectrum.argmax()) * SR / perturbed.numel()
    assert peak_hz == pytest.approx(1000.0 * speed, abs=2.0)  # pitch scaled by speed


# --- dataset -----------------------------------------------------------------------------------------------------

def test_dataset_reads_the_manifests(smoke, features):
    dataset = LibriSpeechDataset([smoke["dev-clean"], smoke["dev-other"]], features, train=False)
    entries = [json.loads(line) for name in ("dev-clean", "dev-other") for line in smoke[name].read_text().splitlines()]
    assert len(dataset) == 6 and dataset.num_dropped == 0
    np.testing.assert_array_equal(dataset.durations, [e["duration"] for e in entries])
    assert [dataset.transcript(i) for i in range(6)] == [e["text"] for e in entries]
    assert dataset.token_lengths.tolist() == [len(e["text"]) for e in entries]
    for index in (0, 5):
        frames, tokens, skipped = dataset[index]
        assert skipped is False
        samples = soundfile.info(dataset.audio_path(index)).frames
        assert samples == round(entries[index]["duration"] * SR)
        assert frames.shape == (64, 1 + samples // 160) and frames.dtype == torch.float32
        assert tokens.dtype == torch.int64 and decode(tokens) == entries[index]["text"]


def test_training_draws_the_speed_from_python_random(smoke, features):
    dataset = LibriSpeechDataset([smoke["train-clean-100"]], features, train=True, speed_perturb=[0.9, 1.0, 1.1])
    samples = soundfile.info(dataset.audio_path(0)).frames

    def frames_with_seed(seed):
        random.seed(seed)
        torch.manual_seed(seed)
        return dataset[0][0]

    assert torch.equal(frames_with_seed(3), frames_with_seed(3))
    lengths = {frames_with_seed(seed).shape[1] for seed in range(12)}
    assert lengths == {1 + round(samples / speed) // 160 for speed in (0.9, 1.0, 1.1)}


def test_max_duration_drops_and_counts(smoke, features):
    durations = LibriSpeechDataset([smoke["train-clean-100"]], features, train=True).durations
    limit = float(np.median(durations))
    dataset = LibriSpeechDataset([smoke["train-clean-100"]], features, train=True, max_duration=limit)
    assert dataset.num_dropped == int((durations > limit).sum()) > 0
    np.testing.assert_array_equal(dataset.durations, durations[durations <= limit])


def test_collate_pads_time_to_a_multiple_of_16(smoke, features):
    dataset = LibriSpeechDataset([smoke["train-clean-100"]], features, train=False)
    samples = [dataset[i] for i in range(4)]
    batch = collate(samples)
    frames = [s[0].shape[1] for s in samples]
    tokens = [s[1].numel() for s in samples]
    assert batch["features"].shape == (4, 64, -(-max(frames) // 16) * 16)
    assert batch["feature_lengths"].tolist() == frames and batch["token_lengths"].tolist() == tokens
    assert batch["tokens"].shape == (4, max(tokens))
    assert batch["skipped"].dtype == torch.bool and not batch["skipped"].any()
    for row, (features_, tokens_, _) in enumerate(samples):
        assert torch.equal(batch["features"][row, :, : frames[row]], features_)
        assert not batch["features"][row, :, frames[row] :].any()
        assert torch.equal(batch["tokens"][row, : tokens[row]], tokens_)
        assert (batch["tokens"][row, tokens[row] :] == BLANK).all()


def test_bad_input_is_a_clear_error(tmp_path, smoke, features):
    with pytest.raises(FileNotFoundError, match="make prepare-librispeech ARCHIVES=.* LIBRISPEECH_ROOT="):
        LibriSpeechDataset([tmp_path / "train-clean-100.json"], features, train=True)
    audio = json.loads(smoke["dev-clean"].read_text().splitlines()[0])["audio_filepath"]
    audio = str(smoke["dev-clean"].parent / audio)  # absolute paths are read as they are
    bad_text = write_manifest_lines(tmp_path / "bad.json", [
        {"audio_filepath": audio, "duration": 1.0, "text": "fine"},
        {"audio_filepath": audio, "duration": 1.0, "text": "naïve"},
    ])
    with pytest.raises(ValueError, match=r"bad\.json: utterance 2 .*\['ï'\]"):
        LibriSpeechDataset([bad_text], features, train=False)
    (tmp_path / "broken.json").write_text('{"audio_filepath": "x.flac", "text": "a"}\n')
    with pytest.raises(ValueError, match=r"broken\.json:1: not a manifest line"):
        LibriSpeechDataset([tmp_path / "broken.json"], features, train=False)
    (tmp_path / "corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 8)
    write_flac(tmp_path / "8k.flac", np.zeros(800), sample_rate=8000)
    entries = [{"audio_filepath": name, "duration": 0.1, "text": "a"} for name in ("corrupt.flac", "8k.flac")]
    dataset = LibriSpeechDataset([write_manifest_lines(tmp_path / "audio.json", entries)], features, train=False)
    with pytest.raises(UnreadableAudioError, match=r"corrupt\.flac"):
        dataset[0]
    with pytest.raises(UnreadableAudioError, match=r"8k\.flac is 1-channel audio at 8000 Hz"):
        dataset[1]


def test_configs_build_the_datasets(tmp_path):
    cfg = compose_config(["data=librispeech"], output_dir="unused").data
    assert list(cfg.train_manifests) == ["train-clean-100.json", "train-clean-360.json", "train-other-500.json"]
    assert dict(cfg.eval_manifests) == {"dev_clean": "dev-clean.json", "dev_other": "dev-other.json",
                                        "test_clean": "test-clean.json", "test_other": "test-other.json"}
    assert cfg.max_duration == 16.7 and list(cfg.speed_perturb) == [0.9, 1.0, 1.1] and cfg.pad_to == 16
    defaults = LogMelFeatures()
    assert (cfg.features.guard, cfg.features.dither, cfg.features.normalize.ddof) == (1e-20, 1e-5, 0)
    assert (defaults.guard, defaults.dither, defaults.ddof) == (1e-20, 1e-5, 0)

    def build(data):
        return LibriSpeechWorkload(model={}, data=data).build_datasets()

    with pytest.raises(FileNotFoundError, match="make prepare-librispeech"):
        build(compose_config(["data=librispeech", f"data.root={tmp_path}"], output_dir="unused").data)
    for config, kind in (("librispeech_synthetic", "smoke"), ("librispeech_learnable", "learnable")):
        data = compose_config([f"data={config}", f"data.synthetic.directory={tmp_path}", "data.synthetic.num_train=4",
                               "data.synthetic.num_eval=2"], output_dir="unused").data
        assert data.synthetic.kind == kind
        train, evaluation = build(data)
        assert len(train) == 4 and train.train and train.speed_perturb == [0.9, 1.0, 1.1]
        assert sorted(evaluation) == ["dev_clean", "dev_other", "test_clean", "test_other"]
        assert all(len(d) == 2 and not d.train for d in evaluation.values())
        assert train[0][0].shape[0] == 64


# --- synthetic twins ---------------------------------------------------------------------------------------------

def test_synthetic_twin_is_deterministic_and_cached(tmp_path):
    kwargs = dict(kind="smoke", num_train=3, num_eval=2, seed=5)
    first = make_synthetic_librispeech(tmp_path / "a", **kwargs)
    again = make_synthetic_librispeech(tmp_path / "a", **kwargs)
    elsewhere = make_synthetic_librispeech(tmp_path / "b", **kwargs)
    other_seed = make_synthetic_librispeech(tmp_path / "a", **{**kwargs, "seed": 6})
    assert sorted(first) == sorted(["train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other"])
    assert again == first and first["dev-clean"].parent.name == elsewhere["dev-clean"].parent.name
    assert other_seed["dev-clean"].parent != first["dev-clean"].parent
    root = first["dev-clean"].parent
    files = sorted(p.relative_to(root) for p in root.rglob("*.flac"))
    assert len(files) == 3 + 4 * 2
    assert all((root / f).read_bytes() == (elsewhere["dev-clean"].parent / f).read_bytes() for f in files)
    assert first["dev-clean"].read_text() == elsewhere["dev-clean"].read_text()
    assert first["dev-clean"].read_text() != other_seed["dev-clean"].read_text()
    transcript = next(root.rglob("*.trans.txt")).read_text()
    assert transcript == transcript.upper()  # as LibriSpeech's: the manifest lower-cases
    with ThreadPoolExecutor(max_workers=4) as pool:
        made = list(pool.map(lambda _: make_synthetic_librispeech(tmp_path / "c", **kwargs), range(4)))
    assert all(m == made[0] for m in made) and len(list((tmp_path / "c").iterdir())) == 1
    with pytest.raises(ValueError, match="kind"):
        make_synthetic_librispeech(tmp_path, kind="other")


def test_learnable_symbols_stay_in_distinct_mel_bins(tmp_path, features):
    frequencies = tone_frequencies()
    assert list(frequencies) == list(" " + LEARNABLE_LETTERS)
    for speed in (0.9, 1.0, 1.1):
        peaks = []
        for hz in frequencies.values():
            tone = torch.sin(2 * torch.pi * hz * speed * torch.arange(SR // 10) / SR)
            peaks.append(int(features.log_mel(tone).mean(1).argmax()))
        if speed == 1.0:
            assert peaks == list(LEARNABLE_BINS)
        assert all(abs(p - b) < 3 for p, b in zip(peaks, LEARNABLE_BINS))  # nearer its own bin than any other's
    manifests = make_synthetic_librispeech(tmp_path, kind="learnable", num_train=4, num_eval=1)
    for line in manifests["train-clean-100"].read_text().splitlines():
        words = json.loads(line)["text"].split(" ")
        assert 2 <= len(words) <= 4 and all(2 <= len(w) <= 5 and set(w) <= set(LEARNABLE_LETTERS) for w in words)


@pytest.mark.slow
def test_learnable_twin_is_learned_by_a_tiny_ctc_model(tmp_path):
    """A 4-layer convolutional CTC model (64 channels) with Adam: dev WER from ~100 % to under 20 % in 400 steps."""
    torch.manual_seed(0)
    random.seed(0)
    manifests = make_synthetic_librispeech(tmp_path, kind="learnable", num_train=512, num_eval=32)
    pipeline = LogMelFeatures()
    train = LibriSpeechDataset([manifests["train-clean-100"]], pipeline, train=True, speed_perturb=[0.9, 1.0, 1.1])
    dev = LibriSpeechDataset([manifests["dev-clean"]], pipeline, train=False)

    def layer(inputs, kernel, stride=1):
        return [torch.nn.Conv1d(inputs, 64, kernel, stride, kernel // 2, bias=False), torch.nn.BatchNorm1d(64),
                torch.nn.ReLU()]

    model = torch.nn.Sequential(*layer(64, 11, 2), *layer(64, 11), *layer(64, 13), *layer(64, 17),
                                torch.nn.Conv1d(64, NUM_OUTPUTS, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def dev_wer():
        model.eval()
        batch = collate([dev[i] for i in range(len(dev))])
        with torch.no_grad():
            best = model(batch["features"]).argmax(1)
        hypotheses = []
        for row, frames in zip(best, (batch["feature_lengths"] + 1) // 2):
            ids = torch.unique_consecutive(row[:frames])
            hypotheses.append(decode(ids[ids != BLANK]))
        model.train()
        edits, words = word_error_counts(hypotheses, [dev.transcript(i) for i in range(len(dev))])
        return edits / words

    assert dev_wer() > 0.9
    for _ in range(400):
        batch = collate([train[i] for i in random.sample(range(len(train)), 16)])
        log_probs = model(batch["features"]).log_softmax(1).permute(2, 0, 1)
        loss = torch.nn.functional.ctc_loss(log_probs, batch["tokens"], (batch["feature_lengths"] + 1) // 2,
                                            batch["token_lengths"], blank=BLANK)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert dev_wer() < 0.2
