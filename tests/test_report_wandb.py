"""The W&B side of the report, offline: what `RunLogger` gives W&B (group, job type, flat and nested config,
summaries), `--from wandb` reading it back through a fake API into the same tables and figures as the local files,
and `--to wandb` logging the report to an offline run."""

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from report_runs import jasper_records, run_config, write_run

import novograd.report.tables as tables_module
from novograd.engine.logger import STEP_METRIC, RunLogger
from novograd.engine.target import TRAIN_ELAPSED, Reached, Target, first_reached, target_summary
from novograd.report.figures import draw_figure
from novograd.report.sources import local_runs, wandb_runs
from novograd.report.rows import sort_runs
from novograd.report.tables import load_paper_tables, main, paper_experiments
from novograd.report.to_wandb import CLAIM_COLUMNS, COMPARISON_RUN_ID, TIME_COLUMNS, table_columns

TABLES = load_paper_tables()
GOALS = {"wer_dev_clean": "min", "wer_dev_other": "min", "wer_test_clean": "min", "wer_test_other": "min"}


# ------------------------------------------------------------------------------------- a W&B that records, an API
class RecordedRun:
    """What `wandb.init` was given and what the run was sent; a resumed id continues the same record."""

    def __init__(self, init: dict):
        self.init, self.id = init, init["id"]
        self.history: list[dict] = []
        self.summary: dict = {}
        self.summary_goals: dict = {}
        self.settings = types.SimpleNamespace(mode=init["mode"])
        self.offline = False
        self.dir = str(Path(init["dir"]) / "wandb" / f"run-{self.id}" / "files")

    def define_metric(self, name, summary=None, step_metric=None):
        if summary:
            self.summary_goals[name] = summary

    def log(self, data):
        self.history.append(json.loads(json.dumps(data)))

    def finish(self):
        pass


class RecordingWandb(types.ModuleType):
    def __init__(self):
        super().__init__("wandb")
        self.runs: dict[str, RecordedRun] = {}

    def init(self, **kwargs):
        run = self.runs.get(kwargs["id"])
        if run is None:
            run = self.runs[kwargs["id"]] = RecordedRun(kwargs)
        run.init = kwargs  # W&B's resume="allow": the same run, its config updated
        return run

    def teardown(self):
        pass

    @staticmethod
    def Settings(**settings):  # noqa: N802 (wandb's name)
        return settings


def _matches(value, condition):
    if isinstance(condition, dict):
        ((operator, operand),) = condition.items()
        assert operator == "$in", f"the fake API does not know {operator}"
        return value in operand
    return value == condition


class FakeApiRun:
    """A run as `wandb.Api().runs()` returns it, built from what the run recorded: the config through JSON, the
    summary with W&B's min/max summaries of the defined metrics, history rows as `scan_history` gives them."""

    def __init__(self, run: RecordedRun):
        self.group = run.init["group"]
        self.config = json.loads(json.dumps(run.init["config"]))
        self.summary_metrics = dict(run.summary)
        for name, goal in run.summary_goals.items():
            values = [row[name] for row in run.history if name in row]
            if values:
                self.summary_metrics[name] = {goal: (min if goal == "min" else max)(values)}
        self.rows = run.history
        self.scans: list[list[str]] = []

    def scan_history(self, keys):
        self.scans.append(keys)
        return [row for row in self.rows if all(key in row for key in keys)]

    def field(self, name):
        return self.group if name == "group" else self.config.get(name.removeprefix("config."))


class FakeApi:
    def __init__(self, recorded: RecordingWandb):
        self.recorded = recorded
        self.calls: list[tuple[str, dict]] = []

    def runs(self, path, filters):
        """The project's runs that pass `filters` ($and of field conditions, as wandb_filters writes them)."""
        self.calls.append((path, filters))
        runs = [FakeApiRun(run) for run in self.recorded.runs.values() if path.split("/")[-1] == run.init["project"]]
        return [run for run in runs if all(_matches(run.field(name), condition)
                                           for clause in filters["$and"] for name, condition in clause.items())]


@pytest.fixture
def recording_wandb(monkeypatch):
    fake = RecordingWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return fake


def train_with_logger(output_dir, config, records, summary=None, run_id=None, start_step=0):
    """What the trainer does with its `RunLogger`: log every record, write the summary at the end, close."""
    settings = {**config["logger"], "name": output_dir.name}
    output_dir.mkdir(parents=True, exist_ok=True)
    logger = RunLogger(output_dir, True, settings, GOALS, config, run_id, 1000, start_step, False)
    for record in records:
        logger.log(record["step"], {k: v for k, v in record.items() if k != "step"})
    if summary is not None:
        logger.write_summary(summary)
    logger.close()
    return logger.run_id


# ---------------------------------------------------------------------------------------------------------- tests
def test_a_run_is_grouped_by_table_with_its_optimizer_as_job_type_and_a_flat_config(tmp_path, recording_wandb):
    config = run_config("table5/novograd_b4k", "seed=3")
    train_with_logger(tmp_path / "run", config, [])
    (run,) = recording_wandb.runs.values()
    assert run.init["group"] == "table5" and run.init["job_type"] == "novograd"
    flat = {key: run.init["config"][key] for key in ("table", "row", "optimizer_name", "lr", "weight_decay",
                                                      "batch_size", "epochs", "max_steps", "total_steps",
                                                      "precision", "world_size", "seed")}
    assert flat == {"table": "table5", "row": "table5/novograd_b4k", "optimizer_name": "novograd", "lr": 0.03,
                    "weight_decay": 0.001, "batch_size": 4096, "epochs": 400, "max_steps": None,
                    "total_steps": 1000, "precision": "bf16", "world_size": 1, "seed": 3}
    assert {key: run.init["config"][key] for key in config} == config  # the nested resolved config, whole
    assert run.summary_goals == {f"eval/{name}": "min" for name in GOALS}

    # Without logger.group, the group is still the row's table; a debug run has a group of its own, apart from rows.
    train_with_logger(tmp_path / "nogroup", {**config, "logger": {**config["logger"], "group": None}}, [])
    debug = run_config("table4/adam", "debug=smoke")
    train_with_logger(tmp_path / "debug", {**debug, "experiment_name": None, "logger": {**debug["logger"],
                                                                                       "group": None}}, [])
    nogroup, debug_run = list(recording_wandb.runs.values())[1:]
    assert nogroup.init["group"] == "table5"
    assert debug_run.init["group"] == "debug-smoke" and debug_run.init["job_type"] == "adam"
    assert "debug" in debug_run.init["tags"]
    assert debug_run.init["config"]["table"] is None


def test_from_wandb_gives_the_tables_and_figures_of_the_same_runs_on_disk(tmp_path, recording_wandb, monkeypatch):
    """Each run is written to its output directory and, through `RunLogger`, to the recording W&B: the report from
    the fake API equals the report from the files, run selection (preempted, unfinished, variants) included."""
    runs = tmp_path / "runs"
    wers = {"wer_dev_clean": 4.0, "wer_dev_other": 12.0, "wer_test_clean": 4.5, "wer_test_other": 12.5}

    def both(name, config, summary, records):
        write_run(runs, name, config, summary)  # metrics.jsonl is written by the logger, as in training
        train_with_logger(runs / name, config, records, summary)

    # The trainer's time-to-target keys (Table 5's target: dev-clean 4.01): one run reached it, one missed it.
    target = Target("wer_dev_clean", 4.01, "min")
    both("b512", run_config("table5/novograd_b512"), {**wers, **target_summary(target, 30, 99.0)},
         jasper_records(4.0, 4))
    both("b512_seed1", run_config("table5/novograd_b512", "seed=1"),
         {**wers, "wer_dev_clean": 4.4, **target_summary(target, None, None)}, jasper_records(4.4, 4))
    both("b4k_lr", run_config("table5/novograd_b4k", "optimizer.lr=0.05"), wers, jasper_records(6.0, 3))
    both("table4", run_config("table4/sgd"), {**wers, "wer_dev_other": 13.0}, [])
    # Preempted at epoch 2 and resumed to the end under the same W&B run id: one finished run.
    resumed = run_config("table5/novograd_b8k")
    run_id = train_with_logger(runs / "b8k", resumed, jasper_records(5.0, 2), {"preempted": True, **wers})
    train_with_logger(runs / "b8k", resumed, jasper_records(5.0, 4)[4:], {**wers, "wer_dev_clean": 5.0}, run_id,
                      start_step=20)
    write_run(runs, "b8k_files", resumed, {**wers, "wer_dev_clean": 5.0})
    (runs / "b8k_files" / "metrics.jsonl").write_text((runs / "b8k" / "metrics.jsonl").read_text())
    # Left out by both sources: a preempted run, and one still running (W&B has no final/ summary yet).
    both("preempted", run_config("table5/novograd_b16k"), {**wers, "preempted": True}, jasper_records(9.0, 2))
    train_with_logger(runs / "running", run_config("table5/novograd_b32k"), jasper_records(9.0, 2))

    main(["--runs", str(runs), "--out", str(tmp_path / "local"), "--figures", str(tmp_path / "local_figures")])
    api = FakeApi(recording_wandb)
    monkeypatch.setattr(tables_module, "wandb_api", lambda: api)
    main(["--from", "wandb", "--entity", "E", "--project", "novograd", "--out", str(tmp_path / "wandb"),
          "--figures", str(tmp_path / "wandb_figures")])

    for name in [*TABLES, "claims", "time_to_target"]:
        assert (tmp_path / "wandb" / f"{name}.md").read_text() == (tmp_path / "local" / f"{name}.md").read_text()
    # b512's time to target is its summary's (its records never reach 4.01): 1 of 2 runs, the median infinite.
    assert "| batch 512, lr 0.015, wd 0.001 (`table5/novograd_b512`) | 1 of 2 | missed | missed |" in (
        tmp_path / "wandb" / "time_to_target.md").read_text()
    table5 = (tmp_path / "wandb" / "table5.md").read_text()
    assert "| 3.58 | 4.20 ± 0.28 (n=2) |" in table5 and "| 3.69 | 5.00 |" in table5
    assert "optimizer.lr 0.05 instead of 0.03" in table5 and "`table5/novograd_b16k`) | 3.67 | - |" in table5
    assert "| 3.91 | 4.00 | 12.77 | 13.00 |" in (tmp_path / "wandb" / "table4.md").read_text()

    ((path, filters),) = api.calls
    assert path == "E/novograd"
    assert filters == {"$and": [{"group": {"$in": [f"table{i}" for i in range(1, 8)]}},
                                {"config.experiment_name": {"$in": sorted(paper_experiments(TABLES))}}]}
    from_wandb = draw_figure(TABLES["table5"], TABLES["table5"]["figure"],
                             sort_runs(wandb_runs(api, "E", "novograd", paper_experiments(TABLES))))
    from_files = draw_figure(TABLES["table5"], TABLES["table5"]["figure"], sort_runs(local_runs(runs)))
    assert from_wandb.missing == from_files.missing == ["table5/novograd_b16k", "table5/novograd_b32k"]
    wandb_lines, file_lines = from_wandb.figure.axes[0].get_lines(), from_files.figure.axes[0].get_lines()
    # b512 (two seeds), the b4k variant, the resumed b8k run, and the paper's value of each of these three rows
    assert len(wandb_lines) == len(file_lines) == 7
    b8k = [line for line in wandb_lines if line.get_label().startswith("batch 8K") and "paper" not in line.get_label()]
    np.testing.assert_allclose(b8k[0].get_xdata(), [1, 2, 3, 4])  # both segments of the resumed run
    for mine, theirs in zip(wandb_lines, file_lines):
        assert mine.get_label() == theirs.get_label()
        np.testing.assert_allclose(mine.get_xdata(), theirs.get_xdata())
        np.testing.assert_allclose(mine.get_ydata(), theirs.get_ydata())


def test_a_wandb_run_resumed_across_the_training_time_change_keeps_its_early_evaluations(tmp_path, recording_wandb):
    """A run whose early evaluations were logged before evaluation records held `train/elapsed_s` and its later
    ones after: every evaluation is read, each with its time where it has one, the early one that reached the
    target is found; each history is scanned once however often it is asked for."""
    config = run_config("table5/novograd_b512")
    records = jasper_records(4.0, 4)  # dev-clean 84, 44, 30.7, 24 at steps 10, 20, 30, 40
    for record in records[5::2]:  # the evaluations at steps 30 and 40
        record[TRAIN_ELAPSED] = 3.0 * record["step"]
    train_with_logger(tmp_path / "run", config, records, {"wer_dev_clean": 24.0})
    (recorded,) = recording_wandb.runs.values()
    api_run = FakeApiRun(recorded)

    class Api:
        def runs(self, path, filters):
            return [api_run]

    (run,) = wandb_runs(Api(), None, "novograd", ["table5/novograd_b512"])
    evaluations = run.history("eval/wer_dev_clean")
    assert [(r["step"], r.get(TRAIN_ELAPSED)) for r in evaluations] == [(10, None), (20, None), (30, 90.0), (40, 120.0)]
    assert first_reached(evaluations, Target("wer_dev_clean", 50.0, "min")) == Reached(20, None)
    assert first_reached(evaluations, Target("wer_dev_clean", 31.0, "min")) == Reached(30, 90.0)
    assert [r["step"] for r in run.history("train/loss")] == [5, 15, 25, 35]
    for metric in ("eval/wer_dev_clean", "eval/wer_dev_other", "train/loss"):
        run.history(metric)
    assert sorted(map(tuple, api_run.scans)) == sorted([
        (STEP_METRIC, TRAIN_ELAPSED), (STEP_METRIC, "epoch", "eval/wer_dev_clean"),
        (STEP_METRIC, "epoch", "eval/wer_dev_other"), (STEP_METRIC, "epoch", "train/loss")])


def test_a_run_in_another_group_or_project_is_not_read(tmp_path, recording_wandb):
    config = run_config("table4/sgd")
    train_with_logger(tmp_path / "mine", {**config, "logger": {**config["logger"], "group": "my-sweep"}}, [],
                      {"wer_dev_clean": 4.0})
    train_with_logger(tmp_path / "other", {**config, "logger": {**config["logger"], "project": "elsewhere"}}, [],
                      {"wer_dev_clean": 4.0})
    assert wandb_runs(FakeApi(recording_wandb), None, "novograd", paper_experiments(TABLES)) == []


def test_from_wandb_without_a_key_says_how_to_log_in(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("NETRC", raising=False)
    with pytest.raises(SystemExit, match="wandb login"):
        main(["--from", "wandb", "--out", str(tmp_path / "tables")])


def test_to_wandb_logs_tables_figures_and_the_dln_study_to_one_offline_run(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    runs, dln = tmp_path / "runs", tmp_path / "dln"
    write_run(runs, "b4k", run_config("table5/novograd_b4k"), {"wer_dev_clean": 4.2}, jasper_records(4.2, 3))
    dln.mkdir()
    (dln / "summary.json").write_text(json.dumps({"runs": [
        {"scenario": "baseline", "optimizer": "novograd", "init": [0.25, 2.0], "verdict": "converged"}]}))
    from matplotlib.figure import Figure

    Figure(figsize=(1, 1)).savefig(dln / "baseline.png")
    main(["--runs", str(runs), "--out", str(tmp_path / "tables"), "--figures", str(tmp_path / "figures"),
          "--to", "wandb", "--dln", str(dln)])

    (run_dir,) = (tmp_path / "wandb").glob(f"offline-run-*-{COMPARISON_RUN_ID}")
    assert f"wandb sync {run_dir}" in capsys.readouterr().out
    media = run_dir / "files" / "media"
    (table5,) = (media / "table" / "tables").glob("table5_*.table.json")
    logged = json.loads(table5.read_text())
    assert logged["columns"] == table_columns(TABLES["table5"])
    assert logged["data"][1][:7] == ["batch 4K, lr 0.03, warmup 0.05, wd 0.001", "table5/novograd_b4k", "", 1,
                                     3.66, 4.2, None]
    assert len(list((media / "table" / "tables").glob("table*.table.json"))) == 7
    # The claims and the times to target, as claims.md and time_to_target.md say them.
    (claims,) = (media / "table" / "tables").glob("claims_*.table.json")
    claims = json.loads(claims.read_text())
    assert claims["columns"] == CLAIM_COLUMNS and len(claims["data"]) == 16
    t5 = {row[0]: row for row in claims["data"]}["t5-16k-comparable"]
    assert t5[3:6] == ["not enough runs", "holds", False]
    assert "batch 512, lr 0.015, wd 0.001: no runs" in t5[6]
    (times,) = (media / "table" / "tables").glob("time_to_target_*.table.json")
    times = json.loads(times.read_text())
    assert times["columns"] == TIME_COLUMNS
    # dev-clean WER 4.2 + 80/epoch over 3 epochs of 10 steps never reaches Table 5's target of 4.01: a miss
    assert times["data"] == [["table5", "dev-clean ≤ 4.01", "batch 4K, lr 0.03, warmup 0.05, wd 0.001",
                              "table5/novograd_b4k", 1, 0, None, None]]
    assert [p.name.split("_")[0] for p in (media / "images" / "figures").iterdir()] == ["figure3"]
    assert len(list((media / "images" / "dln").glob("baseline_*.png"))) == 1
    (verdicts,) = (media / "table" / "dln").glob("verdicts_*.table.json")
    assert json.loads(verdicts.read_text())["data"] == [["baseline", "novograd", "0.25, 2.0", "converged"]]
