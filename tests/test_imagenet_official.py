"""ImageNet from its official distribution format to a trained and evaluated model, and every bad input on the way.

The archives come from `official_formats/imagenet.py` (per-class training tars, the flat validation tar, the devkit
or a labels file); `scripts/prepare_imagenet.sh` (through `make prepare-imagenet` once) turns them into the folders
the ImageNet workload trains on with the tiny ResNet.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from official_formats.imagenet import WNIDS, val_image_name, write_imagenet_archives, write_train_tar

from data.corrupt import CorruptFileWarning
from data.imagenet import build_imagenet_datasets
from novograd.engine import run
from novograd.engine.batches import device_batches
from novograd.engine.compose import compose_config
from novograd.engine.evaluation import evaluate_set
from novograd.engine.precision import Precision
from novograd.workloads.imagenet import ImageNetWorkload

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "prepare_imagenet.sh"
# The paper's Table 1 row on the prepared miniature: 3 classes, the tiny ResNet, one CPU step of the whole epoch.
TINY_ROW = ["experiment=table1/novograd_100ep", "model=resnet_v2_tiny", "data.num_classes=3", "data.image_size=32",
            "data.eval_resize=36", "data.num_workers=0", "data.pin_memory=false", "trainer.batch_size=12",
            "trainer.micro_batch_size=6", "trainer.max_steps=1", "trainer.precision=fp32", "trainer.device=cpu",
            "trainer.progress_bar=false", "logger=none"]


def prepare(archives: Path, out: Path, *options: str, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "--jobs", "2", *options, str(archives), str(out)],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=60)


def image_files(split_dir: Path) -> dict[str, list[str]]:
    return {d.name: sorted(f.name for f in d.iterdir()) for d in sorted(split_dir.iterdir()) if d.is_dir()}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """The miniature prepared once through `make prepare-imagenet` (ARGS reaching the script), read-only for the
    tests that use it."""
    archives = write_imagenet_archives(tmp_path_factory.mktemp("archives"))
    out = tmp_path_factory.mktemp("prepared") / "imagenet"
    result = subprocess.run(
        ["make", "-s", "-C", str(REPO), "prepare-imagenet", f"ARCHIVES={archives.directory}",
         f"IMAGENET_ROOT={out}", "ARGS=--jobs 2 --progress-interval 5"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "train: unpacking 3 class archives (2 at a time)" in result.stdout  # --jobs 2 came through ARGS
    assert f"done: 12 training and 6 validation images in {out}" in result.stdout
    assert image_files(out / "train") == archives.train_images
    expected_val = {wnid: sorted(val_image_name(n) for n, w in enumerate(archives.val_wnids, 1) if w == wnid)
                    for wnid in WNIDS}
    assert image_files(out / "val") == expected_val
    return out


def train_tiny(output_dir: Path, root: Path, *overrides: str) -> tuple[dict, list[dict]]:
    summary = run(compose_config([*TINY_ROW, f"data.root={root}", *overrides], output_dir))
    assert json.loads((output_dir / "summary.json").read_text()) == summary
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, records


def test_prepared_official_archives_train_and_evaluate(prepared, tmp_path):
    summary, records = train_tiny(tmp_path / "run", prepared)
    assert summary["steps"] == 1 and summary["epochs"] == 1.0
    assert 0 <= summary["top1"] <= 100 and summary["top5"] == 100.0  # 3 classes: all are in the top 5
    assert (summary["skipped_train"], summary["skipped_val"]) == (0, 0)
    (train_record,) = [r for r in records if "train/loss" in r]
    (eval_record,) = [r for r in records if "eval/top1" in r]
    assert train_record["train/skipped_train"] == 0 and eval_record["eval/skipped_val"] == 0


def corrupt(path: Path) -> str:
    """Cut a JPEG short, as a failing disk or copy leaves it; return its path."""
    path.write_bytes(path.read_bytes()[:300])
    return str(path)


def test_corrupt_jpegs_are_an_error_or_skipped_counted_and_never_scored(prepared, tmp_path):
    root = Path(shutil.copytree(prepared, tmp_path / "imagenet"))
    bad_train = corrupt(root / "train" / "n01443537" / "n01443537_2.JPEG")
    bad_val = corrupt(root / "val" / "n01484850" / val_image_name(3))

    with pytest.raises(OSError, match=f"cannot decode image {bad_train}.*data.skip_corrupt=true"):
        train_tiny(tmp_path / "strict", root)

    with pytest.warns(CorruptFileWarning) as warned:
        summary, records = train_tiny(tmp_path / "skipping", root, "data.skip_corrupt=true", "trainer.max_steps=2",
                                      "trainer.log_every_steps=1")
    # Each step is an epoch, drawing each of the 12 training images once: one image a step stood in for the bad
    # file, counted over the run; each evaluation (one an epoch) left one image unscored.
    assert (summary["skipped_train"], summary["skipped_val"]) == (2, 1)
    assert [r["train/skipped_train"] for r in records if "train/loss" in r] == [1, 2]
    assert [r["eval/skipped_val"] for r in records if "eval/top1" in r] == [1, 1]
    named = [str(w.message) for w in warned]
    assert sum(bad_train in m for m in named) == 1 and sum(bad_val in m for m in named) == 1  # each named once


def test_evaluation_scores_each_readable_image_once(prepared, tmp_path):
    root = Path(shutil.copytree(prepared, tmp_path / "imagenet"))
    corrupt(root / "val" / "n01484850" / val_image_name(3))
    _, val = build_imagenet_datasets(root, num_classes=3, image_size=32, eval_resize=36, skip_corrupt=True)
    workload = ImageNetWorkload(model={}, data={})
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))
    loader = torch.utils.data.DataLoader(val, batch_size=4, collate_fn=workload.collate)
    cpu = torch.device("cpu")
    on_cpu = lambda batches: device_batches(batches, cpu, on_device=workload.on_device)  # noqa: E731
    with pytest.warns(CorruptFileWarning, match=val_image_name(3)):
        sums = evaluate_set(workload, model, loader, on_cpu, Precision("fp32", cpu), cpu)
    assert (sums["count"], sums["skipped"]) == (5, 1)  # the image standing in for the bad one is not scored

    # Negative control: the same batch with the flag cleared scores the stand-in as well, 6 images.
    batch = workload.on_device(workload.collate([val[i] for i in range(len(val))]))
    assert batch.skipped.tolist() == [i == 4 for i in range(6)]  # n01484850's first image, sorted after 4 others
    with torch.no_grad():
        flagged = workload.eval_step(model, batch)
        unflagged = workload.eval_step(model, batch._replace(skipped=torch.zeros_like(batch.skipped)))
    assert (flagged["count"].item(), unflagged["count"].item()) == (5, 6)
    assert {k: v.item() for k, v in flagged.items()} == sums  # one batch or the loader's four: the same sums


def test_truncated_class_tar_stops_names_the_class_and_is_redone(tmp_path):
    archives = write_imagenet_archives(tmp_path / "archives", truncated_class="n01443537")
    out = tmp_path / "imagenet"
    failed = prepare(archives.directory, out)
    assert failed.returncode == 1
    assert "Unexpected EOF" in failed.stderr  # tar's own message, then which class it was and what to do
    assert ("class n01443537: its archive n01443537.tar inside ILSVRC2012_img_train.tar could not be unpacked"
            in failed.stderr)
    assert "nothing was marked complete" in failed.stderr and "download ILSVRC2012_img_train.tar again" in failed.stderr
    assert not list(out.rglob(".complete"))
    # The damaged class is gone entirely (no half-written folder, no staging); the others are whole.
    assert image_files(out / "train") == {w: archives.train_images[w] for w in ("n01440764", "n01484850")}
    assert sorted(p.name for p in (out / "train").iterdir() if p.name.startswith((".tmp", "n01443537")) or
                  p.suffix == ".tar") == []
    rerun_unfixed = prepare(archives.directory, out)
    assert rerun_unfixed.returncode == 1 and "class n01443537" in rerun_unfixed.stderr  # never "already prepared"

    kept = (out / "train" / "n01440764").stat().st_ino
    write_train_tar(archives.train_tar, archives.train_images)  # the user downloads the archive again
    fixed = prepare(archives.directory, out)
    assert fixed.returncode == 0, fixed.stderr
    assert "done: 12 training and 6 validation images" in fixed.stdout
    assert image_files(out / "train") == archives.train_images
    assert (out / "train" / "n01440764").stat().st_ino == kept  # a finished class is not redone
    assert (out / "train" / ".complete").exists() and (out / "val" / ".complete").exists()


def scipy_python() -> list[str] | None:
    """A Python command that can import scipy: docs/imagenet.md's `uv run --with scipy python` (offline: from uv's
    cache), else this interpreter or python3 on PATH; None when there is none."""
    candidates = [["uv", "run", "--offline", "--frozen", "--with", "scipy", "python"], [sys.executable], ["python3"]]
    for command in candidates:
        if shutil.which(command[0]) is None:
            continue
        probe = subprocess.run([*command, "-c", "import scipy.io"], capture_output=True, cwd=REPO, timeout=60)
        if probe.returncode == 0:
            return command
    return None


def test_devkit_labels_read_with_a_multi_word_python_command(tmp_path):
    command = scipy_python()
    if command is None:
        pytest.skip("no Python with scipy to write and read the devkit's meta.mat")
    archives = write_imagenet_archives(tmp_path / "archives", labels="devkit", python=command)
    # Always several words (`env` first), the form `"$PYTHON"` once ran as one program name.
    python = "env PYTHONNOUSERSITE=1 " + shlex.join(command)
    result = subprocess.run(["bash", str(SCRIPT), str(archives.directory), str(tmp_path / "out")], cwd=REPO,
                            capture_output=True, text=True, env={**os.environ, "PYTHON": python}, timeout=120)
    assert result.returncode == 0, result.stderr
    by_class = image_files(tmp_path / "out" / "val")
    assert sorted(by_class) == sorted(WNIDS)  # the devkit's inner synset is not a class
    for number, wnid in enumerate(archives.val_wnids, start=1):
        assert val_image_name(number) in by_class[wnid]


def test_devkit_without_scipy_fails_before_any_extraction(tmp_path):
    archives = write_imagenet_archives(tmp_path / "archives", labels="devkit", python=["true"])  # meta.mat unused
    result = prepare(archives.directory, tmp_path / "out", "--python", "false --no-scipy")
    assert result.returncode == 1
    assert "needs scipy, which 'false --no-scipy' cannot import" in result.stderr
    assert 'uv run --with scipy python' in result.stderr
    assert not any((tmp_path / "out" / "train").iterdir())  # checked before the hours of training extraction


def test_label_sources_resume_and_errors(tmp_path):
    archives = write_imagenet_archives(tmp_path / "archives", labels="loc_csv")
    out = tmp_path / "imagenet"
    assert prepare(archives.directory, out).returncode == 0
    assert image_files(out / "val")["n01443537"] == [val_image_name(1), val_image_name(6)]
    again = prepare(archives.directory, out)
    assert again.returncode == 0 and "train: already prepared" in again.stdout and "val: already prepared" in again.stdout
    # An interrupted run: one class and the val split unfinished. The rerun completes exactly those.
    shutil.rmtree(out / "train" / "n01443537")
    (out / "train" / ".complete").unlink()
    shutil.rmtree(out / "val")
    resumed = prepare(archives.directory, out)
    assert resumed.returncode == 0, resumed.stderr
    assert image_files(out / "train") == archives.train_images and len(list(out.rglob("*.JPEG"))) == 18

    labels = tmp_path / "labels.txt"  # --val-labels wins over the archive folder's own labels
    labels.write_text("".join(f"{val_image_name(n)} n01440764\n" for n in range(1, 7)))
    relabelled = prepare(archives.directory, tmp_path / "other", "--val-labels", str(labels))
    assert relabelled.returncode == 0, relabelled.stderr
    assert list(image_files(tmp_path / "other" / "val")) == ["n01440764"]

    usage = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert usage.returncode == 2 and "Usage: scripts/prepare_imagenet.sh [OPTIONS] ARCHIVE_DIR" in usage.stderr
    unknown = prepare(archives.directory, out, "--job", "3")
    assert unknown.returncode == 1 and "unknown option --job" in unknown.stderr
    (archives.directory / "LOC_val_solution.csv").unlink()
    no_labels = prepare(archives.directory, tmp_path / "third")
    assert no_labels.returncode == 1 and "no validation labels" in no_labels.stderr
    (archives.directory / "ILSVRC2012_img_val.tar").unlink()
    missing = prepare(archives.directory, tmp_path / "fourth")
    assert missing.returncode == 1 and "ILSVRC2012_img_val.tar not found" in missing.stderr


def test_long_steps_print_progress(tmp_path):
    archives = write_imagenet_archives(tmp_path / "archives")
    # A tar that takes 2 s over each of the two official archives, so the steps outlast a 1 s interval.
    slow = tmp_path / "bin"
    slow.mkdir()
    (slow / "tar").write_text(f'#!/bin/sh\ncase "$*" in *ILSVRC2012_img_*) sleep 2 ;; esac\nexec {shutil.which("tar")} "$@"\n')
    (slow / "tar").chmod(0o755)
    result = prepare(archives.directory, tmp_path / "out", "--progress-interval", "1",
                     env={"PATH": f"{slow}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("train: class archives: ") and " of 0 MB, " in line and line.endswith(" MB/s")
               for line in lines), result.stdout
    assert any(line.startswith("val: unpacked: ") and " of 6 images, " in line for line in lines), result.stdout
