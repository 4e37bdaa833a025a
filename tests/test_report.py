"""`make tables`: the paper's numbers beside the runs, from run directories as the engine writes them."""

import json

from omegaconf import OmegaConf

from novograd.report.tables import PAPER_TABLES, main


def write_run(root, name, experiment, summary):
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml({"experiment_name": experiment, "seed": 0}))
    (run / "summary.json").write_text(json.dumps(summary))


def test_tables_put_the_mean_of_finished_runs_beside_the_paper(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "a", "table1/novograd_100ep", {"top1": 76.0, "top5": 93.0})
    write_run(runs, "b", "table1/novograd_100ep", {"top1": 77.0, "top5": 93.5})
    write_run(runs, "c", "table1/novograd_100ep", {"top1": 10.0, "top5": 20.0, "preempted": True})
    write_run(runs, "d", None, {"top1": 50.0})  # a run outside any paper row (e.g. debug=regression)
    main(["--runs", str(runs), "--out", str(tmp_path / "tables")])

    table1 = (tmp_path / "tables" / "table1.md").read_text().splitlines()
    row = next(line for line in table1 if "`table1/novograd_100ep`" in line)
    assert "| 76.94 | 76.50 (n=2) | 93.41 | 93.25 (n=2) | 2 |" in row
    sgd = next(line for line in table1 if "`table1/sgd_100ep`" in line)
    assert "| 76.38 | - | 93.08 | - | 0 |" in sgd
    table3 = (tmp_path / "tables" / "table3.md").read_text()
    assert "Goyal et al. (2017), warmup, 90 epochs, B=32K (reference, not a run) | 72.45 |" in table3
    assert {p.name for p in (tmp_path / "tables").iterdir()} == {f"table{i}.md" for i in range(1, 8)}


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
