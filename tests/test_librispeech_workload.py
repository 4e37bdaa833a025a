"""The Jasper workload: CTC reduction and infeasible transcripts, greedy decoding, the smoke run with all four WER
metrics, accumulation exactness, debug=learn, and a missing dataset that names its prepare target."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.librispeech import BLANK
from novograd.engine import run
from novograd.engine.compose import compose_config
from novograd.workloads.librispeech import ctc_losses, greedy_ctc_decode

SMOKE = ["experiment=table4/novograd", "debug=smoke", "logger=none"]


def test_ctc_losses_are_summed_over_time_and_infeasible_transcripts_are_zeroed_and_counted() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 6, BLANK + 1, requires_grad=True)
    frames = torch.tensor([6, 6, 3, 2])
    targets = torch.tensor([[1, 2, 3], [5, 5, 0], [7, 7, 0], [1, 2, 3]])
    lengths = torch.tensor([3, 2, 2, 3])  # utterance 2: "gg" needs 3 frames, has 3; utterance 3: 3 labels in 2 frames
    losses, infeasible = ctc_losses(logits, frames, targets, lengths)
    assert infeasible.tolist() == [False, False, False, True]
    reference = F.ctc_loss(logits.log_softmax(-1).transpose(0, 1), targets, frames, lengths, blank=BLANK,
                           reduction="none")
    torch.testing.assert_close(losses[:3], reference[:3])  # per utterance, not divided by its length
    assert losses[3] == 0 and torch.isinf(reference[3])
    losses.sum().backward()
    assert logits.grad[3].abs().sum() == 0 and logits.grad[:3].abs().sum() > 0
    # Repeats need a blank between them: "gg" in 2 frames cannot be aligned.
    _, infeasible = ctc_losses(logits[2:3, :2], torch.tensor([2]), targets[2:3], lengths[2:3])
    assert infeasible.tolist() == [True]


def test_greedy_decoding_merges_repeats_drops_blanks_and_stops_at_the_valid_frames() -> None:
    best = torch.tensor([[1, 1, BLANK, 1, 2, 2, BLANK, 3], [4, BLANK, 4, 4, 5, 6, 6, 6]])
    logits = F.one_hot(best, BLANK + 1).float()
    assert greedy_ctc_decode(logits, torch.tensor([8, 5])) == [[1, 1, 2, 3], [4, 4, 5]]


def test_smoke_run_reports_the_four_wer_columns_and_a_checkpoint(tmp_path: Path) -> None:
    summary = run(compose_config(SMOKE, tmp_path))
    for name in ("dev_clean", "dev_other", "test_clean", "test_other"):
        assert 0.0 <= summary[f"wer_{name}"] <= 100.0 * 10
        assert f"best_wer_{name}" in summary
    assert summary["steps"] == 4 and (tmp_path / "checkpoints" / "last.pt").exists()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train/loss" in r]
    assert all(0.0 <= r["train/padding_fraction"] < 1.0 and r["train/ctc_infeasible"] == 0 for r in train)


def _frozen_batch_norm_weights(tmp_path: Path, *overrides: str) -> dict[str, torch.Tensor]:
    """Train the smoke Jasper with dropout 0 and BatchNorm using its running statistics, the one source of
    per-micro-batch difference: what remains must be exact accumulation."""
    from models.jasper import MaskedBatchNorm1d
    from novograd.workloads.librispeech import LibriSpeechWorkload

    build = LibriSpeechWorkload.build_model

    def use_running_statistics(module, args) -> None:
        module.train(False)

    def build_frozen(self):
        model = build(self)
        for module in model.modules():
            if isinstance(module, MaskedBatchNorm1d):
                module.register_forward_pre_hook(use_running_statistics)
        return model

    LibriSpeechWorkload.build_model = build_frozen
    try:
        run(compose_config([*SMOKE, "model.dropout=0.0", "trainer.eval_every_steps=null", *overrides], tmp_path))
    finally:
        LibriSpeechWorkload.build_model = build
    return torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["model"]


def test_accumulated_micro_batches_match_one_big_batch(tmp_path: Path) -> None:
    whole = _frozen_batch_norm_weights(tmp_path / "whole", "trainer.micro_batch_size=8")
    accumulated = _frozen_batch_norm_weights(tmp_path / "accumulated", "trainer.micro_batch_size=4")
    moved = False
    for key, value in whole.items():
        torch.testing.assert_close(accumulated[key], value, rtol=0, atol=1e-5)
        moved |= key.endswith("weight") and value.dtype.is_floating_point
    assert moved


def test_missing_dataset_names_the_prepare_target(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make prepare-librispeech"):
        run(compose_config(["experiment=table4/novograd", "logger=none", "trainer.device=cpu",
                            f"data.root={tmp_path / 'nowhere'}"], tmp_path / "run"))


def test_learn_run_transcribes_the_learnable_twin(tmp_path: Path) -> None:
    """debug=learn: the tiny Jasper learns the tone alphabet (measured: dev-clean WER 2.1% at step 200 and at step
    400 of the full debug=learn run, 3.1% averaged over the four sets after a 200-step run); half of it here."""
    summary = run(compose_config(["experiment=table4/novograd", "debug=learn", "logger=none",
                                  "trainer.max_steps=200", "trainer.eval_every_steps=null"], tmp_path))
    assert summary["wer_dev_clean"] < 20.0


@pytest.mark.distributed
def test_two_ranks_match_one_process_with_the_same_micro_batches(tmp_path: Path) -> None:
    """2 ranks x micro-batches of 4 = 1 process x 2 micro-batches of 4, bit for bit: the same micro-batches
    (micro-batch i of a step runs on rank i % 2), so even BatchNorm's per-micro-batch statistics agree, and the
    same intra-op threads (one) in every process, so every kernel adds up in the same order.

    With the rows' truncated-normal init this run once differed by up to 9.5e-5 (8e-5 recorded earlier), under
    uniform Xavier by 6e-7. Measured (docs/jasper.md): that was the one process's second CPU thread, not DDP. One
    process on 1 thread equals the two ranks exactly (0.0, fp32 and fp64, either init); one process on 2 threads
    differs from one process on 1 thread by the same 9.5e-5, with no second rank (1.6e-7 in fp64): summation order
    inside the kernels, amplified by 4 steps of NovoGrad, which normalises each layer's gradient by its norm."""
    import os
    import subprocess
    import sys

    from novograd.engine.compose import CONFIG_DIR

    common = [*SMOKE, "model.dropout=0.0", "trainer.eval_every_steps=null", "trainer.micro_batch_size=4"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank below (OMP_NUM_THREADS=1)
    try:
        run(compose_config(common, tmp_path / "single"))
    finally:
        torch.set_num_threads(threads)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
               "novograd.train", *common, f"trainer.output_dir={tmp_path / 'ddp'}"]
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300, cwd=CONFIG_DIR.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    single, ddp = (torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=False)["model"]
                   for name in ("single", "ddp"))
    for key, value in single.items():
        if "running_" not in key and "num_batches" not in key:  # running statistics: DDP keeps rank 0's
            torch.testing.assert_close(ddp[key], value, rtol=0, atol=0)


def _corrupt(flac: Path) -> None:
    flac.write_bytes(b"fLaC" + bytes(range(256)) * 4)  # a FLAC signature, then garbage


def test_skip_corrupt_trains_on_a_stand_in_and_leaves_an_unreadable_evaluation_utterance_unscored(
    tmp_path: Path,
) -> None:
    """One unreadable training FLAC and one unreadable dev-clean FLAC: the run goes on, the training step keeps its
    count (a stand-in, counted in skipped_train), and the evaluation scores every other utterance once."""
    from data.synthetic_librispeech import make_synthetic_librispeech
    from novograd.workloads.librispeech import LibriSpeechWorkload

    overrides = [*SMOKE, f"data.synthetic.directory={tmp_path / 'twin'}", "data.synthetic.num_train=16",
                 "data.skip_corrupt=true"]
    manifests = make_synthetic_librispeech(tmp_path / "twin", kind="smoke", num_train=16, num_eval=8, seed=0)
    for split in ("train-clean-100", "dev-clean"):
        first = json.loads(manifests[split].read_text().splitlines()[0])["audio_filepath"]
        _corrupt(manifests[split].parent / first)
    config = compose_config([*overrides, "trainer.micro_batch_size=8", "trainer.max_steps=2",
                             "trainer.eval_every_steps=null"], tmp_path / "run")
    with pytest.warns(UserWarning, match=r"skipping an unreadable file .*0000\.flac"):
        summary = run(config)
    assert summary["steps"] == 2 and "wer_dev_clean" in summary
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/skipped_train"] for r in records if "train/skipped_train" in r][-1] == 1  # 2 steps of 8: one epoch
    assert summary["skipped_train"] == 1 and summary["skipped_dev_clean"] == 1

    workload = LibriSpeechWorkload(model=config.model, data=config.data)
    _, evaluation = workload.build_datasets()
    dev = evaluation["dev_clean"]
    samples = [dev[i] for i in range(len(dev))]
    assert [skipped for _, _, skipped in samples] == [True] + [False] * 7  # index 0 stands in with utterance 1
    assert torch.equal(samples[0][1], samples[1][1]) and samples[0][0].shape == samples[1][0].shape
    assert dev.unreadable_files == [dev.audio_path(0)]
    model = workload.build_model().eval()
    with torch.no_grad():
        sums = workload.eval_step(model, workload.collate(samples))
        scored = workload.eval_step(model, workload.collate(samples[1:]))
    assert sums["skipped"] == 1 and sums["utterances"] == 7 and scored["skipped"] == 0
    for name in ("word_edits", "reference_words", "utterances"):  # utterance 1 scored once, not twice
        assert sums[name] == scored[name]


def test_without_skip_corrupt_an_unreadable_file_stops_the_run_naming_it(tmp_path: Path) -> None:
    from data.librispeech import UnreadableAudioError
    from data.synthetic_librispeech import make_synthetic_librispeech

    manifests = make_synthetic_librispeech(tmp_path / "twin", kind="smoke", num_train=32, num_eval=8, seed=0)
    name = json.loads(manifests["dev-clean"].read_text().splitlines()[0])["audio_filepath"]
    _corrupt(manifests["dev-clean"].parent / name)
    with pytest.raises(UnreadableAudioError, match=f"{Path(name).name}.*re-run.*data.skip_corrupt=true"):
        run(compose_config([*SMOKE, f"data.synthetic.directory={tmp_path / 'twin'}"], tmp_path / "run"))


@pytest.mark.parametrize("micro_batches, sorted_", [("by_length", True), ("random", False)])
def test_micro_batches_are_cut_by_length_or_in_the_steps_random_order(micro_batches: str, sorted_: bool) -> None:
    from novograd.workloads.librispeech import LibriSpeechWorkload

    config = compose_config([*SMOKE, f"data.micro_batches={micro_batches}"], "unused")
    workload = LibriSpeechWorkload(model=config.model, data=config.data)
    durations = np.random.default_rng(0).uniform(1, 16, size=64)
    plan = workload.batch_plan(SimpleNamespace(durations=durations), 32, 8, seed=0)
    step = plan.epoch_steps(0)[0]
    micro = plan.micro_batches(step, world_size=1)
    assert sorted(np.concatenate(micro).tolist()) == sorted(step.tolist())
    assert (np.concatenate(micro).tolist() == step[np.argsort(durations[step], kind="stable")].tolist()) is sorted_
    assert (np.concatenate(micro).tolist() == step.tolist()) is not sorted_
    with pytest.raises(ValueError, match="data.micro_batches must be one of"):
        LibriSpeechWorkload(model=config.model, data={**config.data, "micro_batches": "shuffled"})
