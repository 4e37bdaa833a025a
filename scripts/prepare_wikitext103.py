"""Prepare WikiText-103 for the Transformer-XL workload: the three official text files, then the vocabulary and every
split encoded once (see `data/wikitext103.py` for the tokenisation and the on-disk format).

    python scripts/prepare_wikitext103.py --root DIR [--source hub|PATH] [--expected-vocab-size N]
    make prepare-wikitext103 WT103_ROOT=DIR [SOURCE=hub|PATH]

Sources of the text:
- `hub` (the default; needs the internet): the datasets hub's `Salesforce/wikitext`, config `wikitext-103-v1` (the
  hub's canonical home of the dataset once called `wikitext`). The hub has one row per line of the official files,
  in order, with each line's newline kept, except that a blank line became the empty string. Writing each row back
  (a blank row as the official " \\n") reconstructs the official files, and in any case the same tokens: a blank
  line is `<eos>` alone however much whitespace it holds. The files are written to DIR/wikitext-103/.
- PATH: the official `wikitext-103-v1.zip` (https://wikitext.smerity.com/wikitext-103-v1.zip, formerly on
  s3.amazonaws.com/research.metamind.io), a folder holding it, or a folder holding the extracted `wiki.*.tokens`
  files (directly or in `wikitext-103/`). The zip is extracted to DIR/wikitext-103/; extracted files are read
  where they are.

The real training text must give a vocabulary of 267,735 words; the check applies when the source is the hub or
the training text is full size (over 100 MiB; the official file is about 515 MiB), or with --expected-vocab-size.

What is checked, each failure a message that names the file and says what to do: the zip must be a readable zip
archive holding the three members (a truncated download is reported as damaged), each member's CRC-32 as it is
extracted, every line of every text is UTF-8 (the file, the zip member and the line are named), every word of the
validation and test text occurs in the training text, and the vocabulary size. Progress: a line per step, and in
the long ones (counting and encoding 100M+ tokens) a tqdm bar on a terminal, otherwise a line a minute.

Safe to re-run: finished files are kept (each is written under a temporary name and renamed when complete; an
extracted file only while its size and CRC-32 match the zip's member), so an interrupted or failed run picks up
where it stopped, after a fix, and a finished corpus (its corpus.json) is left alone. Nothing is marked complete
on failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from any directory

from data.wikitext103 import (  # noqa: E402
    SPLITS,
    TEXT_FILES,
    WIKITEXT103_VOCAB_SIZE,
    TextDecodeError,
    write_corpus,
)

HUB_DATASET = "Salesforce/wikitext"
HUB_CONFIG = "wikitext-103-v1"
HUB_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
OFFICIAL_ZIP = "wikitext-103-v1.zip"
OFFICIAL_URL = "https://wikitext.smerity.com/wikitext-103-v1.zip"
TEXT_FOLDER = "wikitext-103"  # the folder inside the official zip, and where the text is written under --root
FULL_SIZE_BYTES = 100 * 2**20


def official_line(hub_row: str) -> str:
    """The line of the official file that one row of the hub's wikitext came from."""
    if not hub_row:
        return " \n"  # the hub stores the official blank lines (a single space) as ""
    return hub_row if hub_row.endswith("\n") else hub_row + "\n"


def write_lines(lines: Iterable[str], path: Path) -> None:
    """Write `lines` (each ending with its newline) to `path`, which appears only once complete."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "w", encoding="utf-8", newline="\n") as file:
            file.writelines(lines)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def text_from_hub(output_dir: Path) -> dict[str, Path]:
    """Reconstruct the three official files from the datasets hub into `output_dir`; files already there are kept."""
    paths = {split: output_dir / TEXT_FILES[split] for split in SPLITS}
    missing = [split for split, path in paths.items() if not path.is_file()]
    if missing:
        import datasets

        try:
            hub = datasets.load_dataset(HUB_DATASET, HUB_CONFIG)
        except Exception as error:  # offline, no such dataset, ...: say what else works
            raise SystemExit(
                f"prepare_wikitext103: cannot load {HUB_DATASET} ({HUB_CONFIG}) from the datasets hub: {error}\n"
                f"When offline, download {OFFICIAL_ZIP} elsewhere and pass --source /path/to/{OFFICIAL_ZIP} (or "
                "SOURCE=... to make); HF_DATASETS_OFFLINE=1 or HF_HUB_OFFLINE=1 also block the hub."
            ) from error
        output_dir.mkdir(parents=True, exist_ok=True)
        for split in missing:
            rows = hub[HUB_SPLITS[split]]["text"]
            write_lines((official_line(row) for row in rows), paths[split])
            print(f"{split}: {len(rows)} lines from the hub written to {paths[split]}")
    return paths


def text_from_zip(zip_path: Path, output_dir: Path) -> dict[str, Path]:
    """Extract the three `wiki.*.tokens` files of the official zip into `output_dir`.

    A file already extracted is kept when its size and CRC-32 equal its member's, so an interrupted run redoes only
    what it had not finished and a replaced archive is extracted again. Each member's CRC is checked as it is read
    (zipfile does so); a damaged archive or member stops the run with its name, and files already extracted stay.
    """
    paths = {}
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise SystemExit(damaged_zip(zip_path, f"it is not a readable zip archive ({error})")) from None
    with archive:
        for split in SPLITS:
            member = f"{TEXT_FOLDER}/{TEXT_FILES[split]}"
            try:
                info = archive.getinfo(member)
            except KeyError:
                raise SystemExit(f"prepare_wikitext103: {zip_path} has no {member}; is it {OFFICIAL_ZIP}?") from None
            paths[split] = output_dir / TEXT_FILES[split]
            if paths[split].is_file() and same_content(paths[split], info):
                continue
            output_dir.mkdir(parents=True, exist_ok=True)
            partial = output_dir / f".{TEXT_FILES[split]}.{os.getpid()}.partial"
            print(f"{split}: extracting {member} ({info.file_size / 1e6:.0f} MB)", flush=True)
            try:
                with archive.open(info) as packed, open(partial, "wb") as unpacked:
                    shutil.copyfileobj(packed, unpacked, length=2**22)
                os.replace(partial, paths[split])
            except (zipfile.BadZipFile, zlib.error, EOFError) as error:
                raise SystemExit(damaged_zip(zip_path, f"its member {member} cannot be read ({error})")) from None
            finally:
                partial.unlink(missing_ok=True)
            print(f"{split}: extracted {member} to {paths[split]}")
    return paths


def damaged_zip(zip_path: Path, problem: str) -> str:
    return (
        f"prepare_wikitext103: {zip_path} is damaged: {problem}. The download is probably truncated or corrupted "
        f"(the official {OFFICIAL_ZIP} is about 190 MB): download it again from {OFFICIAL_URL} and run again; "
        "files already prepared are kept."
    )


def same_content(path: Path, info: zipfile.ZipInfo) -> bool:
    """Whether `path` holds exactly the member `info` describes (its size and CRC-32)."""
    if path.stat().st_size != info.file_size:
        return False
    crc = 0
    with open(path, "rb") as file:
        while chunk := file.read(2**22):
            crc = zlib.crc32(chunk, crc)
    return crc == info.CRC


def text_in_folder(folder: Path) -> dict[str, Path] | None:
    """The three extracted `wiki.*.tokens` files in `folder` or `folder/wikitext-103/`, if all are there."""
    for candidate in (folder, folder / TEXT_FOLDER):
        paths = {split: candidate / TEXT_FILES[split] for split in SPLITS}
        if all(path.is_file() for path in paths.values()):
            return paths
    return None


def text_files(source: str, root: Path) -> dict[str, Path]:
    """The text file of each split for `--source`, fetched or extracted under `root` where needed."""
    if source == "hub":
        return text_from_hub(root / TEXT_FOLDER)
    path = Path(source).expanduser()
    archive = official_zip(path)
    if archive is not None:
        return text_from_zip(archive, root / TEXT_FOLDER)
    if path.is_dir() and (found := text_in_folder(path)) is not None:
        return found
    names = ", ".join(TEXT_FILES.values())
    raise SystemExit(
        f"prepare_wikitext103: no WikiText-103 text in {path}: expected {OFFICIAL_ZIP}, or the extracted {names} "
        f"(directly or in {TEXT_FOLDER}/). Use --source hub to fetch it from the datasets hub when online."
    )


def official_zip(path: Path) -> Path | None:
    """The zip a `--source` path means: the file itself (whatever it holds: one that is not a readable zip is
    reported as damaged, not as missing), or the official zip in a folder without extracted text."""
    if path.is_file():
        return path
    if path.is_dir() and text_in_folder(path) is None and (path / OFFICIAL_ZIP).is_file():
        return path / OFFICIAL_ZIP
    return None


def expected_vocab_size(requested: int | None, source: str, train_text: Path) -> int | None:
    """The vocabulary size to insist on: `requested` (0: none), else 267,735 for the real data, else none."""
    if requested is not None:
        return requested or None
    if source == "hub" or train_text.stat().st_size >= FULL_SIZE_BYTES:
        return WIKITEXT103_VOCAB_SIZE
    return None


def log(message: str) -> None:
    print(message, flush=True)  # flushed: a batch job's log shows each step as it happens


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="where the prepared corpus is written")
    parser.add_argument("--source", default="hub", help="'hub' (default), or the official zip or a folder with it "
                        "or with its extracted wiki.*.tokens files")
    parser.add_argument("--expected-vocab-size", type=int, default=None,
                        help=f"fail unless the vocabulary has this many words (0: no check); default "
                        f"{WIKITEXT103_VOCAB_SIZE} for the hub or a full-size training text, else no check")
    args = parser.parse_args(argv)
    root = args.root.expanduser()
    files = text_files(args.source, root)
    expected = expected_vocab_size(args.expected_vocab_size, args.source, files["train"])
    source = args.source if args.source == "hub" else str(Path(args.source).expanduser().resolve())
    try:
        corpus_root = write_corpus(files, root, expected_vocab_size=expected, source=source, log=log)
    except TextDecodeError as error:
        archive = None if args.source == "hub" else official_zip(Path(args.source).expanduser())
        message = str(error)
        if archive is not None:  # name the member as well as the file extracted from it
            origin = f"{error.path} (extracted from member {TEXT_FOLDER}/{error.path.name} of {archive})"
            message = message.replace(str(error.path), origin, 1)
        raise SystemExit(f"prepare_wikitext103: {message}") from None
    except ValueError as error:
        raise SystemExit(f"prepare_wikitext103: {error}") from None
    print(f"done: {corpus_root}; train with WT103_ROOT={corpus_root} (or data.root={corpus_root})")


if __name__ == "__main__":
    main()
