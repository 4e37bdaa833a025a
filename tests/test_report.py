"""`make tables`: the paper's numbers beside the runs that reproduce each row; other runs are variants."""

import json

from omegaconf import OmegaConf

from novograd.engine.compose import compose_config
from novograd.report.tables import PAPER_TABLES, main

ROW = "table1/novograd_100ep"


def run_config(experiment, *overrides):
    """A run's config.yaml as `python -m novograd.train experiment=<experiment> <overrides>` writes it."""
    cfg = OmegaConf.to_container(compose_config([f"experiment={experiment}", *overrides], "results/runs/x"), resolve=True)
    return {**cfg, "experiment_name": experiment}


def write_run(root, name, config, summary):
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(config))
    (run / "summary.json").write_text(json.dumps(summary))


def table_lines(tmp_path, table):
    return (tmp_path / "tables" / f"{table}.md").read_text().splitlines()


def test_tables_put_the_mean_of_reproducing_runs_beside_the_paper(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "a", run_config(ROW), {"top1": 76.0, "top5": 93.0})
    write_run(runs, "b", run_config(ROW, "seed=1"), {"top1": 77.0, "top5": 93.5})  # a replica
    write_run(runs, "c", run_config(ROW), {"top1": 10.0, "top5": 20.0, "preempted": True})
    write_run(runs, "d", {**run_config(ROW, "debug=smoke"), "experiment_name": None}, {"top1": 50.0})  # debug run
    main(["--runs", str(runs), "--out", str(tmp_path / "tables")])

    table1 = table_lines(tmp_path, "table1")
    row = next(line for line in table1 if f"`{ROW}`" in line)
    assert "| 76.94 | 76.50 (n=2) | 93.41 | 93.25 (n=2) | 2 |" in row
    sgd = next(line for line in table1 if "`table1/sgd_100ep`" in line)
    assert "| 76.38 | - | 93.08 | - | 0 |" in sgd
    assert not any("Variants" in line for line in table1)
    table3 = (tmp_path / "tables" / "table3.md").read_text()
    assert "Goyal et al. (2017), warmup, 90 epochs, B=32K (reference, not a run) | 72.45 |" in table3
    assert {p.name for p in (tmp_path / "tables").iterdir()} == {f"table{i}.md" for i in range(1, 8)}


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
    main(["--runs", str(runs), "--out", str(tmp_path / "tables")])

    table1 = table_lines(tmp_path, "table1")
    row = next(line for line in table1 if line.startswith("| NovoGrad") and f"`{ROW}`" in line)
    assert "| 76.94 | 76.00 | 93.41 | 93.00 | 1 |" in row
    variants = [line for line in table1 if line.startswith(f"| `{ROW}` |")]
    assert len(variants) == 2
    assert ("| `table1/novograd_100ep` | optimizer.lr 0.01 instead of 0.007; trainer.epochs 50 instead of 100 "
            "| 71.00 (n=2) | 90.50 (n=2) | 2 |") in variants
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


def test_a_missing_runs_directory_gives_tables_of_paper_values_only(tmp_path):
    main(["--runs", str(tmp_path / "none"), "--out", str(tmp_path / "tables")])
    assert "| 28.80 | - | 29.35 | - | 0 |" in (tmp_path / "tables" / "table7.md").read_text()
