"""WikiText-103 end to end from the official distribution format: `scripts/prepare_wikitext103.py --source` on a
tiny `wikitext-103-v1.zip`, a couple of Transformer-XL training steps and the evaluation on what it prepared, and
every damaged input (a non-UTF-8 byte, a truncated archive, a member failing its CRC): a message that names the
file and says what to do, nothing marked complete, nothing already prepared lost, and a re-run after the fix
that succeeds."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import data.progress as progress
from data.wikitext103 import SPLITS, load_corpus
from novograd.engine import run
from novograd.engine.compose import CONFIG_DIR, compose_config
from script_modules import load_script
from wikitext103_archive import TEXTS, build_wikitext103_zip, corrupt_member

prepare = load_script("prepare_wikitext103")
SCRIPT = CONFIG_DIR.parent / "scripts" / "prepare_wikitext103.py"


def official_zip(tmp_path: Path, **kwargs) -> Path:
    return build_wikitext103_zip(tmp_path / "download" / "wikitext-103-v1.zip", **kwargs)


def prepare_from(source: Path, root: Path) -> None:
    prepare.main(["--root", str(root), "--source", str(source)])


def prepared_state(root: Path) -> dict[str, bytes]:
    """Every file under `root` (names relative to it), to show that a failed run lost or changed nothing."""
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_prepare_train_and_evaluate_from_the_official_zip(tmp_path: Path) -> None:
    archive = official_zip(tmp_path)
    root = tmp_path / "wt103"
    result = subprocess.run([sys.executable, str(SCRIPT), "--root", str(root), "--source", str(archive)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for split in SPLITS:
        assert f"{split}: extracted wikitext-103/wiki.{split}.tokens" in result.stdout
        assert f"{split}: " in result.stdout and "tokens written" in result.stdout
    assert f"done: {root}" in result.stdout
    corpus = load_corpus(root)
    # Every line (headings, blank lines of one space) ends with <eos>, and <unk> is an ordinary word.
    assert corpus.num_tokens["valid"] == sum(len(line.split()) + 1 for line in TEXTS["valid"].splitlines())
    assert "<unk>" in corpus.vocab and corpus.decode(corpus.split("test")[:6]) == ["<eos>", "=", "Birch", "River",
                                                                                      "=", "<eos>"]

    summary = run(compose_config([
        "experiment=table6/novograd_12b", "model=transformer_xl_tiny", "model.cutoffs=[20]", "logger=none",
        f"data.root={root}", f"data.vocab_size={corpus.vocab_size}", "trainer.device=cpu", "trainer.precision=fp32",
        "trainer.batch_size=4", "trainer.micro_batch_size=2", "trainer.max_steps=2", "trainer.eval_every_steps=null",
        "trainer.progress_bar=false", "data.eval.tgt_len=8", "data.eval.mem_len=16", "data.eval.num_streams=2",
    ], tmp_path / "run"))
    assert summary["steps"] == 2
    # An untrained model scores about the vocabulary size; a finite figure above 1 shows both sets were scored.
    assert 1 < summary["val_ppl"] < 10 * corpus.vocab_size and 1 < summary["test_ppl"] < 10 * corpus.vocab_size


def with_byte(text: str, line: int, old: str, new: bytes) -> bytes:
    """`text` as UTF-8 with the first `old` of line `line` (from 1) replaced by the bytes `new`."""
    lines = text.encode("utf-8").split(b"\n")
    lines[line - 1] = lines[line - 1].replace(old.encode(), new, 1)
    return b"\n".join(lines)


def test_a_non_utf8_byte_names_the_member_the_line_and_the_byte(tmp_path: Path) -> None:
    # Latin-1's "é" (0xe9) in place of one letter: the same size as the official member, so only its CRC tells
    # the re-run that the file extracted from the bad archive must be extracted again.
    bad_valid = with_byte(TEXTS["valid"], 4, "trade", b"tr\xe9de")
    archive = official_zip(tmp_path, texts={**TEXTS, "valid": bad_valid})
    root = tmp_path / "wt103"
    with pytest.raises(SystemExit) as failure:
        prepare_from(archive, root)
    message = str(failure.value)
    assert (f"wiki.valid.tokens (extracted from member wikitext-103/wiki.valid.tokens of {archive}), line 4, "
            "byte 27 of the line (0xe9): not UTF-8") in message
    assert "download wikitext-103-v1.zip again" in message
    assert not (root / "corpus.json").exists() and not list(root.rglob(".*partial"))
    assert (root / "train.npy").is_file()  # what was finished before the bad file stays
    kept = (root / "train.npy").read_bytes()

    build_wikitext103_zip(archive)  # the user downloads the archive again
    prepare_from(archive, root)
    assert load_corpus(root).num_tokens["valid"] > 0 and (root / "train.npy").read_bytes() == kept


def test_a_non_utf8_byte_in_an_extracted_folder_names_the_file_and_line(tmp_path: Path) -> None:
    folder = tmp_path / "extracted"
    folder.mkdir()
    for split, name in (("train", "wiki.train.tokens"), ("valid", "wiki.valid.tokens"), ("test", "wiki.test.tokens")):
        (folder / name).write_bytes(TEXTS[split].encode("utf-8"))
    (folder / "wiki.train.tokens").write_bytes(with_byte(TEXTS["train"], 8, "early", b"\xe9arly"))
    with pytest.raises(SystemExit, match=r"wiki.train.tokens, line 8, byte 9 of the line \(0xe9\): not UTF-8\. "
                       r".*replace it with the official file") as failure:
        prepare_from(folder, tmp_path / "wt103")
    assert "member" not in str(failure.value)
    assert not (tmp_path / "wt103" / "vocab.txt").exists()
    (folder / "wiki.train.tokens").write_bytes(TEXTS["train"].encode("utf-8"))
    prepare_from(folder, tmp_path / "wt103")
    assert load_corpus(tmp_path / "wt103").vocab_size > 1


@pytest.mark.parametrize("source_is_folder", [False, True])
def test_a_truncated_zip_is_reported_damaged(tmp_path: Path, source_is_folder: bool) -> None:
    archive = official_zip(tmp_path)
    whole = archive.read_bytes()
    archive.write_bytes(whole[: len(whole) // 2])
    root = tmp_path / "wt103"
    source = archive.parent if source_is_folder else archive
    with pytest.raises(SystemExit, match=rf"{archive} is damaged: it is not a readable zip archive .*download it "
                       r"again from https://wikitext.smerity.com/wikitext-103-v1.zip"):
        prepare_from(source, root)
    assert not (root / "corpus.json").exists()
    archive.write_bytes(whole)
    prepare_from(source, root)
    assert (root / "corpus.json").is_file()


def test_a_member_failing_its_crc_is_named_and_the_others_are_kept(tmp_path: Path) -> None:
    archive = official_zip(tmp_path, compression=zipfile.ZIP_STORED)
    root = tmp_path / "wt103"
    prepare_from(archive, root)
    # Prepared once; now the text must be extracted again (as after deleting it) from a damaged download.
    (root / "corpus.json").unlink()
    (root / "valid.npy").unlink()
    (root / "wikitext-103" / "wiki.valid.tokens").unlink()
    before = prepared_state(root)
    corrupt_member(archive, "valid")
    with pytest.raises(SystemExit, match=r"is damaged: its member wikitext-103/wiki.valid.tokens cannot be read "
                       r"\(Bad CRC-32.*download it again"):
        prepare_from(archive, root)
    assert prepared_state(root) == before  # the train text and arrays stay; no partial file is left
    build_wikitext103_zip(archive, compression=zipfile.ZIP_STORED)
    prepare_from(archive, root)
    assert (root / "corpus.json").is_file()


def test_a_file_that_is_no_zip_is_not_reported_missing(tmp_path: Path) -> None:
    source = tmp_path / "wikitext-103-v1.zip"
    source.write_text("<html>404 Not Found</html>")
    with pytest.raises(SystemExit, match="is damaged: it is not a readable zip archive"):
        prepare_from(source, tmp_path / "wt103")


def test_long_steps_print_progress_lines_when_not_on_a_terminal(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)  # a line per chunk read instead of one a minute
    prepare_from(official_zip(tmp_path), tmp_path / "wt103")
    out = capsys.readouterr().out
    assert "counting wiki.train.tokens: 0 of 0 MB" in out
    for split in SPLITS:
        assert f"encoding wiki.{split}.tokens: " in out
