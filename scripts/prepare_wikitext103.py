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

Safe to re-run: finished files are kept (each is written under a temporary name and renamed when complete), so an
interrupted run picks up where it stopped, and a finished corpus is left alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from any directory

from data.wikitext103 import (  # noqa: E402
    SPLITS,
    TEXT_FILES,
    WIKITEXT103_VOCAB_SIZE,
    write_corpus,
)

HUB_DATASET = "Salesforce/wikitext"
HUB_CONFIG = "wikitext-103-v1"
HUB_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
OFFICIAL_ZIP = "wikitext-103-v1.zip"
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
    """Extract the three `wiki.*.tokens` files of the official zip into `output_dir`; complete ones are kept."""
    paths = {}
    with zipfile.ZipFile(zip_path) as archive:
        for split in SPLITS:
            member = f"{TEXT_FOLDER}/{TEXT_FILES[split]}"
            try:
                info = archive.getinfo(member)
            except KeyError:
                raise SystemExit(f"prepare_wikitext103: {zip_path} has no {member}; is it {OFFICIAL_ZIP}?") from None
            paths[split] = output_dir / TEXT_FILES[split]
            if paths[split].is_file() and paths[split].stat().st_size == info.file_size:
                continue
            output_dir.mkdir(parents=True, exist_ok=True)
            partial = output_dir / f".{TEXT_FILES[split]}.{os.getpid()}.partial"
            try:
                with archive.open(info) as packed, open(partial, "wb") as unpacked:
                    shutil.copyfileobj(packed, unpacked, length=2**22)
                os.replace(partial, paths[split])
            finally:
                partial.unlink(missing_ok=True)
            print(f"{split}: extracted {member} to {paths[split]}")
    return paths


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
    if path.is_file() and zipfile.is_zipfile(path):
        return text_from_zip(path, root / TEXT_FOLDER)
    if path.is_dir():
        found = text_in_folder(path)
        if found is not None:
            return found
        if (path / OFFICIAL_ZIP).is_file():
            return text_from_zip(path / OFFICIAL_ZIP, root / TEXT_FOLDER)
    names = ", ".join(TEXT_FILES.values())
    raise SystemExit(
        f"prepare_wikitext103: no WikiText-103 text in {path}: expected {OFFICIAL_ZIP}, or the extracted {names} "
        f"(directly or in {TEXT_FOLDER}/). Use --source hub to fetch it from the datasets hub when online."
    )


def expected_vocab_size(requested: int | None, source: str, train_text: Path) -> int | None:
    """The vocabulary size to insist on: `requested` (0: none), else 267,735 for the real data, else none."""
    if requested is not None:
        return requested or None
    if source == "hub" or train_text.stat().st_size >= FULL_SIZE_BYTES:
        return WIKITEXT103_VOCAB_SIZE
    return None


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
        corpus_root = write_corpus(files, root, expected_vocab_size=expected, source=source, log=print)
    except ValueError as error:
        raise SystemExit(f"prepare_wikitext103: {error}") from error
    print(f"done: {corpus_root}; train with WT103_ROOT={corpus_root} (or data.root={corpus_root})")


if __name__ == "__main__":
    main()
