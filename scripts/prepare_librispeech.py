"""Turn the official LibriSpeech archives (openslr.org/12) into what data/librispeech.py reads.

    python scripts/prepare_librispeech.py --archives DIR --root DIR [--splits dev-clean test-clean ...]
    (or: make prepare-librispeech ARCHIVES=DIR LIBRISPEECH_ROOT=DIR)

For each `<split>.tar.gz` found in --archives (train-clean-100, train-clean-360, train-other-500, dev-clean,
dev-other, test-clean, test-other; any subset), writes under --root:
  LibriSpeech/<split>/<speaker>/<chapter>/*.flac and *.trans.txt   the archive's files, as they are
  <split>.json                                                     the manifest, one JSON object per utterance

Resumable: a split whose manifest exists is skipped. An archive is extracted into a temporary folder beside its
destination and renamed into place when complete, so a killed run leaves either nothing or a whole split folder
(plus a temporary folder the next run deletes); the manifest is likewise written under a temporary name and
renamed. About 60 GB of FLACs for all seven archives (the 960 h of training audio and the four evaluation sets).
"""

from __future__ import annotations

import argparse
import shutil
import tarfile
import time
from pathlib import Path

from data.librispeech import EVAL_SPLITS, TRAIN_SPLITS, write_manifest

SPLITS = TRAIN_SPLITS + EVAL_SPLITS


def archive_name(split: str) -> str:
    return f"{split}.tar.gz"


def find_archives(archives: Path, splits: tuple[str, ...]) -> dict[str, Path]:
    """{split: archive path} of the requested splits whose archive is in `archives`; a clear SystemExit when the
    folder is missing or holds none of them."""
    expected = ", ".join(archive_name(split) for split in splits)
    if not archives.is_dir():
        raise SystemExit(f"prepare_librispeech: archive directory {archives} does not exist; it should hold any of "
                         f"{expected} (from https://www.openslr.org/12)")
    found = {split: archives / archive_name(split) for split in splits if (archives / archive_name(split)).is_file()}
    if not found:
        present = sorted(entry.name for entry in archives.iterdir())
        raise SystemExit(
            f"prepare_librispeech: no LibriSpeech archive in {archives}. Expected any of {expected} "
            f"(from https://www.openslr.org/12); found: {', '.join(present) if present else 'nothing'}"
        )
    return found


def extract_split(archive: Path, split: str, root: Path) -> Path:
    """Extract `archive` so that `root/LibriSpeech/<split>` appears complete or not at all; return that folder.

    The official archives hold `LibriSpeech/<split>/...` plus a few top-level text files (README, SPEAKERS,
    CHAPTERS, ...), which are kept beside the splits when not there yet.
    """
    librispeech = root / "LibriSpeech"
    destination = librispeech / split
    if destination.is_dir():
        return destination
    staging = root / f".extract-{split}.tmp"
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed run
    staging.mkdir(parents=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(staging, filter="data")
    extracted = staging / "LibriSpeech" / split
    if not extracted.is_dir():
        shutil.rmtree(staging)
        raise SystemExit(f"prepare_librispeech: {archive} holds no LibriSpeech/{split}/ folder; is it the official "
                         "archive of that split?")
    librispeech.mkdir(exist_ok=True)
    for extra in (staging / "LibriSpeech").iterdir():
        if extra.is_file() and not (librispeech / extra.name).exists():
            extra.rename(librispeech / extra.name)
    extracted.rename(destination)
    shutil.rmtree(staging)
    return destination


def prepare(archives: Path, root: Path, splits: tuple[str, ...] = SPLITS) -> dict[str, Path]:
    """Extract and index every requested split whose archive is present; {split: manifest} of those now ready."""
    found = find_archives(archives, splits)
    root.mkdir(parents=True, exist_ok=True)
    manifests = {}
    for split, archive in found.items():
        manifest = root / f"{split}.json"
        if manifest.is_file():
            print(f"{split}: {manifest} exists, skipped")
        else:
            start = time.perf_counter()
            print(f"{split}: extracting {archive} and reading FLAC headers ...", flush=True)
            split_dir = extract_split(archive, split, root)
            count = write_manifest(split_dir, manifest)
            print(f"{split}: {count} utterances, {manifest} ({time.perf_counter() - start:.0f} s)")
        manifests[split] = manifest
    missing = [split for split in splits if split not in found]
    if missing:
        print(f"not in {archives} (skipped): {', '.join(archive_name(split) for split in missing)}")
    return manifests


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archives", type=Path, required=True, help="folder holding the <split>.tar.gz archives")
    parser.add_argument("--root", type=Path, required=True, help="output folder (data.root / LIBRISPEECH_ROOT)")
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS), metavar="SPLIT",
                        help=f"any of {', '.join(SPLITS)} (default: all seven)")
    args = parser.parse_args(argv)
    prepare(args.archives, args.root, tuple(args.splits))
    print(f"done: train with LIBRISPEECH_ROOT={args.root} (or data.root={args.root})")


if __name__ == "__main__":
    main()
