"""The LibriSpeech prepare path end to end, on tiny archives in the official openslr format (tests/builders):
prepare, a couple of training steps and the four WER columns on the prepared data, resuming, and each kind of bad
input: the error names the file (and line), nothing is marked complete, nothing prepared is lost, and a re-run
after the fix succeeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders.librispeech import UTTERANCES, write_archive
from script_modules import load_script

from data.librispeech import EVAL_SPLITS, TRAIN_SPLITS, LibriSpeechDataset, LogMelFeatures
from novograd.engine import run
from novograd.engine.compose import compose_config


@pytest.fixture
def prepare():
    return load_script("prepare_librispeech")


def prepare_main(prepare, archives: Path, root: Path) -> None:
    prepare.main(["--archives", str(archives), "--root", str(root)])


def hidden_files(root: Path) -> list[Path]:
    """Temporary files and folders (staging, half-written manifests) anywhere under the prepared root."""
    return [p for p in root.rglob(".*") if p.name != ".archive.json"]


def test_prepared_archives_train_and_report_the_papers_metrics(tmp_path, prepare, capsys):
    for seed, split in enumerate(TRAIN_SPLITS + EVAL_SPLITS):
        write_archive(tmp_path / "archives", split, seed=seed)
    root = tmp_path / "librispeech"
    prepare_main(prepare, tmp_path / "archives", root)
    out = capsys.readouterr().out
    # progress: 4 FLACs, 3 transcripts and the README extracted; 4 utterances indexed
    assert "dev-clean: extracted 8 files" in out and "dev-clean: indexed 4 files" in out
    assert "dev-clean: 4 utterances" in out and f"done: train with LIBRISPEECH_ROOT={root}" in out
    assert sorted(p.name for p in root.glob("*.json")) == sorted(f"{s}.json" for s in TRAIN_SPLITS + EVAL_SPLITS)
    assert (root / "LibriSpeech" / "README.TXT").is_file() and not hidden_files(root)
    entries = {Path(e["audio_filepath"]).stem: e for e in map(json.loads, (root / "dev-clean.json").open())}
    assert set(entries) == set(UTTERANCES)
    for name, (seconds, text) in UTTERANCES.items():
        speaker, chapter, _ = name.split("-")
        assert entries[name]["audio_filepath"] == f"LibriSpeech/dev-clean/{speaker}/{chapter}/{name}.flac"
        assert entries[name]["duration"] == pytest.approx(seconds) and entries[name]["text"] == text.lower()

    summary = run(compose_config([
        "experiment=table4/novograd", "model=jasper_tiny", "logger=none", f"data.root={root}", "data.num_workers=0",
        "data.pin_memory=false", "trainer.device=cpu", "trainer.precision=fp32", "trainer.compile=false",
        "trainer.batch_size=4", "trainer.micro_batch_size=2", "trainer.max_steps=2", "trainer.eval_every_epochs=null",
        "trainer.progress_bar=false",
    ], tmp_path / "run"))
    assert summary["steps"] == 2
    for name in ("dev_clean", "dev_other", "test_clean", "test_other"):
        assert summary[f"wer_{name}"] >= 0.0  # an untrained model: any WER, but every column is there

    capsys.readouterr()
    prepare_main(prepare, tmp_path / "archives", root)  # idempotent: every split is skipped
    assert capsys.readouterr().out.count("exists, skipped") == 7


def test_prepare_resumes_after_a_kill(tmp_path, prepare, capsys):
    for split in ("dev-clean", "test-other"):
        write_archive(tmp_path / "archives", split)
    root = tmp_path / "librispeech"
    prepare_main(prepare, tmp_path / "archives", root)
    done = (root / "test-other.json").stat().st_mtime_ns
    # A run killed while extracting dev-clean: a half-written staging folder, no split folder, no manifest.
    (root / "dev-clean.json").unlink()
    (root / "LibriSpeech" / "dev-clean").rename(root / ".extract-dev-clean.tmp")
    capsys.readouterr()
    prepare_main(prepare, tmp_path / "archives", root)
    assert "test-other.json exists, skipped" in capsys.readouterr().out
    assert (root / "test-other.json").stat().st_mtime_ns == done
    assert len((root / "dev-clean.json").read_text().splitlines()) == 4
    assert not hidden_files(root)


def fails_naming(prepare, archives: Path, root: Path, *patterns: str) -> str:
    with pytest.raises(SystemExit) as failure:
        prepare_main(prepare, archives, root)
    message = str(failure.value)
    for pattern in patterns:
        assert pattern in message, message
    return message


def test_a_garbage_flac_header_is_named_and_a_new_archive_fixes_it(tmp_path, prepare):
    archives, root = tmp_path / "archives", tmp_path / "librispeech"
    write_archive(archives, "test-other")
    prepare_main(prepare, archives, root)
    prepared = (root / "test-other.json").read_bytes()
    write_archive(archives, "dev-clean", garbage_header={"84-121-0001"})
    message = fails_naming(prepare, archives, root, "84-121-0001.flac", "84-121.trans.txt:2",
                           "download dev-clean.tar.gz again", "re-run")
    assert "Traceback" not in message
    assert not (root / "dev-clean.json").exists() and not hidden_files(root)  # nothing marked done, no tmp file
    assert (root / "test-other.json").read_bytes() == prepared  # nothing prepared lost
    write_archive(archives, "dev-clean", seed=1)  # the user downloads it again
    prepare_main(prepare, archives, root)  # re-extracted: the old folder came from the broken archive
    assert len(LibriSpeechDataset([root / "dev-clean.json"], LogMelFeatures(), train=False)) == 4
    assert not hidden_files(root)


def test_a_fixed_file_in_place_is_reused_without_extracting_again(tmp_path, prepare, capsys):
    archives, root = tmp_path / "archives", tmp_path / "librispeech"
    write_archive(archives, "dev-clean", garbage_header={"174-50-0000"})
    fails_naming(prepare, archives, root, "174-50-0000.flac")
    good = tmp_path / "good"
    write_archive(good, "dev-clean")
    prepare_main(prepare, good, tmp_path / "reference")
    flac = Path("LibriSpeech/dev-clean/174/50/174-50-0000.flac")
    (root / flac).write_bytes((tmp_path / "reference" / flac).read_bytes())  # the user repairs the file
    capsys.readouterr()
    prepare_main(prepare, archives, root)
    assert "already extracted from dev-clean.tar.gz, reused" in capsys.readouterr().out
    assert len((root / "dev-clean.json").read_text().splitlines()) == 4


@pytest.mark.parametrize("transcript, where", [
    (b"84-121-0000 HE'S HERE\n84-121-0001 NO\xe9 WAY\n", "84-121.trans.txt:2: not UTF-8"),
    (b"84-121-0000 HE'S HERE\n84-121-0001 \n", "84-121.trans.txt:2: utterance 84-121-0001 has an empty transcript"),
    (b"84-121-0000 HE'S HERE\n84-121-0001 NA\xc3\xafVE\n", "84-121.trans.txt:2: utterance 84-121-0001: characters"),
])
def test_a_bad_transcript_line_is_named_and_a_fixed_archive_prepares(tmp_path, prepare, transcript, where):
    archives, root = tmp_path / "archives", tmp_path / "librispeech"
    write_archive(archives, "dev-clean", transcript_bytes={"84-121": transcript})
    fails_naming(prepare, archives, root, where, "re-run")
    assert not (root / "dev-clean.json").exists() and not hidden_files(root)
    write_archive(archives, "dev-clean")
    prepare_main(prepare, archives, root)
    assert len((root / "dev-clean.json").read_text().splitlines()) == 4


def test_audio_at_another_rate_is_named_before_training(tmp_path, prepare):
    archives, root = tmp_path / "archives", tmp_path / "librispeech"
    write_archive(archives, "dev-clean", sample_rates={"84-122-0000": 8000})
    fails_naming(prepare, archives, root, "84-122-0000.flac", "84-122.trans.txt:1", "at 8000 Hz")
    assert not (root / "dev-clean.json").exists() and not hidden_files(root)


def test_a_truncated_archive_is_named_and_leaves_nothing(tmp_path, prepare):
    archives, root = tmp_path / "archives", tmp_path / "librispeech"
    size = write_archive(archives, "dev-clean").stat().st_size
    write_archive(archives, "dev-clean", truncate_to=size // 2)
    fails_naming(prepare, archives, root, "dev-clean.tar.gz is damaged", "Download it again")
    assert not (root / "LibriSpeech" / "dev-clean").exists() and not hidden_files(root)
    (archives / "dev-clean.tar.gz").write_bytes(b"not a gzip file at all")
    fails_naming(prepare, archives, root, "dev-clean.tar.gz is damaged")
    write_archive(archives, "dev-clean")
    prepare_main(prepare, archives, root)
    assert (root / "dev-clean.json").is_file()


def test_an_archive_of_another_split_is_refused(tmp_path, prepare):
    archives = tmp_path / "archives"
    write_archive(archives, "dev-other").rename(archives / "dev-clean.tar.gz")
    fails_naming(prepare, archives, tmp_path / "librispeech", "holds no LibriSpeech/dev-clean/ folder")
    assert not hidden_files(tmp_path / "librispeech")


def test_prepare_names_what_is_missing(tmp_path, prepare):
    with pytest.raises(SystemExit, match="does not exist.*train-clean-100.tar.gz"):
        prepare_main(prepare, tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "archives").mkdir()
    (tmp_path / "archives" / "LibriSpeech.zip").write_text("wrong")
    with pytest.raises(SystemExit, match=r"no LibriSpeech archive.*dev-other\.tar\.gz.*found: LibriSpeech\.zip"):
        prepare_main(prepare, tmp_path / "archives", tmp_path / "out")
