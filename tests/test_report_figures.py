"""Figures 3 and 4 from the runs' histories: the lines drawn are the runs' logged values, one colour per paper row,
variants apart, the paper's final values marked; nothing is drawn for a figure without runs."""

import numpy as np
import pytest
from report_runs import jasper_records, lm_records, run_config, write_run

from novograd.report.figures import draw_figure
from novograd.report.sources import local_runs
from novograd.report.rows import sort_runs
from novograd.report.tables import load_paper_tables, main

TABLES = load_paper_tables()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def lines_by_label(figure):
    (ax,) = figure.axes
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_figure3_draws_dev_clean_wer_against_epochs_per_batch_size(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "b512", run_config("table5/novograd_b512"), {"wer_dev_clean": 4.0}, jasper_records(4.0, 5))
    write_run(runs, "b4k", run_config("table5/novograd_b4k"), {"wer_dev_clean": 4.2}, jasper_records(4.2, 4))
    write_run(runs, "b4k_lr", run_config("table5/novograd_b4k", "optimizer.lr=0.05"), {"wer_dev_clean": 6.0},
              jasper_records(6.0, 3))
    drawn = draw_figure(TABLES["table5"], TABLES["table5"]["figure"], sort_runs(local_runs(runs)))

    assert drawn.missing == ["table5/novograd_b8k", "table5/novograd_b16k", "table5/novograd_b32k"]
    lines = lines_by_label(drawn.figure)
    b512 = lines["batch 512, lr 0.015, wd 0.001, dev-clean"]
    np.testing.assert_allclose(b512.get_xdata(), [1, 2, 3, 4, 5])
    np.testing.assert_allclose(b512.get_ydata(), [4.0 + 80 / e for e in range(1, 6)])
    b4k = lines["batch 4K, lr 0.03, warmup 0.05, wd 0.001, dev-clean"]
    variant = lines["batch 4K, lr 0.03, warmup 0.05, wd 0.001, dev-clean, variant: optimizer.lr 0.05 instead of 0.03"]
    np.testing.assert_allclose(b4k.get_ydata(), [4.2 + 80 / e for e in range(1, 5)])  # the variant is not in it
    np.testing.assert_allclose(variant.get_ydata(), [6.0 + 80 / e for e in range(1, 4)])
    assert b4k.get_color() == variant.get_color() != b512.get_color()
    assert variant.get_linewidth() < b4k.get_linewidth()
    # The paper's final dev-clean WER of each drawn row, as a horizontal line in the row's colour.
    paper = lines["batch 512, lr 0.015, wd 0.001: the paper's final dev-clean (3.58)"]
    assert paper.get_color() == b512.get_color() and paper.get_linestyle() == ":"
    np.testing.assert_allclose(paper.get_ydata(), [3.58, 3.58])
    assert "batch 4K, lr 0.03, warmup 0.05, wd 0.001: the paper's final dev-clean (3.66)" in lines
    assert not any("8K" in label for label in lines)  # rows without runs are neither drawn nor marked
    assert drawn.figure.axes[0].get_xlabel() == "epoch" and drawn.figure.axes[0].get_yscale() == "log"


def test_figure4_draws_train_perplexity_as_exp_of_the_loss_beside_validation(tmp_path):
    runs = tmp_path / "runs"
    for name, gap in (("adam_12b", 8.0), ("novograd_12b", 1.0)):
        write_run(runs, name, run_config(f"table6/{name}"), {"val_ppl": 31.0 + gap}, lm_records(400, 50, 100, gap))
    # A replica (another seed) is a second line of the same row; AdamW is not in the paper's Figure 4.
    write_run(runs, "novograd_seed1", run_config("table6/novograd_12b", "seed=1"), {"val_ppl": 33.0},
              lm_records(200, 50, 100, 3.0))
    write_run(runs, "adamw", run_config("table6/adamw_12b"), {"val_ppl": 40.0}, lm_records(200, 50, 100, 9.0))
    drawn = draw_figure(TABLES["table6"], TABLES["table6"]["figure"], sort_runs(local_runs(runs)))

    assert drawn.missing == []
    lines = lines_by_label(drawn.figure)
    adam_train = lines["Adam, 12B tokens, lr 0.00025, train"]
    np.testing.assert_allclose(adam_train.get_xdata(), [50, 100, 150, 200, 250, 300, 350, 400])
    np.testing.assert_allclose(adam_train.get_ydata(), [30 + 1000 / s for s in range(50, 401, 50)])  # exp(log(...))
    adam_val = lines["Adam, 12B tokens, lr 0.00025, validation"]
    np.testing.assert_allclose(adam_val.get_xdata(), [100, 200, 300, 400])
    np.testing.assert_allclose(adam_val.get_ydata(), [38 + 1000 / s for s in (100, 200, 300, 400)])
    assert adam_train.get_linestyle() != adam_val.get_linestyle()
    (ax,) = drawn.figure.axes
    novograd_val = [line for line in ax.get_lines() if line.get_color() == lines[
        "NovoGrad, 12B tokens, lr 0.01, validation (2 runs)"].get_color() and line.get_linestyle() == "--"]
    assert sorted(len(line.get_xdata()) for line in novograd_val) == [2, 4]  # both replicas, one legend entry
    assert "Adam, 12B tokens, lr 0.00025: the paper's final validation (23.84)" in lines
    assert not any("AdamW" in label for label in lines)
    assert ax.get_xlabel() == "step"


def test_make_tables_writes_the_figures_that_have_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_run(runs, "b8k", run_config("table5/novograd_b8k"), {"wer_dev_clean": 4.0}, jasper_records(4.0, 3))
    main(["--runs", str(runs), "--out", str(tmp_path / "tables"), "--figures", str(tmp_path / "figures")])
    out = capsys.readouterr().out
    assert (tmp_path / "figures" / "figure3.png").read_bytes().startswith(PNG_SIGNATURE)
    assert f"{tmp_path / 'figures' / 'figure3.png'} (no runs yet for table5/novograd_b512, table5/novograd_b4k, " \
           "table5/novograd_b16k, table5/novograd_b32k)" in out
    assert "Figure 4: no runs yet for table6/adam_12b, table6/novograd_12b" in out
    assert [p.name for p in (tmp_path / "figures").iterdir()] == ["figure3.png"]


def test_a_figure_naming_a_row_its_table_lacks_is_an_error():
    spec = {**TABLES["table6"]["figure"], "rows": ["table6/adam_12b", "table6/sgd_12b"]}
    with pytest.raises(ValueError, match=r"figure4 names rows that are not in its table: \['table6/sgd_12b'\]"):
        draw_figure(TABLES["table6"], spec, {})
