"""The paper's claims judged from constructed run records: one that holds, one that does not, one without runs, one
with a diverged run; the margin and the spread; diverged runs under their rows and from W&B; debug runs on request."""

import ast
import math
from collections import Counter
from pathlib import Path

import pytest
from report_runs import run_config, write_run

from novograd.report.claims import FAILS, HOLDS, NO_RUNS, PAPER_CLAIMS, Side, compare, load_claims
from novograd.report.rows import Stat
from novograd.report.sources import wandb_runs
from novograd.report.tables import PAPER_TABLES, load_paper_tables, main

TABLES = load_paper_tables()


def report(tmp_path, runs, *extra):
    main(["--runs", str(runs), "--out", str(tmp_path / "tables"), "--figures", str(tmp_path / "figures"), *extra])
    return (tmp_path / "tables" / "claims.md").read_text()


def verdict_row(claims_md, claim_id):
    (row,) = [line for line in claims_md.splitlines() if line.startswith(f"| {claim_id}:")]
    return [cell.strip() for cell in row.strip("|").split("|")][2:]  # your runs, the paper's numbers


def test_claims_hold_fail_lack_runs_and_count_a_divergence_against_its_row(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_run(runs, "n1", run_config("table1/novograd_100ep"), {"top1": 77.0, "top5": 93.5})
    write_run(runs, "n2", run_config("table1/novograd_100ep", "seed=1"), {"top1": 77.2, "top5": 93.6})
    write_run(runs, "s", run_config("table1/sgd_100ep"), {"top1": 76.0, "top5": 93.0})
    write_run(runs, "a", run_config("table1/adamw_100ep"), {"top1": 76.1, "top5": 93.0})
    write_run(runs, "n200", run_config("table1/novograd_200ep"), {"top1": 76.2, "top5": 93.0})
    write_run(runs, "s200", run_config("table1/sgd_200ep"), {"top1": 76.3, "top5": 93.0})
    write_run(runs, "a200", run_config("table1/adamw_200ep"), {"top1": 76.1, "top5": 93.0})
    diverged = {"diverged": True, "diverged_at_step": 812, "stop_reason": "diverged", "steps": 812}
    write_run(runs, "n300", run_config("table1/novograd_300ep"), diverged)
    claims = report(tmp_path, runs)
    out = capsys.readouterr().out

    assert verdict_row(claims, "t1-100ep") == [HOLDS, HOLDS]
    # The margin: 2 standard errors of the difference (2 x 0.14 / sqrt(2)), above the tolerance of 0.15.
    assert ("- top1, better than: NovoGrad, cosine, lr 0.007, wd 0.002, 100 epochs: 77.10 ± 0.14 (n=2); against SGD, "
            "poly (2), lr 0.4, wd 0.0001, 100 epochs: 76.00 (n=1): difference +1.10, margin 0.20 → holds") in claims
    assert verdict_row(claims, "t1-200ep-beats") == [FAILS, HOLDS]  # 76.2 against SGD's 76.3
    assert verdict_row(claims, "t4-lower-wer") == [NO_RUNS, HOLDS]
    # The 300-epoch row diverged: "no overfitting" does not hold, visibly, and the run is in no mean.
    assert verdict_row(claims, "t1-300ep-no-overfitting") == [f"{FAILS} (a run diverged)", HOLDS]
    assert "300 epochs: diverged at step 812 (1 of 1 runs); against" in claims
    table1 = (tmp_path / "tables" / "table1.md").read_text().splitlines()
    row = next(i for i, line in enumerate(table1) if "`table1/novograd_300ep`" in line)
    assert "| 77.65 | - | 93.62 | - | 1 |" in table1[row]
    assert table1[row + 1].startswith("| ↳ diverged at step 812 (1 of 1 runs) |")
    # The paper's own numbers do not support the 8K claim at the tolerance: 76.64 against Codreanu et al.'s 76.60.
    assert verdict_row(claims, "t3-8k-beats-sgd-methods") == [NO_RUNS, FAILS]
    assert verdict_row(claims, "f4-smaller-gap") == [NO_RUNS, "- (no number)"]

    summary = "2 of 16 claims hold in your runs, 3 do not, 11 not yet run (1 judged with a diverged run)."
    assert summary in claims
    assert f"Claims: {summary} {tmp_path / 'tables' / 'claims.md'}" in out
    assert "### Table 1: ImageNet classification" in out and "| ↳ diverged at step 812 (1 of 1 runs) |" in out


def test_a_diverged_rival_loses_and_a_diverged_row_cannot_win():
    args = ("top1", "better_than")
    trained, diverged = Side("a", Stat(76.0, None, 1), runs=1), Side("b", None, diverged=(40,), runs=1)
    assert compare(*args, trained, diverged, None, "max", 0.15, 2).verdict == HOLDS
    assert compare(*args, diverged, trained, None, "max", 0.15, 2).verdict == FAILS
    assert compare(*args, diverged, diverged, None, "max", 0.15, 2).verdict == FAILS
    assert compare("top1", "worse_than", diverged, trained, None, "max", 0.15, 2).verdict == HOLDS
    assert compare("wer_dev_clean", "on_par_with", trained, diverged, None, "min", 0.1, 2).verdict == HOLDS
    assert compare("top1", "below", diverged, None, 76.5, "max", 0.15, 2).verdict == HOLDS


def side(label, mean, std=None, count=1):
    """A row's runs on one metric: their mean, spread and count (none diverged)."""
    return Side(label, Stat(mean, std, count))


def test_the_margin_is_the_tolerance_or_two_standard_errors_whichever_is_larger():
    left, right = side("n", 77.0, 0.5, 2), side("s", 76.5, 0.5, 2)  # standard error of the difference: 0.5
    wide = compare("top1", "better_than", left, right, None, "max", 0.15, 2)
    assert (wide.verdict, wide.margin) == (FAILS, pytest.approx(1.0))
    narrow = compare("top1", "better_than", side("n", 77.0, 0.1, 2), side("s", 76.5, 0.1, 2), None, "max", 0.15, 2)
    assert (narrow.verdict, narrow.margin) == (HOLDS, pytest.approx(2 * math.sqrt(0.01)))
    below_tolerance = compare("top1", "better_than", side("n", 76.6), side("s", 76.5), None, "max", 0.15, 2)
    assert below_tolerance.verdict == FAILS and below_tolerance.margin == 0.15
    # Lower is better for WER: 3.6 against 3.9 is better, 3.9 against 3.6 is worse.
    assert compare("wer", "better_than", side("n", 3.6), side("s", 3.9), None, "min", 0.1, 2).verdict == HOLDS
    assert compare("wer", "worse_than", side("n", 3.9), side("s", 3.6), None, "min", 0.1, 2).verdict == HOLDS
    assert compare("wer", "on_par_with", side("n", 3.65), side("s", 3.58), None, "min", 0.1, 2).verdict == HOLDS
    assert compare("wer", "on_par_with", side("n", 3.75), side("s", 3.58), None, "min", 0.1, 2).verdict == FAILS


def test_figure4s_gap_is_judged_from_the_histories(tmp_path):
    from report_runs import lm_records

    runs = tmp_path / "runs"
    write_run(runs, "adam", run_config("table6/adam_12b"), {"val_ppl": 24.0, "test_ppl": 25.0},
              lm_records(steps=400, log_every=50, eval_every=100, gap=3.0))
    write_run(runs, "novograd", run_config("table6/novograd_12b"), {"val_ppl": 21.0, "test_ppl": 22.0},
              lm_records(steps=400, log_every=50, eval_every=100, gap=0.5))
    claims = report(tmp_path, runs)
    assert verdict_row(claims, "f4-smaller-gap") == [HOLDS, "- (no number)"]
    assert "difference -2.50, margin 0.20 → holds" in claims  # lm_records: the gaps are 0.5 and 3.0 exactly


def test_every_claim_names_rows_of_its_table_and_metrics_with_a_tolerance_and_the_workloads_goal(tmp_path):
    spec = load_claims(tables=TABLES)
    assert len({claim["id"] for claim in spec["claims"]}) == len(spec["claims"])
    goals = {}
    for path in (PAPER_TABLES.parents[2] / "novograd" / "workloads").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "metric_goals":
                goals |= ast.literal_eval(node.value)
    assert {metric: goal for metric, goal in spec["goals"].items() if metric in goals} == \
        {metric: goals[metric] for metric in spec["goals"] if metric in goals}
    assert set(spec["goals"]) - set(goals) == {"train_val_gap"}  # derived from histories

    bad = tmp_path / "claims.yaml"
    bad.write_text(PAPER_CLAIMS.read_text().replace("better_than: [table1/sgd_100ep", "better_than: [table1/sgd_50ep"))
    with pytest.raises(ValueError, match="'t1-100ep' names \\['table1/sgd_50ep'\\]"):
        load_claims(bad, TABLES)


def test_a_diverged_wandb_run_is_a_finished_run_with_its_step():
    class Run:
        config = {**run_config("table7/novograd"), "experiment_name": "table7/novograd"}
        summary_metrics = {"final/steps": 30, "final/stop_reason": "diverged", "final/diverged": True,
                           "final/diverged_at_step": 30}

    class Api:
        def runs(self, path, filters):
            return [Run()]

    set_aside = Counter()
    (run,) = wandb_runs(Api(), None, "novograd", ["table7/novograd"], set_aside)
    assert run.diverged_at_step == 30 and not set_aside


def test_debug_runs_are_compared_on_request_against_their_rows_debug_twin(tmp_path, capsys):
    runs = tmp_path / "runs"
    for row, top1 in [("table1/novograd_100ep", 50.0), ("table1/sgd_100ep", 25.0), ("table1/adamw_100ep", 30.0)]:
        debug = {**run_config(row, "debug=smoke"), "experiment_name": None}
        write_run(runs, f"{row}/debug=smoke", debug, {"top1": top1, "top5": 100.0})
    write_run(runs, "paper", run_config("table1/sgd_100ep"), {"top1": 76.0, "top5": 93.0})
    claims = report(tmp_path, runs)
    assert verdict_row(claims, "t1-100ep")[0] == NO_RUNS  # by default the debug runs are set aside
    assert "Set aside: 3 debug runs" in capsys.readouterr().out

    claims = report(tmp_path, runs, "--debug")
    out = capsys.readouterr().out
    assert verdict_row(claims, "t1-100ep")[0] == HOLDS
    assert "3 finished runs of paper rows in debug runs of" in out and "0 are variants" in out
    assert "1 runs of paper rows (--debug compares debug runs only)" in out
    row = next(line for line in (tmp_path / "tables" / "table1.md").read_text().splitlines()
               if "`table1/sgd_100ep`" in line)
    assert "| 76.38 | 25.00 |" in row
