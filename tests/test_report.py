"""`make tables`: the paper's numbers beside the runs that reproduce each row; other runs are variants."""

import numpy as np
import pytest
from omegaconf import OmegaConf
from report_runs import jasper_records, run_config, write_run

from novograd.report.sources import local_runs
from novograd.report.rows import Stat, metric_stat
from novograd.report.tables import PAPER_TABLES, main

ROW = "table1/novograd_100ep"


def table_lines(tmp_path, table):
    return (tmp_path / "tables" / f"{table}.md").read_text().splitlines()


def report(tmp_path, runs):
    main(["--runs", str(runs), "--out", str(tmp_path / "tables"), "--figures", str(tmp_path / "figures")])


def test_tables_put_the_mean_of_reproducing_runs_beside_the_paper(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "a", run_config(ROW), {"top1": 76.0, "top5": 93.0})
    write_run(runs, "b", run_config(ROW, "seed=1"), {"top1": 77.0, "top5": 93.5})  # a replica
    write_run(runs, "c", run_config(ROW), {"top1": 10.0, "top5": 20.0, "preempted": True})
    write_run(runs, "d", {**run_config(ROW, "debug=smoke"), "experiment_name": None}, {"top1": 50.0})  # debug run
    report(tmp_path, runs)

    table1 = table_lines(tmp_path, "table1")
    row = next(line for line in table1 if f"`{ROW}`" in line)
    assert "| 76.94 | 76.50 ± 0.71 (n=2) | 93.41 | 93.25 ± 0.35 (n=2) | 2 |" in row
    sgd = next(line for line in table1 if "`table1/sgd_100ep`" in line)
    assert "| 76.38 | - | 93.08 | - | 0 |" in sgd
    assert not any("Variants" in line for line in table1)
    table3 = (tmp_path / "tables" / "table3.md").read_text()
    assert "Goyal et al. (2017), warmup, 90 epochs, B=32K (reference, not a run) | 72.45 |" in table3
    assert {p.name for p in (tmp_path / "tables").iterdir()} == {f"table{i}.md" for i in range(1, 8)} | {
        "claims.md", "time_to_target.md"}


def test_runs_that_change_what_defines_the_row_are_variants_outside_the_mean(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "paper", run_config(ROW), {"top1": 76.0, "top5": 93.0})
    write_run(runs, "lr1", run_config(ROW, "optimizer.lr=0.01", "trainer.epochs=50"), {"top1": 70.0, "top5": 90.0})
    write_run(runs, "lr2", run_config(ROW, "optimizer.lr=0.01", "trainer.epochs=50"), {"top1": 72.0, "top5": 91.0})
    # The 4-step tiny run of the row.
    tiny = run_config(ROW, "model=resnet_v2_tiny", "data=imagenet_synthetic", "trainer.batch_size=8",
                      "trainer.micro_batch_size=4", "trainer.max_steps=4", "trainer.precision=fp32",
                      "trainer.device=cpu", "logger=none")
    write_run(runs, "tiny", tiny, {"top1": 37.5, "top5": 100.0})
    report(tmp_path, runs)

    table1 = table_lines(tmp_path, "table1")
    row = next(line for line in table1 if line.startswith("| NovoGrad") and f"`{ROW}`" in line)
    assert "| 76.94 | 76.00 | 93.41 | 93.00 | 1 |" in row
    variants = [line for line in table1 if line.startswith(f"| `{ROW}` |")]
    assert len(variants) == 2
    assert ("| `table1/novograd_100ep` | optimizer.lr 0.01 instead of 0.007; trainer.epochs 50 instead of 100 "
            "| 71.00 ± 1.41 (n=2) | 90.50 ± 0.71 (n=2) | 2 |") in variants
    (tiny_line,) = [line for line in variants if "37.50" in line]
    for expected in ("model.blocks [1, 1, 1, 1] instead of [3, 4, 6, 3]", "data.num_classes 4 instead of 1000",
                     "trainer.batch_size 8 instead of 1024", "trainer.max_steps 4 instead of null"):
        assert expected in tiny_line
    assert "precision" not in tiny_line and "device" not in tiny_line and "logger" not in tiny_line


def test_seed_precision_paths_workers_and_bookkeeping_do_not_make_a_variant():
    from novograd.report.matching import row_config, row_differences

    reference = row_config(ROW)
    same_row = run_config(ROW, "seed=7", "trainer.precision=fp16", "data.root=/elsewhere", "data.num_workers=2",
                          "trainer.eval_every_epochs=5", "trainer.log_every_steps=1", "optimizer.fused=true",
                          "trainer.compile=true", "logger=none", "trainer.keep_last_k=3")
    assert row_differences(same_row, reference) == []
    for override, key in [("trainer.micro_batch_size=64", "trainer.micro_batch_size"),
                          ("scheduler.warmup_steps=500", "scheduler.warmup_steps"),
                          ("optimizer.betas=[0.9,0.25]", "optimizer.betas"),
                          ("trainer.sync_bn=true", "trainer.sync_bn")]:
        assert [d.key for d in row_differences(run_config(ROW, override), reference)] == [key]


def test_keys_of_new_workloads_define_their_rows_without_being_named():
    """Tables 4-7 bring keys such as model.dropout or data.max_tokens: every key of the defining sections counts."""
    from novograd.report.matching import DEFINING_SECTIONS, row_differences

    row = {"model": {"dropout": 0.2, "d_model": 1024}, "data": {"max_tokens": 4096}, "trainer": {"batch_size": 8}}
    run = {"model": {"dropout": 0.3, "d_model": 1024}, "data": {"max_tokens": 4096, "num_workers": 4},
           "trainer": {"batch_size": 8, "log_every_steps": 10}}
    assert [str(d) for d in row_differences(run, row)] == ["model.dropout 0.3 instead of 0.2"]
    assert set(DEFINING_SECTIONS) >= {"model", "data", "optimizer", "scheduler"}


def test_every_paper_row_names_an_experiment_config_that_exists_or_is_a_later_workload():
    tables = OmegaConf.to_container(OmegaConf.load(PAPER_TABLES))
    experiments = {row["experiment"] for t in tables.values() for row in t["rows"] if "experiment" in row}
    configs = PAPER_TABLES.parents[2] / "configs" / "experiment"
    for experiment in experiments:
        if experiment.split("/")[0] in {"table1", "table2", "table3"}:
            assert (configs / f"{experiment}.yaml").is_file(), experiment


def test_a_missing_runs_directory_gives_tables_of_paper_values_only(tmp_path, capsys):
    report(tmp_path, tmp_path / "none")
    assert "| 28.80 | - | 29.35 | - | 0 |" in (tmp_path / "tables" / "table7.md").read_text()
    out = capsys.readouterr().out
    assert f"No finished runs of paper rows in {tmp_path / 'none'}: the tables hold the paper's values only.\n" in out
    assert "Set aside" not in out
    assert "Figure 3: no runs yet for table5/novograd_b512, table5/novograd_b4k" in out
    assert "Figure 4: no runs yet for table6/adam_12b, table6/novograd_12b;" in out
    assert not (tmp_path / "figures").exists()


def test_the_report_says_how_many_runs_it_set_aside_and_why(tmp_path, capsys):
    runs = tmp_path / "runs"
    for index in range(3):
        write_run(runs, f"debug{index}", {**run_config(ROW, "debug=smoke"), "experiment_name": None}, {"top1": 5.0})
    write_run(runs, "stopped", run_config(ROW), {"top1": 1.0, "preempted": True})
    unfinished = write_run(runs, "running", run_config(ROW), {})
    (unfinished / "summary.json").unlink()
    (unfinished / "wandb" / "offline-run-x" / "files").mkdir(parents=True)  # W&B's copy is no run of its own
    (unfinished / "wandb" / "offline-run-x" / "files" / "config.yaml").write_text("lr: 1\n")
    report(tmp_path, runs)
    out = capsys.readouterr().out
    assert (f"No finished runs of paper rows in {runs}: the tables hold the paper's values only.\n"
            "Set aside: 3 debug runs (debug=..., which reproduce no row); "
            "1 preempted (stopped before the end: re-run the same command to resume); "
            "1 unfinished (no final metrics: still running, failed or killed).\n") in out

    write_run(runs, "paper", run_config(ROW), {"top1": 76.0, "top5": 93.0})
    write_run(runs, "lr", run_config(ROW, "optimizer.lr=0.01"), {"top1": 70.0, "top5": 90.0})
    write_run(runs, "swapped", run_config(ROW, "optimizer=adamw"), {"top1": 71.0, "top5": 90.0})
    report(tmp_path, runs)
    out = capsys.readouterr().out
    assert (f"3 finished runs of paper rows in {runs}: 1 reproduce their row, 2 are variants (listed under their "
            "table, never in a row's mean).\nSet aside: 3 debug runs") in out
    variants = [line for line in table_lines(tmp_path, "table1") if line.startswith(f"| `{ROW}` |")]
    assert any("optimizer.name adamw instead of novograd" in line for line in variants)


def test_the_report_writes_only_where_git_ignores():
    """`make tables` never dirties a checkout: its default outputs are git-ignored and nothing there is tracked."""
    import shutil
    import subprocess

    repo = PAPER_TABLES.parents[2]
    if shutil.which("git") is None or not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    outputs = ["results/tables/table1.md", "results/figures/figure3.png"]
    ignored = subprocess.run(["git", "check-ignore", *outputs], cwd=repo, capture_output=True, text=True)
    assert ignored.stdout.split() == outputs
    tracked = subprocess.run(["git", "ls-files", "results/tables", "results/figures"], cwd=repo,
                             capture_output=True, text=True, check=True)
    assert tracked.stdout == ""
    assert subprocess.run(["git", "check-ignore", "-q", "results/paper/tables.yaml"], cwd=repo).returncode == 1


def test_no_report_module_imports_one_that_imports_it():
    """The report's modules form layers (sources, matching -> rows -> figures, to_wandb -> tables): no circle."""
    import ast

    package = PAPER_TABLES.parents[2] / "novograd" / "report"
    imports = {}
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        imports[path.stem] = {node.module.rsplit(".", 1)[1] for node in ast.walk(tree)
                              if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("novograd.report.")}

    def reaches(start, target, seen=()):
        return any(name == target or (name not in seen and reaches(name, target, (*seen, name)))
                   for name in imports.get(start, ()))

    assert imports["tables"] >= {"rows", "figures", "to_wandb", "sources"}  # the check sees the imports
    assert [module for module in imports if reaches(module, module)] == []


def test_the_spread_is_the_sample_standard_deviation():
    class Summary:
        def __init__(self, value):
            self.summary = {"wer_dev_clean": value, "wer_dev_other": None}

    values = [3.61, 3.70, 3.58, 3.93]
    stat = metric_stat([Summary(v) for v in values], "wer_dev_clean")
    assert stat.count == 4 and stat.mean == pytest.approx(np.mean(values))
    assert stat.std == pytest.approx(np.std(values, ddof=1))
    assert str(stat) == f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f} (n=4)"
    assert metric_stat([Summary(3.6)], "wer_dev_clean") == Stat(3.6, None, 1)
    assert str(Stat(3.6, None, 1)) == "3.60" and Stat(3.6, None, 1).with_count() == "3.60 (n=1)"
    assert metric_stat([Summary(3.6)], "wer_dev_other") is None  # a metric no run has
    # A value other than the summary's (a claim's derived metric): the statistics of what it returns.
    doubled = metric_stat([Summary(v) for v in values], "wer_dev_other",
                          lambda run, _: 2 * run.summary["wer_dev_clean"])
    assert doubled == Stat(2 * stat.mean, 2 * stat.std, 4)


def test_new_workloads_columns_and_local_histories(tmp_path):
    """Table 4's four WER columns from summary.json; the history of each metric from metrics.jsonl."""
    runs = tmp_path / "runs"
    wers = {"wer_dev_clean": 3.5, "wer_dev_other": 11.0, "wer_test_clean": 3.9, "wer_test_other": 12.0}
    write_run(runs, "jasper", run_config("table4/novograd"), wers, jasper_records(3.5, epochs=3))
    report(tmp_path, runs)
    row = next(line for line in table_lines(tmp_path, "table4") if "`table4/novograd`" in line)
    assert "| 3.64 | 3.50 | 11.89 | 11.00 | 3.86 | 3.90 | 11.95 | 12.00 | 1 |" in row

    (run,) = local_runs(runs)
    assert run.experiment == "table4/novograd" and run.summary == wers
    assert run.history("eval/wer_dev_clean") == [
        {"step": 10, "epoch": 1.0, "eval/wer_dev_clean": 83.5}, {"step": 20, "epoch": 2.0, "eval/wer_dev_clean": 43.5},
        {"step": 30, "epoch": 3.0, "eval/wer_dev_clean": 3.5 + 80 / 3}]
    assert [r["step"] for r in run.history("train/loss")] == [5, 15, 25]
    assert run.history("eval/val_ppl") == []
