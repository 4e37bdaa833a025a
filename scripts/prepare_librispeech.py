"""Turn the official LibriSpeech archives (openslr.org/12) into what data/librispeech.py reads.

    python scripts/prepare_librispeech.py --archives DIR --root DIR [--splits dev-clean test-clean ...]
    (or: make prepare-librispeech ARCHIVES=DIR LIBRISPEECH_ROOT=DIR)

For each `<split>.tar.gz` found in --archives (train-clean-100, train-clean-360, train-other-500, dev-clean,
dev-other, test-clean, test-other; any subset), writes under --root:
  LibriSpeech/<split>/<speaker>/<chapter>/*.flac and *.trans.txt   the archive's files, as they are
  LibriSpeech/<split>/.archive.json                                which archive (name, size, mtime) they came from
  <split>.json                                                     the manifest, one JSON object per utterance

Steps per split, each printing its progress (a tqdm bar on a terminal, otherwise a line a minute: files, bytes,
rate) and ending in a clear error that names the file and says what to do:
  1. extract: the archive must be a readable gzip tar holding `LibriSpeech/<split>/`; it is extracted into a
     temporary folder beside its destination and renamed into place when complete, so a killed or failed run
     leaves either nothing or a whole split folder. A split folder extracted from another archive than the one now
     in --archives (a replaced download) is extracted again.
  2. index: every `.trans.txt` line must be UTF-8 with a non-empty transcript in the vocabulary (space, a-z,
     apostrophe), and every FLAC it lists must have a readable header (durations come from the headers). The
     manifest is written under a temporary name and renamed when complete: its presence marks the split as done.
Resumable: a split whose manifest exists is skipped. A failure leaves the manifests of the other splits as they
were and no temporary file. About 60 GB of FLACs for all seven archives.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import tarfile
import time
import zlib
from pathlib import Path

from data.librispeech import EVAL_SPLITS, TRAIN_SPLITS, BadTranscriptError, UnreadableAudioError, write_manifest
from data.progress import Progress

SPLITS = TRAIN_SPLITS + EVAL_SPLITS
ARCHIVE_MARKER = ".archive.json"


class PrepareError(SystemExit):
    """A prepare step that failed on bad input; the message names the file and says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(f"prepare_librispeech: {message}")


def archive_name(split: str) -> str:
    return f"{split}.tar.gz"


def find_archives(archives: Path, splits: tuple[str, ...]) -> dict[str, Path]:
    """{split: archive path} of the requested splits whose archive is in `archives`; a clear SystemExit when the
    folder is missing or holds none of them."""
    expected = ", ".join(archive_name(split) for split in splits)
    if not archives.is_dir():
        raise PrepareError(f"archive directory {archives} does not exist; it should hold any of {expected} (from "
                           "https://www.openslr.org/12)")
    found = {split: archives / archive_name(split) for split in splits if (archives / archive_name(split)).is_file()}
    if not found:
        present = sorted(entry.name for entry in archives.iterdir())
        raise PrepareError(
            f"no LibriSpeech archive in {archives}. Expected any of {expected} (from https://www.openslr.org/12); "
            f"found: {', '.join(present) if present else 'nothing'}"
        )
    return found


def archive_identity(archive: Path) -> dict[str, object]:
    """What tells one download of an archive from another without reading 30 GB: name, size, modification time."""
    stat = archive.stat()
    return {"archive": archive.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def extracted_from(split_dir: Path) -> dict[str, object] | None:
    """The identity of the archive `split_dir` was extracted from, or None when unknown (no readable marker)."""
    try:
        return json.loads((split_dir / ARCHIVE_MARKER).read_text())
    except (OSError, ValueError):
        return None


def extract_split(archive: Path, split: str, root: Path) -> Path:
    """Extract `archive` so that `root/LibriSpeech/<split>` appears complete or not at all; return that folder.

    A split folder already extracted from this very archive is reused; one from another archive (or of unknown
    origin) is replaced once the new extraction is complete. The official archives hold `LibriSpeech/<split>/...`
    plus a few top-level text files (README, SPEAKERS, CHAPTERS, ...), which are kept beside the splits when not
    there yet.
    """
    librispeech = root / "LibriSpeech"
    destination = librispeech / split
    identity = archive_identity(archive)
    if destination.is_dir() and extracted_from(destination) == identity:
        print(f"{split}: {destination} already extracted from {archive.name}, reused")
        return destination
    staging = root / f".extract-{split}.tmp"
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed run
    staging.mkdir(parents=True)
    try:
        progress = Progress(f"{split}: extracting {archive.name}", unit="B", files=True)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar:
                    tar.extract(member, staging, filter="data")
                    if member.isfile():
                        progress.update(member.size, files=1)
        except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as error:
            raise PrepareError(
                f"{archive} is damaged or not a gzip tar ({type(error).__name__}: {error}). Download it again from "
                "https://www.openslr.org/12 and re-run; nothing of this split was kept."
            ) from error
        finally:
            summary = progress.close()
        print(f"{split}: extracted {summary}", flush=True)
        extracted = staging / "LibriSpeech" / split
        if not extracted.is_dir():
            raise PrepareError(f"{archive} holds no LibriSpeech/{split}/ folder; is it the official archive of that "
                               "split?")
        (extracted / ARCHIVE_MARKER).write_text(json.dumps(identity))
        librispeech.mkdir(exist_ok=True)
        for extra in (staging / "LibriSpeech").iterdir():
            if extra.is_file() and not (librispeech / extra.name).exists():
                extra.rename(librispeech / extra.name)
        if destination.exists():  # from another archive: replaced only now that the new one is complete
            print(f"{split}: {destination} came from another archive than {archive.name}: replaced")
            destination.rename(staging / "replaced")
        extracted.rename(destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def index_split(split: str, split_dir: Path, manifest: Path, archive: Path) -> int:
    """Write the split's manifest; bad transcripts or audio become a `PrepareError` that says what to do."""
    progress = Progress(f"{split}: indexing", unit="B", files=True)
    try:
        count = write_manifest(split_dir, manifest, on_utterance=lambda size: progress.update(size, files=1))
    except (BadTranscriptError, UnreadableAudioError) as error:
        raise PrepareError(
            f"{error}\nNo manifest was written for {split}. Either download {archive.name} again (into "
            f"{archive.parent}) and re-run, which extracts it afresh, or fix the file in {split_dir} and re-run."
        ) from error
    finally:
        summary = progress.close()
    print(f"{split}: indexed {summary}", flush=True)
    return count


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
            split_dir = extract_split(archive, split, root)
            count = index_split(split, split_dir, manifest, archive)
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
