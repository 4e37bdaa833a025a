"""WMT14 end to end from the forms a user has it in: scripts/prepare_wmt14.py on docs/transformer-big.md's text layout
with statmt.org's SGML test sets, two training steps and the final evaluation of the workload on the prepared data, and
each bad input: the error names the file and line, nothing is marked complete, a re-run after the fix works."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest

import data.progress
import data.wmt14
from data.wmt14 import TranslationDataset, read_meta
from novograd.engine import run
from novograd.engine.compose import compose_config
from script_modules import load_script
from wmt14_official import install_sacrebleu_cache, small_corpus, write_text_layout

VOCAB_SIZE = 60
prepare_script = load_script("prepare_wmt14")


def prepare(root: Path, source: Path | str) -> None:
    prepare_script.main(["--root", str(root), "--source", str(source), "--vocab-size", str(VOCAB_SIZE),
                         "--input-sentence-size", "10000", "--num-threads", "1"])


@pytest.fixture(scope="module")
def corpus() -> dict[str, tuple[list[str], list[str]]]:
    return small_corpus()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, corpus) -> Path:
    base = tmp_path_factory.mktemp("wmt14_official")
    prepare(base / "root", write_text_layout(base / "text", corpus))
    return base / "root"


def test_prepare_reads_the_text_layout_and_both_sgml_test_sets(prepared, corpus):
    meta = read_meta(prepared)
    assert meta["vocab_size"] == VOCAB_SIZE
    for split in ("newstest2013", "newstest2014", "newstest2014_filtered"):
        dataset = TranslationDataset(prepared, split)
        assert (dataset.sources, dataset.references) == corpus[split], split  # through sacrebleu's SGML reader
    assert len(TranslationDataset(prepared, "newstest2014")) == 9
    assert len(TranslationDataset(prepared, "newstest2014_filtered")) == 4


def test_training_steps_and_evaluation_on_the_prepared_data_score_both_test_sets(prepared, tmp_path):
    summary = run(compose_config(
        ["experiment=table7/novograd", "debug=smoke", "logger=none", "data.synthetic=null",
         f"data.root={prepared}", f"data.vocab_size={VOCAB_SIZE}", "trainer.max_steps=2", "trainer.batch_size=512",
         "trainer.micro_batch_size=256", "trainer.eval_every_steps=null", "workload.max_len_b=4"], tmp_path))
    for name in ("sacrebleu", "tokenized_bleu", "sacrebleu_full", "tokenized_bleu_full", "test_loss",
                 "test_full_loss", "valid_bleu"):
        assert name in summary, name
    assert len((tmp_path / "hypotheses" / "test.txt").read_text().splitlines()) == 4
    assert len((tmp_path / "hypotheses" / "test_full.txt").read_text().splitlines()) == 9


def test_a_non_utf8_byte_is_named_by_file_and_line_and_a_fixed_rerun_succeeds(tmp_path, corpus):
    text_dir = write_text_layout(tmp_path / "text", corpus)
    lines = (text_dir / "train.de").read_bytes().split(b"\n")
    lines[41] = lines[41] + b" gro\xdf"  # latin-1 sharp s: not UTF-8
    (text_dir / "train.de").write_bytes(b"\n".join(lines))
    root = tmp_path / "root"
    with pytest.raises(SystemExit, match=rf"{text_dir / 'train.de'}, line 42: byte 0xdf .* is not UTF-8"):
        prepare(root, text_dir)
    assert not (root / "meta.json").exists() and not (root / "spm.model").exists()  # nothing written
    write_text_layout(text_dir, corpus)
    prepare(root, text_dir)
    assert read_meta(root)["splits"]["train"]["pairs_read"] == len(corpus["train"][0])


def test_a_non_utf8_byte_in_an_sgml_test_set_is_named_too(tmp_path, corpus):
    text_dir = write_text_layout(tmp_path / "text", corpus)
    sgml = text_dir / "test" / "newstest2014-deen-ref.de.sgm"
    sgml.write_bytes(sgml.read_bytes().replace(b"</seg>", b"\xe9</seg>", 1))
    with pytest.raises(SystemExit, match=rf"{sgml}, line 4: byte 0xe9"):  # the first <seg> line
        prepare(tmp_path / "root", text_dir)
    assert not (tmp_path / "root" / "meta.json").exists()


def test_hub_source_offline_says_what_is_missing(tmp_path, corpus, monkeypatch):
    """sacrebleu cannot download the filtered newstest2014: the message says it needs the network or SOURCE=DIR,
    before the hub's gigabytes are touched."""
    import sacrebleu.dataset.base

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("offline")

    install_sacrebleu_cache(monkeypatch, tmp_path / "sacrebleu", *corpus["newstest2014_filtered"])
    (tmp_path / "sacrebleu" / "wmt14" / "raw" / "wmt14.test-filtered.tgz").unlink()
    monkeypatch.setattr(sacrebleu.dataset.base, "download_file", no_network)
    with pytest.raises(SystemExit, match=r"sacrebleu -t wmt14 -l en-de.*needs the network.*SOURCE=DIR"):
        prepare(tmp_path / "root", "hub")
    assert not (tmp_path / "root" / "meta.json").exists()


def test_long_steps_print_progress(tmp_path, corpus, monkeypatch, capsys):
    monkeypatch.setattr(data.progress, "INTERVAL_S", 1e-4)
    prepare(tmp_path / "root", write_text_layout(tmp_path / "text", corpus))
    output = capsys.readouterr().out
    assert "BPE: sentences read: " in output and "/s, " in output
    assert "train: pairs encoded: " in output and "BPE trained on 240 sentences" in output
