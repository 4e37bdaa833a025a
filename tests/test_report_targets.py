"""Time-to-target and steps-to-target: the trainer's training time at each evaluation (evaluation and checkpoint
time left out, resumed segments added up), and the report's first evaluation that reaches a table's target."""

import json
import math
import time
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf
from report_runs import jasper_records, run_config, write_run
from test_failsafe import poison_loss_at

import novograd.engine.checkpoint as checkpoint_module
import novograd.engine.trainer as trainer_module
from novograd.engine import run
from novograd.engine.compose import CONFIG_DIR, compose_config
from novograd.report.claims import load_claims
from novograd.engine.config_checks import config_errors
from novograd.engine.target import TRAIN_ELAPSED, target_summary
from novograd.report.sources import _jsonl_history, local_runs
from novograd.report.tables import load_paper_tables, main
from novograd.report.targets import (
    Reached, RowTimes, Target, TimeLine, render_times, row_times, table_target, time_to_target)

TABLES = load_paper_tables()
GOALS = load_claims()["goals"]
PAUSE_S = 0.1


def test_the_evaluation_records_hold_training_time_without_evaluations_and_checkpoints_across_a_resume(
        tmp_path, monkeypatch):
    """Each evaluation and each checkpoint sleeps PAUSE_S: the training time at the evaluations leaves all of them
    out, while the run's wall time holds them; the stopped and the resumed segment add up."""
    evaluate, save = trainer_module.evaluate, checkpoint_module.CheckpointManager.save
    monkeypatch.setattr(trainer_module, "evaluate", lambda *a, **k: (time.sleep(PAUSE_S), evaluate(*a, **k))[1])
    monkeypatch.setattr(checkpoint_module.CheckpointManager, "save",
                        lambda self, *a, **k: (time.sleep(PAUSE_S), save(self, *a, **k))[1])
    # A target every evaluation reaches: the first, at step 2 of the stopped segment, is the run's.
    common = ["debug=regression", "logger=none", "trainer.max_steps=6", "trainer.eval_every_steps=2",
              "target={metric: mse, value: 1.0e9}"]
    stopped = run(compose_config([*common, "trainer.stop_at_step=3"], tmp_path))
    assert stopped["preempted"]
    first_segment = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    summary = run(compose_config(common, tmp_path))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evaluations = [(r["step"], r[TRAIN_ELAPSED]) for r in records if "eval/mse" in r]
    assert [step for step, _ in evaluations] == [2, 4, 6]
    (at_step_2,) = [r[TRAIN_ELAPSED] for r in first_segment if "eval/mse" in r]
    reached = {"target": {"metric": "mse", "value": 1e9, "goal": "min"}, "reached_target": True,
               "steps_to_target": 2, "time_to_target_s": at_step_2}
    assert {key: stopped[key] for key in reached} == reached
    # Kept across the resume (its evaluations at steps 4 and 6 reach the target too), in summary.json as returned.
    assert {key: summary[key] for key in reached} == reached
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    times = [seconds for _, seconds in evaluations]
    assert times == sorted(times) and times[0] > 0
    # The wall time (taken as the last checkpoint began) holds the evaluations at steps 2, 4 and 6 and the checkpoints
    # at steps 2 and 4 (the stop's at step 3 is in neither: its time was taken before it); the training time at the
    # last evaluation leaves the first four out: without the exclusion the difference would be one pause.
    assert summary["wall_time_s"] - times[-1] >= 5 * PAUSE_S

    history = _jsonl_history(tmp_path / "metrics.jsonl")
    mse = [r["eval/mse"] for r in history("eval/mse")]
    target = Target("mse", mse[1], "min", "mse")  # reached at step 4, or at step 2 when that was as low
    first = next(i for i, value in enumerate(mse) if value <= mse[1])
    assert time_to_target(SimpleNamespace(history=history, summary={}), target) == Reached(*evaluations[first])


def regression(output_dir, *overrides):
    return run(compose_config(["debug=regression", "logger=none", "trainer.eval_every_steps=2", *overrides],
                              output_dir))


def test_a_resumed_run_catches_up_a_target_its_checkpoint_never_checked(tmp_path):
    """A checkpoint from before the run had its target (or had another): the resumed run finds the first of its
    logged evaluations that reached it, with that evaluation's training time."""
    stopped = regression(tmp_path, "trainer.max_steps=4", "trainer.stop_at_step=3")
    assert "target" not in stopped  # no target, no keys
    (first,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
                if "eval/mse" in line]
    summary = regression(tmp_path, "trainer.max_steps=4", f"target={{metric: mse, value: {first['eval/mse']!r}}}")
    assert (summary["reached_target"], summary["steps_to_target"]) == (True, 2)
    assert summary["time_to_target_s"] == first[TRAIN_ELAPSED]


def test_a_run_that_never_reaches_its_target_says_so(tmp_path):
    summary = regression(tmp_path, "trainer.max_steps=2", "target={metric: mse, value: -1.0}")  # an MSE is >= 0
    assert json.loads((tmp_path / "summary.json").read_text())["reached_target"] is False
    assert (summary["steps_to_target"], summary["time_to_target_s"]) == (None, None)


def test_a_diverged_run_keeps_the_target_it_reached_before_diverging(tmp_path, monkeypatch):
    poison_loss_at(monkeypatch, {3})
    summary = regression(tmp_path, "trainer.max_steps=4", "trainer.nonfinite=stop", "target={metric: mse, value: 1e9}")
    assert summary["diverged"] and summary["diverged_at_step"] == 3
    assert (summary["reached_target"], summary["steps_to_target"]) == (True, 2)


def test_a_target_that_names_no_metric_of_the_workload_is_refused_before_any_work():
    problems = config_errors(compose_config(["debug=regression", "target={metric: top1, value: 76.33}"], "x"))
    assert problems == ["target.metric='top1' is no metric of this workload; choose one of mse."]
    assert config_errors(compose_config(["debug=regression", "target={metric: mse, value: nan}"], "x")) == [
        "target.value must be a finite number, got nan."]


def test_every_rows_config_names_the_target_the_report_derives_for_its_tables():
    """The run measures itself against its row config's target; the report derives each table's from the paper's
    numbers: a row in two tables (Tables 2 and 3) needs both to agree. (Every row composes with a valid target:
    tests/test_configs.py checks each row's config.)"""
    for name, table in TABLES.items():
        target = table_target(table, GOALS)
        for row in table["rows"]:
            if "experiment" in row:
                config = OmegaConf.load(CONFIG_DIR / "experiment" / f"{row['experiment']}.yaml")
                assert config.target == {"metric": target.metric, "value": target.value}, (name, row["experiment"])


def test_targets_are_the_worst_final_value_of_a_tables_rows():
    assert str(table_target(TABLES["table1"], GOALS)) == "top-1 ≥ 76.33"  # SGD, 200 epochs
    assert str(table_target(TABLES["table4"], GOALS)) == "dev-clean ≤ 13.2"  # Adam
    assert str(table_target(TABLES["table6"], GOALS)) == "val PPL ≤ 23.84"
    assert table_target(TABLES["table3"], GOALS).value == 75.78  # the quoted SGD results are not rows of ours


def test_runs_reach_the_target_at_their_first_evaluation_that_does(tmp_path, capsys):
    runs = tmp_path / "runs"
    records = jasper_records(final_wer=3.5, epochs=8)  # dev-clean WER 3.5 + 80 / epoch: at most 13.2 from epoch 9
    for record in records:
        if "eval/wer_dev_clean" in record:
            record[TRAIN_ELAPSED] = 100.0 * record["step"]
    write_run(runs, "fast", run_config("table4/novograd"), {"wer_dev_clean": 3.5}, records)
    slow = jasper_records(final_wer=10.0, epochs=8)  # 10 + 80 / epoch: never at 13.2 or below within 8 epochs
    write_run(runs, "slow", run_config("table4/sgd"), {"wer_dev_clean": 10.0}, slow)
    old = jasper_records(final_wer=3.0, epochs=8)  # logged before evaluation records held the training time
    write_run(runs, "old", run_config("table4/adam"), {"wer_dev_clean": 3.0}, old)
    by_experiment = {r.experiment: r for r in local_runs(runs)}
    target = table_target(TABLES["table4"], GOALS)
    # The boundary exactly: a target of 3.5 + 80 / 5 is reached at epoch 5 (step 50), not before.
    at_epoch_5 = Target(target.metric, 3.5 + 80 / 5, "min", target.title)
    assert time_to_target(by_experiment["table4/novograd"], at_epoch_5) == Reached(50, 5000.0)
    assert time_to_target(by_experiment["table4/sgd"], at_epoch_5) is None
    assert time_to_target(by_experiment["table4/adam"], at_epoch_5) == Reached(50, None)  # 3 + 80 / 5 <= 19.5
    times = row_times([by_experiment["table4/novograd"], by_experiment["table4/sgd"]], at_epoch_5)
    assert (times.reached, times.runs, times.steps, times.seconds) == (1, 2, math.inf, math.inf)  # median of 50, inf

    main(["--runs", str(runs), "--out", str(tmp_path / "tables"), "--figures", str(tmp_path / "figures")])
    text = (tmp_path / "tables" / "time_to_target.md").read_text()
    assert "### Table 4: dev-clean ≤ 13.2" in text
    assert "| NovoGrad (`table4/novograd`) | 0 of 1 | missed | missed |" in text
    assert "| Adam (`table4/adam`) | 1 of 1 | 80 | not logged |" in text  # 3 + 80/8 = 13 <= 13.2 at epoch 8
    assert "- steps to target, over table4: score adam 1.000, novograd 0.000, sgd 0.000" in text
    assert "- training time to target: no table has runs that reached its target yet." in text  # Adam's not logged
    assert (tmp_path / "figures" / "performance_profiles.png").is_file()
    assert "# Time to target" in capsys.readouterr().out


def test_the_report_takes_a_runs_time_to_target_from_its_summary_and_from_the_records_of_older_runs(tmp_path):
    """Every run's records first reach dev-clean 13.2 at step 80 (WER 3 + 80 / epoch, no training time logged); the
    summaries say otherwise, so each answer shows where it was read."""
    target = table_target(TABLES["table4"], GOALS)
    other = Target(target.metric, 20.0, "min", target.title)
    summaries = {"a_at_step_40": target_summary(target, 40, 123.0), "b_missed": target_summary(target, None, None),
                 "c_other_target": target_summary(other, 10, 1.0), "d_before_the_keys": {}}
    for name, keys in summaries.items():
        write_run(tmp_path, name, run_config("table4/novograd"), {"wer_dev_clean": 3.0, **keys},
                  jasper_records(final_wer=3.0, epochs=8))
    found = [time_to_target(run, target) for run in local_runs(tmp_path)]  # in the order of their directories
    assert found == [Reached(40, 123.0), None, Reached(80, None), Reached(80, None)]


def test_training_times_to_target_read_in_hours_as_the_console_writes_them():
    """A median past a day reads as hours (the console's elapsed and wall time), never as `1 day, 2:03:04`."""
    target = table_target(TABLES["table4"], GOALS)
    lines = [TimeLine("table4", target, label, "table4/x", RowTimes(1, 1, 10.0, seconds))
             for label, seconds in [("day", 26 * 3600 + 184.4), ("untimed", None), ("missed", math.inf)]]
    text = render_times({"table4": TABLES["table4"]}, lines)
    assert "| day (`table4/x`) | 1 of 1 | 10 | 26:03:04 |" in text
    assert "| untimed (`table4/x`) | 1 of 1 | 10 | not logged |" in text
    assert "| missed (`table4/x`) | 1 of 1 | 10 | missed |" in text


def test_the_performance_profile_of_known_times_is_algoperfs():
    """Three workloads, three optimizers; by hand: ratios a (1, 2, 1), b (2, 1, inf), c (4, 4, 2)."""
    import numpy as np

    from novograd.report.profiles import performance_ratios, profile, score

    times = {"w1": {"a": 10.0, "b": 20.0, "c": 40.0}, "w2": {"a": 6.0, "b": 3.0, "c": 12.0},
             "w3": {"a": 5.0, "b": math.inf, "c": 10.0}, "missed by all": {"a": math.inf}}
    ratios = performance_ratios(times)
    assert ratios == {"a": {"w1": 1.0, "w2": 2.0, "w3": 1.0}, "b": {"w1": 2.0, "w2": 1.0, "w3": math.inf},
                      "c": {"w1": 4.0, "w2": 4.0, "w3": 2.0}}
    taus = np.array([1.0, 1.5, 2.0, 3.99, 4.0])
    assert profile(ratios["a"], taus).tolist() == pytest.approx([2 / 3, 2 / 3, 1, 1, 1])
    assert profile(ratios["b"], taus).tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert profile(ratios["c"], taus).tolist() == pytest.approx([0, 0, 1 / 3, 1 / 3, 1])
    # Areas over [1, 4] / 3: a (3 + 2 + 3) / 9, b (2 + 3 + 0) / 9, c (0 + 0 + 2) / 9.
    assert [score(ratios[name]) for name in "abc"] == pytest.approx([8 / 9, 5 / 9, 2 / 9])
    # The exact area agrees with a fine numerical integration of the profile (a negative control on the formula).
    grid = np.linspace(1.0, 4.0, 300_001)
    for name in "abc":
        assert score(ratios[name]) == pytest.approx(np.trapezoid(profile(ratios[name], grid), grid) / 3, abs=1e-4)
    assert performance_ratios({"w": {"a": 1.0}, "v": {"b": 2.0}})["a"] == {"w": 1.0, "v": math.inf}  # b only on v
