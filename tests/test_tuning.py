"""Equal tuning budgets: the quasi-random draw (reproducible from its seed, inside its ranges, on its scale), the
trials' commands and where their runs go, every search space around its rows' hand-tuned values, and the report of
each budget's best trial from constructed run records."""

from collections import defaultdict

import pytest
from omegaconf import OmegaConf
from report_runs import run_config, write_run

from novograd.engine.compose import compose_config
from novograd.engine.output_dir import run_directory
from novograd.engine.run_config import resume_differences
from novograd.report.matching import row_config, row_differences
from novograd.report.tables import load_paper_tables, main
from novograd.tuning import (
    SEARCH_SPACES, Range, budget, draw_points, experiment_of, load_search_space, search_space_path)

TABLES = load_paper_tables()
SPACE = {"log": Range(1.0e-4, 1.0, log=True), "linear": Range(1.0e-4, 1.0, log=False)}


def test_the_draw_is_reproducible_from_its_seed_inside_its_ranges_and_on_its_scale():
    points = draw_points(SPACE, 64, seed=0)
    assert points == draw_points(SPACE, 64, seed=0)
    assert draw_points(SPACE, 5, seed=0) == points[:5]  # a larger budget of the same seed holds the smaller one
    other = draw_points(SPACE, 64, seed=1)
    assert all(a != b for a, b in zip(points, other))
    assert all(SPACE[key].low <= p[key] <= SPACE[key].high for p in points + other for key in SPACE)
    # Sobol points balance every dyadic half: on a log scale half of them lie below the geometric middle (0.01);
    # on a linear scale (the negative control) only those below 1% of the range do.
    assert sum(p["log"] < 0.01 for p in points) == 32
    assert sum(p["linear"] < 0.01 for p in points) <= 2
    assert sum(p["linear"] < 0.5 for p in points) == 32
    assert all(float(f"{p['log']:.4g}") == p["log"] for p in points)  # as the command line writes it


def test_a_search_space_with_a_bad_range_says_what_to_write(tmp_path):
    path = tmp_path / "space.yaml"
    for text, message in [("optimizer.lr: {low: 0.0, high: 1.0, log: true}", "log scale needs low > 0"),
                          ("optimizer.lr: {low: small, high: 1.0}", "must be numbers"),
                          ("optimizer.lr: {low: 1.0, high: 0.1}", "low < high"),
                          ("optimizer.lr: [0.1, 1.0]", "give {low")]:
        path.write_text(text)
        with pytest.raises(SystemExit, match=message):
            load_search_space(path)
    with pytest.raises(SystemExit, match="No search space"):
        load_search_space(search_space_path("imagenet", "lamb"))
    path.write_text("optimizer.lr: {low: 1e-4, high: 1.0, log: true}")  # plain YAML 1.1 would read "1e-4" as text
    assert load_search_space(path) == {"optimizer.lr": Range(1.0e-4, 1.0, log=True)}


def test_every_search_space_spans_its_rows_hand_tuned_values_within_a_factor_4():
    spaces = {path: load_search_space(path) for path in SEARCH_SPACES.glob("*/*.yaml")}
    values = defaultdict(list)
    for table in TABLES.values():
        for row in table["rows"]:
            if "experiment" not in row:
                continue
            config = row_config(row["experiment"])
            workload = config["workload"]["_target_"].rsplit(".", 2)[-2]
            path = search_space_path(workload, config["optimizer"]["name"])
            for key in spaces[path]:
                values[path, key].append(OmegaConf.select(OmegaConf.create(config), key))
    assert {path for path, _ in values} == set(spaces)  # no search space without a row, no row without one
    for (path, key), hand_tuned in values.items():  # the rule the files' comments state
        bounds = spaces[path][key]
        assert bounds.log and (bounds.low, bounds.high) == pytest.approx((min(hand_tuned) / 4, max(hand_tuned) * 4)), \
            (path, key, hand_tuned)


def test_a_budgets_trials_are_runs_of_the_row_with_the_drawn_point_and_its_tag(tmp_path):
    assert experiment_of("table1-novograd-100ep") == experiment_of("table1/novograd_100ep") == "table1/novograd_100ep"
    with pytest.raises(SystemExit, match="No paper row 'table1-novograd-50ep'.*table1-novograd-100ep"):
        experiment_of("table1-novograd-50ep")

    trials = budget(["table1/novograd_100ep", "table6/adam_12b"], 3, 7, ["debug=smoke"])
    space = load_search_space(SEARCH_SPACES / "imagenet" / "novograd.yaml")
    assert [(t.experiment, t.index) for t in trials] == [("table1/novograd_100ep", i) for i in range(3)] + [
        ("table6/adam_12b", i) for i in range(3)]
    first = trials[0]
    assert list(first.point) == ["optimizer.lr", "optimizer.weight_decay"]
    assert all(space[key].low <= value <= space[key].high for key, value in first.point.items())
    assert list(trials[3].point) == ["optimizer.lr"]  # Table 6's Adam had no weight decay: none tuned
    lr, wd = first.point.values()
    assert first.overrides() == ["experiment=table1/novograd_100ep", f"optimizer.lr={lr:.4g}",
                                 f"optimizer.weight_decay={wd:.4g}", "tuning.seed=7", "tuning.trial=0"]
    command = first.command(2, ["debug=smoke"])
    assert command[1:7] == ["-m", "novograd.engine.launcher", "--standalone", "--nproc-per-node=2", "-m",
                            "novograd.train"]
    assert command[7:] == [*first.overrides(), "debug=smoke"]

    # The run: the row's config with the point and the tag, in the directory of the point alone (the tag is
    # bookkeeping, which a resume may change), and a trial only in the drawn keys.
    cfg = OmegaConf.to_container(compose_config(command[7:], tmp_path), resolve=True)
    assert (cfg["optimizer"]["lr"], cfg["optimizer"]["weight_decay"], cfg["tuning"]) == (lr, wd, {"seed": 7,
                                                                                                   "trial": 0})
    assert run_directory("table1/novograd_100ep", command[8:]) == (
        f"table1/novograd_100ep/debug=smoke,optimizer.lr={lr:.4g},optimizer.weight_decay={wd:.4g}")
    assert [d.key for d in row_differences(cfg, row_config("table1/novograd_100ep", "smoke"))] == [
        "optimizer.lr", "optimizer.weight_decay"]
    before_tuning = {key: value for key, value in cfg.items() if key != "tuning"}  # a config.yaml of before
    assert resume_differences(before_tuning, cfg) == []


def trial_config(experiment, seed, trial, *overrides):
    return run_config(experiment, *overrides, f"tuning.seed={seed}", f"tuning.trial={trial}")


def tuning_lines(tmp_path, runs):
    main(["--runs", str(runs), "--out", str(tmp_path / "tables"), "--figures", str(tmp_path / "figures")])
    return (tmp_path / "tables" / "tuning.md").read_text()


def line_of(tuning_md, experiment, seed=None):
    (line,) = [line for line in tuning_md.splitlines() if f"(`{experiment}`)" in line
               and (seed is None or line.split("|")[4].strip() == str(seed))]
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def test_the_best_trial_of_each_budget_beside_the_hand_tuned_row(tmp_path, capsys):
    runs = tmp_path / "runs"
    wers = {"wer_dev_other": 12.0, "wer_test_clean": 4.5, "wer_test_other": 12.5}
    write_run(runs, "adam", run_config("table4/adam"), {"wer_dev_clean": 13.0, **wers})
    write_run(runs, "adam0", trial_config("table4/adam", 0, 0, "optimizer.lr=0.0021"), {"wer_dev_clean": 5.0, **wers})
    write_run(runs, "adam1", trial_config("table4/adam", 0, 1, "optimizer.lr=0.0031"), {"wer_dev_clean": 4.2, **wers})
    write_run(runs, "adam2", trial_config("table4/adam", 0, 2, "optimizer.lr=0.0039"),
              {"diverged": True, "diverged_at_step": 40, "steps": 40})
    write_run(runs, "nvg0", trial_config("table4/novograd", 0, 0, "optimizer.lr=0.03"), {"wer_dev_clean": 3.7, **wers})
    write_run(runs, "nvg1", trial_config("table4/novograd", 0, 1, "optimizer.lr=0.05"),
              {"diverged": True, "diverged_at_step": 9, "steps": 9})
    write_run(runs, "nvg_s1", trial_config("table4/novograd", 1, 0, "optimizer.lr=0.01"),
              {"diverged": True, "diverged_at_step": 3, "steps": 3})
    # Table 7: chosen by newstest2013 BLEU (the workload's primary metric), never by the newstest2014 it reports.
    bleu = {"tokenized_bleu": 28.0}
    write_run(runs, "t7a", trial_config("table7/adam", 0, 0, "optimizer.lr=0.0005"),
              {"valid_bleu": 26.0, "sacrebleu": 28.5, **bleu})
    write_run(runs, "t7b", trial_config("table7/adam", 0, 1, "optimizer.lr=0.0009"),
              {"valid_bleu": 26.5, "sacrebleu": 28.1, **bleu})
    tuning = tuning_lines(tmp_path, runs)
    out = capsys.readouterr().out

    assert line_of(tuning, "table4/adam") == ["13.20", "13.00", "0", "3", "1 (at step 40)", "4.20, trial 1",
                                              "optimizer.lr 0.0031 instead of 0.001"]
    assert line_of(tuning, "table4/sgd") == ["3.91", "-", "-", "no trials", "", "", ""]
    assert line_of(tuning, "table4/novograd", 0)[3:6] == ["2", "1 (at step 9)", "3.70, trial 0"]
    assert line_of(tuning, "table4/novograd", 1)[3:] == ["1", "1 (at step 3)", "none: no trial finished with a "
                                                         "metric", ""]
    assert line_of(tuning, "table7/adam")[5:] == ["28.10 (valid_bleu 26.50), trial 1",
                                                 "optimizer.lr 0.0009 instead of 0.0006"]
    assert "Table 1" not in tuning and "Table 5" not in tuning  # no trials there
    # Trials are in no row's mean and no variant; the census counts them.
    table4 = (tmp_path / "tables" / "table4.md").read_text()
    assert "Variants" not in table4 and "| 13.20 | 13.00 |" in table4
    assert "1 reproduce their row, 0 are variants (listed under their table, never in a row's mean), 8 are tuning " \
           "trials (tuning.md)." in out
    assert "# Equal tuning budgets" in out


def test_no_trials_no_tuning_report(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "adam", run_config("table4/adam"), {"wer_dev_clean": 13.0})
    main(["--runs", str(runs), "--out", str(tmp_path / "tables"), "--figures", str(tmp_path / "figures")])
    assert not (tmp_path / "tables" / "tuning.md").exists()
