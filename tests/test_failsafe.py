"""Runs that fail safe, tested by causing each fault: a non-finite loss injected at a chosen step (skipped, stopped
at, rewound past), a divergence that persists, an fp16 loss scale that collapses, an update that overflows the
weights, a truncated `last.pt`, a full disk during a save, and the order of fsyncs and renames of a save."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from novograd.engine import run
from novograd.engine.checkpoint import CheckpointManager, CheckpointSpaceError, CheckpointUnreadableError
from novograd.engine.compose import compose_config
from novograd.engine.nonfinite import BufferSnapshot, SkipCounter, step_unless
from novograd.optim.novograd import NovoGrad
from novograd.workloads.regression import RegressionWorkload

# The engine on its regression MLP (no BatchNorm, no dropout), one loss call per optimizer step.
REGRESSION = ["debug=regression", "logger=none", "trainer.max_steps=8"]


def train(output_dir: Path, *overrides: str) -> dict:
    return run(compose_config([*REGRESSION, *overrides], output_dir))


def weights(output_dir: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(output_dir / "checkpoints" / name, weights_only=False)["model"]


def poison_loss_at(monkeypatch: pytest.MonkeyPatch, steps: set[int] | range) -> None:
    """The workload's loss is NaN at these optimizer steps (counted from 1; one loss call per step here)."""
    original, calls = RegressionWorkload.loss, []

    def loss(self, model, batch):
        calls.append(1)
        value = original(self, model, batch)
        return value * float("nan") if len(calls) in steps else value

    monkeypatch.setattr(RegressionWorkload, "loss", loss)


def drop_updates_at(monkeypatch: pytest.MonkeyPatch, steps: set[int]) -> None:
    """The reference: NovoGrad's update is not applied at these steps (the batch is used, the schedule moves on)."""
    original, calls = NovoGrad.step, []

    def step(self, *args, **kwargs):
        calls.append(1)
        return None if len(calls) in steps else original(self, *args, **kwargs)

    monkeypatch.setattr(NovoGrad, "step", step)


def assert_weights_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------- skipped steps
def test_a_nonfinite_step_is_skipped_and_equals_a_run_without_its_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        poison_loss_at(patch, {4})
        summary = train(tmp_path / "skipped")
    with monkeypatch.context() as patch:
        drop_updates_at(patch, {4})
        train(tmp_path / "reference")
    train(tmp_path / "clean")

    skipped, reference, clean = (weights(tmp_path / name) for name in ("skipped", "reference", "clean"))
    assert_weights_equal(skipped, reference)
    assert all(torch.isfinite(w).all() for w in skipped.values())
    # Negative control: the update of step 4 is far above bit equality, so the comparison can fail.
    assert largest_difference(skipped, clean) > 1e-4
    assert summary["skipped_steps"] == 1 and "diverged" not in summary and "mse" in summary
    records = metrics(tmp_path / "skipped")
    assert [r["train/skipped_steps"] for r in records if "train/skipped_steps" in r] == [0, 0, 0, 1, 1, 1, 1, 1]
    losses = {r["step"]: r["train/loss"] for r in records if "train/loss" in r}
    assert [step for step, loss in losses.items() if loss != loss] == [4]  # NaN only for the skipped step alone
    assert json.loads((tmp_path / "skipped" / "summary.json").read_text())["skipped_steps"] == 1


def test_a_persistent_divergence_stops_with_status_3_and_a_finite_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from novograd.train import main

    poison_loss_at(monkeypatch, range(3, 100))
    output_dir = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["novograd.train", *REGRESSION, "trainer.max_consecutive_skips=3",
                                      "trainer.checkpoint_every_steps=1", f"trainer.output_dir={output_dir}"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 3
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["diverged"] is True and summary["diverged_at_step"] == 3 and summary["steps"] == 5
    assert not {"mse", "best_mse"} & summary.keys()  # never scored
    # Steps 3 and 4 were skipped, so their checkpoints hold the weights of step 2, finite.
    assert summary["last_checkpoint_step"] == 4
    checkpoints = output_dir / "checkpoints"
    assert_weights_equal(weights(output_dir), torch.load(checkpoints / "previous.pt", weights_only=False)["model"])
    assert all(torch.isfinite(t).all() for t in weights(output_dir).values())
    log = capsys.readouterr().out + capsys.readouterr().err
    assert "Diverged at step 3" in log and "last.pt (step 4)" in log and "lower optimizer.lr" in log

    # The same command again: the run stays diverged, says so, and trains nothing.
    with pytest.raises(SystemExit) as again:
        main()
    assert again.value.code == 3 and json.loads((output_dir / "summary.json").read_text()) == summary


def test_stop_policy_ends_at_the_first_nonfinite_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poison_loss_at(monkeypatch, {5})
    summary = train(tmp_path, "trainer.nonfinite=stop")
    assert summary["diverged"] and summary["diverged_at_step"] == 5 and "(trainer.nonfinite=stop)" in \
        summary["diverged_reason"]


def test_rewind_reloads_the_last_checkpoint_and_moves_past_the_bad_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    every_2 = ("trainer.nonfinite=rewind", "trainer.checkpoint_every_steps=2")
    with monkeypatch.context() as patch:
        poison_loss_at(patch, {5})
        summary = train(tmp_path / "rewound", *every_2)
    # Step 5 is bad: back to the checkpoint of step 4, then past batch 5; that equals dropping update 5 only.
    with monkeypatch.context() as patch:
        drop_updates_at(patch, {5})
        train(tmp_path / "reference", *every_2)
    assert_weights_equal(weights(tmp_path / "rewound"), weights(tmp_path / "reference"))
    assert summary["skipped_steps"] == 1 and not summary.get("diverged")

    # Bad at 3 with checkpoints every 4 steps: back to the start (no checkpoint yet) diverges; at step 6, back to
    # step 4, dropping updates 5 and 6.
    with monkeypatch.context() as patch:
        poison_loss_at(patch, {6})
        summary = train(tmp_path / "two", "trainer.nonfinite=rewind", "trainer.checkpoint_every_steps=4")
    with monkeypatch.context() as patch:
        drop_updates_at(patch, {5, 6})
        train(tmp_path / "two_reference", "trainer.nonfinite=rewind", "trainer.checkpoint_every_steps=4")
    assert_weights_equal(weights(tmp_path / "two"), weights(tmp_path / "two_reference"))
    assert summary["skipped_steps"] == 2
    # Negative control: dropping update 6 alone is a different run.
    assert largest_difference(weights(tmp_path / "two"), weights(tmp_path / "reference")) > 1e-4


def test_rewinds_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poison_loss_at(monkeypatch, range(3, 100))
    summary = train(tmp_path, "trainer.nonfinite=rewind", "trainer.max_rewinds=2", "trainer.checkpoint_every_steps=1")
    assert summary["diverged"] and "after 2 rewinds" in summary["diverged_reason"]
    assert summary["last_checkpoint_step"] == 2


def test_fp16_loss_scale_below_the_floor_is_a_divergence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poison_loss_at(monkeypatch, range(2, 100))
    # GradScaler halves its scale (65536) at each skipped step: below 8192 after the fourth.
    summary = train(tmp_path, "trainer.precision=fp16", "trainer.min_loss_scale=8192")
    assert summary["diverged"] and "loss scale fell to 4096" in summary["diverged_reason"]
    assert summary["skipped_steps"] == 4


def test_an_update_that_overflows_the_weights_is_never_saved_or_scored(tmp_path: Path) -> None:
    """The issue's example: SGD at lr 1e6 makes the weights infinite through finite gradients."""
    summary = train(tmp_path, "optimizer=sgd", "optimizer.lr=1e12", "trainer.checkpoint_every_steps=1")
    assert summary["diverged"] and "mse" not in summary
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    tensors = [*state["model"].values(), *(t for s in state["optimizer"]["state"].values() for t in s.values()
                                          if isinstance(t, torch.Tensor))]
    assert all(torch.isfinite(t).all() for t in tensors)


# ------------------------------------------------------------------------------------------ the parts, alone
def test_a_skipped_step_puts_batchnorm_statistics_back() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    snapshot = BufferSnapshot(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    snapshot.take()
    model(torch.randn(8, 3) * 1e30)  # moves the running statistics (to inf)
    moved = {k: v.clone() for k, v in model.state_dict().items()}
    assert not all(torch.equal(moved[k], before[k]) for k in before)  # negative control: the forward changed them
    snapshot.restore_where(torch.zeros(()))  # an applied step keeps what the forward pass did
    assert all(torch.equal(model.state_dict()[k], moved[k]) for k in moved)
    snapshot.restore_where(torch.ones(()))  # a skipped step does not
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)


def test_fused_optimizers_skip_on_the_device_and_others_after_one_read() -> None:
    for build in (lambda ps: torch.optim.AdamW(ps, lr=0.1, fused=True), lambda ps: torch.optim.SGD(ps, lr=0.1),
                  lambda ps: NovoGrad(ps, lr=0.1)):
        param = torch.nn.Parameter(torch.ones(3))
        optimizer = build([param])
        for found, changes in ((1.0, False), (0.0, True)):
            param.grad = torch.full((3,), 0.5)
            state_before = {k: v.clone() for k, v in optimizer.state.get(param, {}).items()}
            before = param.detach().clone()
            step_unless(optimizer, torch.tensor(found))
            assert (not torch.equal(param, before)) == changes, (optimizer, found)
            if not changes:
                assert all(torch.equal(optimizer.state[param][k], v) for k, v in state_before.items())
        assert not hasattr(optimizer, "found_inf")


def test_skip_counter_counts_streaks_on_the_device() -> None:
    counter = SkipCounter(torch.device("cpu"))
    for step, found in enumerate([0, 1, 1, 0, 1, 1, 1], start=1):
        counter.add(torch.tensor(float(found)), step)
    counts = counter.read()
    assert (counts.skipped, counts.consecutive, counts.streak_start, counts.first) == (5, 3, 5, 2)
    counter.add(torch.tensor(0.0), 8)
    assert counter.read() == type(counts)(0, 0, 0, 0)


# ------------------------------------------------------------------------------------------------ checkpoints
def test_a_truncated_last_checkpoint_falls_back_to_the_previous_and_resumes_exactly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train(tmp_path / "whole")
    stopped = tmp_path / "stopped"
    train(stopped, "trainer.stop_at_step=6", "trainer.checkpoint_every_steps=1")
    last = stopped / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # power lost after an unsynced rename

    with caplog.at_level("WARNING"):
        train(stopped)
    assert "last.pt is damaged" in caplog.text and "previous.pt (step 5)" in caplog.text
    assert_weights_equal(weights(stopped), weights(tmp_path / "whole"))


def test_an_unreadable_checkpoint_without_a_previous_one_names_the_file(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep_last_k=0)
    manager.last_path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointUnreadableError, match=r"last\.pt cannot be read .* no previous\.pt"):
        manager.load_last()


def test_a_full_disk_during_a_save_leaves_the_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = CheckpointManager(tmp_path, keep_last_k=0)
    manager.save({"w": torch.ones(1000), "progress": {"step": 1}}, step=1, is_best=False)
    kept = manager.last_path.read_bytes()
    real_save = torch.save

    def fills_the_disk(obj, file):
        file.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", fills_the_disk)
    with pytest.raises(CheckpointSpaceError, match=rf"in {tmp_path}: a checkpoint needs about 8,000 bytes and "
                                                   r"[\d,]+ are free\. The checkpoints already there are intact"):
        manager.save({"w": torch.zeros(2000), "progress": {"step": 2}}, step=2, is_best=False)
    assert manager.last_path.read_bytes() == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "previous.pt"]  # no temporary left
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(manager.load_last()["w"], torch.ones(1000))


def test_a_full_disk_ends_the_run_with_status_4_and_one_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from novograd.train import main

    def no_space(obj, file):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    monkeypatch.setattr(sys, "argv", ["novograd.train", *REGRESSION, f"trainer.output_dir={tmp_path}"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 4
    assert "No space left to write last.pt" in capsys.readouterr().out


def test_a_save_syncs_the_data_before_the_rename_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file")
        real_fsync(fd)

    def replace(source, target) -> None:
        events.append(f"rename {Path(target).name}")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    manager = CheckpointManager(tmp_path, keep_last_k=0)
    manager.save({"w": torch.ones(3)}, step=1, is_best=False)
    assert events[:3] == ["fsync file", "rename last.pt", "fsync dir"]
    events.clear()
    manager.save({"w": torch.ones(3)}, step=2, is_best=False)
    assert events[:4] == ["rename previous.pt", "fsync file", "rename last.pt", "fsync dir"]


@pytest.mark.parametrize("path", [{"foreach": False}, {"foreach": True}, {"fused": True}])
def test_novograd_judges_a_step_from_the_layer_norms_it_computes_anyway(path: dict) -> None:
    """step(nonfinite=flag): skipped, weights and state untouched (a layer's first step included), when the flag is
    set or a gradient is not finite; applied, as without the argument, otherwise (the negative control)."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64)), torch.nn.Parameter(torch.randn(3))]
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    optimizer, plain = NovoGrad(params, lr=0.1, **path), NovoGrad(reference, lr=0.1, **path)
    clear, raised = torch.zeros(()), torch.ones(())
    for grads, flag, skipped in (([1.0, float("nan")], clear, True), ([1.0, 2.0], raised, True),
                                 ([1.0, 2.0], clear, False), ([float("inf"), 2.0], clear, True),
                                 ([0.5, 3.0], clear, False)):
        for p, q, g in zip(params, reference, grads):
            p.grad, q.grad = torch.full_like(p, g), torch.full_like(q, g)
        before = [p.detach().clone() for p in params]
        state_before = {id(p): {k: v.clone() for k, v in optimizer.state[p].items()} for p in optimizer.state}
        optimizer.step(nonfinite=flag, max_grad_norm=10.0)
        assert optimizer.skipped is skipped
        if skipped:
            assert all(torch.equal(p, b) for p, b in zip(params, before))
            assert {id(p): {k: v for k, v in optimizer.state[p].items()} for p in optimizer.state}.keys() == \
                state_before.keys()
        else:
            plain.step(max_grad_norm=10.0)
            assert all(torch.equal(p, q) for p, q in zip(params, reference))
    assert not all(torch.equal(p, b) for p, b in zip(params, before))


def test_a_damaged_last_checkpoint_never_becomes_previous(tmp_path: Path) -> None:
    """After a resume fell back to previous.pt, the next save keeps that good file as previous.pt instead of
    rotating the damaged last.pt into its place; a last.pt this process never read (a run started afresh over an
    earlier one) is not kept as a fallback either."""
    first = CheckpointManager(tmp_path, keep_last_k=0)
    for step in (1, 2):
        first.save({"progress": {"step": step}}, step=step, is_best=False)
    first.last_path.write_bytes(first.last_path.read_bytes()[:10])
    resumed = CheckpointManager(tmp_path, keep_last_k=0)
    assert resumed.load_last()["progress"]["step"] == 1 and resumed.latest == (resumed.previous_path, 1)
    resumed.save({"progress": {"step": 2}}, step=2, is_best=False)
    assert torch.load(resumed.previous_path, weights_only=False)["progress"]["step"] == 1

    afresh = CheckpointManager(tmp_path, keep_last_k=0)  # trainer.resume=false: last.pt is not read
    afresh.save({"progress": {"step": 1}}, step=1, is_best=False)
    assert torch.load(afresh.previous_path, weights_only=False)["progress"]["step"] == 1  # still the old previous
    afresh.save({"progress": {"step": 2}}, step=2, is_best=False)
    assert torch.load(afresh.previous_path, weights_only=False)["progress"]["step"] == 1  # this run's step 1


def test_the_launcher_runs_torchrun_without_restarts_and_counts_them_itself() -> None:
    from novograd.engine.launcher import without_max_restarts

    row = ["-m", "novograd.train", "experiment=x", "--max-restarts=9"]  # the script's own arguments stay its own
    argv, restarts = without_max_restarts(["--standalone", "--max-restarts", "5", *row])
    assert restarts == 5 and argv == ["--standalone", "--max-restarts", "5", "-m", "--max-restarts=0", *row[1:]]
    from torch.distributed.run import get_args_parser

    assert get_args_parser().parse_args(argv).max_restarts == 0  # the last occurrence is torchrun's
    with pytest.raises(SystemExit, match="whole number >= 0"):
        without_max_restarts(["--max-restarts=-1", *row])
