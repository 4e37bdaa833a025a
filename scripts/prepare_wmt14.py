"""Prepare WMT14 English-German for Transformer-big: joint BPE, pre-encoded token arrays, raw references.

    python scripts/prepare_wmt14.py --root DIR [--source hub|TEXT_DIR] [--vocab-size 8192] [...]
    (or: make prepare-wmt14 WMT14_ROOT=DIR [SOURCE=hub|TEXT_DIR])

Sources:
- `hub` (default): the datasets hub's `wmt/wmt14`, config `de-en` (Europarl v7, Common Crawl and News
  Commentary v9 for training; newstest2013 as its validation split, newstest2014 as its test split). Needs the
  network, or the dataset already in the local datasets cache; the Makefile sets HF_DATASETS_OFFLINE=1 and
  HF_HUB_OFFLINE=1, so set both to 0 when online. The text is first written to DIR/raw/ as line-aligned files (a
  re-run reuses them; delete DIR/raw/ afterwards to save about 1.4 GB).
- a directory holding UTF-8 plain text, one sentence per line, line i of each .en file aligned with line i of the
  matching .de file:
      train.en, train.de                 the training corpus: Europarl v7, Common Crawl and News Commentary
                                         concatenated in the same order on both sides
                                         (e.g. `cat europarl-v7.de-en.en commoncrawl.de-en.en
                                         news-commentary-v9.de-en.en > train.en`, and the same for .de)
      newstest2013.en, newstest2013.de   validation (3000 sentences)
      newstest2014.en, newstest2014.de   test (3003 sentences; e.g. `sacrebleu -t wmt14 -l en-de --echo src`
                                         and `--echo ref`)

The output layout, special ids, length definition and filters are described in data/wmt14.py. Re-running is safe:
finished stages whose inputs and parameters are unchanged are reused, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere in the checkout

from data.wmt14 import prepare_translation_data  # noqa: E402

LANGUAGES = ("en", "de")  # translation direction: English to German
#: split name in the output and in local file names -> split name on the datasets hub
SPLITS = {"train": "train", "newstest2013": "validation", "newstest2014": "test"}
HUB_DATASET = ("wmt/wmt14", "de-en")


def local_texts(text_dir: Path) -> dict[str, tuple[Path, Path]]:
    """{split: (english file, german file)} under `text_dir`, or a FileNotFoundError listing what is missing."""
    texts = {split: tuple(text_dir / f"{split}.{lang}" for lang in LANGUAGES) for split in SPLITS}
    missing = [path.name for paths in texts.values() for path in paths if not path.is_file()]
    if missing:
        expected = ", ".join(f"{split}.{lang}" for split in SPLITS for lang in LANGUAGES)
        raise FileNotFoundError(
            f"{text_dir} lacks {', '.join(missing)}. A local WMT14 source directory must hold line-aligned UTF-8 "
            f"plain text files {expected} (see the docstring of scripts/prepare_wmt14.py for how to make them), "
            "or use --source hub when online."
        )
    return texts


def hub_texts(raw_dir: Path) -> dict[str, tuple[Path, Path]]:
    """Write the hub's WMT14 de-en splits to line-aligned files under `raw_dir` (reused when already there)."""
    texts = {split: tuple(raw_dir / f"{split}.{lang}" for lang in LANGUAGES) for split in SPLITS}
    if all(path.is_file() for paths in texts.values() for path in paths):
        print(f"reusing the hub text in {raw_dir}")
        return texts
    import datasets

    try:
        hub = datasets.load_dataset(*HUB_DATASET)
    except Exception as error:  # offline, not cached, hub unreachable: all end the same way for the user
        raise RuntimeError(
            f"could not load {HUB_DATASET[0]} ({HUB_DATASET[1]}) from the datasets hub: {error}. When online, set "
            "HF_DATASETS_OFFLINE=0 HF_HUB_OFFLINE=0; otherwise pass --source DIR with local text files (see "
            "scripts/prepare_wmt14.py)."
        ) from error
    raw_dir.mkdir(parents=True, exist_ok=True)
    for split, hub_split in SPLITS.items():
        if all(path.is_file() for path in texts[split]):
            continue
        print(f"writing the hub's {hub_split} split to {raw_dir}/{split}.{{{','.join(LANGUAGES)}}}")
        staging = [path.with_name(f".{path.name}.{os.getpid()}") for path in texts[split]]
        files = [open(path, "w", encoding="utf-8", newline="\n") for path in staging]
        try:
            for batch in hub[hub_split].iter(batch_size=10_000):
                for pair in batch["translation"]:
                    for file, lang in zip(files, LANGUAGES):
                        file.write(_one_line(pair[lang]) + "\n")
        finally:
            for file in files:
                file.close()
        for path, final in zip(staging, texts[split]):
            os.replace(path, final)
    return texts


def _one_line(sentence: str) -> str:
    """A sentence as one line: a line break inside it would shift every later line of one side."""
    return sentence.replace("\r", " ").replace("\n", " ")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, type=Path, help="output directory (data.root / WMT14_ROOT)")
    parser.add_argument("--source", default="hub", help="'hub', or a directory of local text files (see above)")
    parser.add_argument("--vocab-size", type=int, default=8192, help="joint BPE vocabulary, 4 special ids included")
    parser.add_argument("--max-len", type=int, default=256,
                        help="drop training pairs with a side longer than this (subwords + EOS)")
    parser.add_argument("--max-len-ratio", type=float, default=1.5,
                        help="drop training pairs whose longer side exceeds this times the shorter")
    parser.add_argument("--input-sentence-size", type=int, default=2_000_000,
                        help="sentences sampled (shuffled) from both training sides to learn the BPE")
    parser.add_argument("--character-coverage", type=float, default=0.9999,
                        help="fraction of characters in the vocabulary; the rarest others become UNK")
    parser.add_argument("--seed", type=int, default=0, help="sentencepiece's sampling seed")
    parser.add_argument("--num-threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)

    root = args.root.expanduser()
    if args.source == "hub":
        texts, source = hub_texts(root / "raw"), f"datasets hub {HUB_DATASET[0]} {HUB_DATASET[1]}"
    else:
        text_dir = Path(args.source).expanduser().resolve()
        texts, source = local_texts(text_dir), str(text_dir)
    meta = prepare_translation_data(
        root,
        texts,
        languages=LANGUAGES,
        vocab_size=args.vocab_size,
        max_len=args.max_len,
        max_len_ratio=args.max_len_ratio,
        input_sentence_size=args.input_sentence_size,
        character_coverage=args.character_coverage,
        seed=args.seed,
        num_threads=args.num_threads,
        source=source,
    )
    train = meta["splits"]["train"]
    print(f"done: {root} ({train['pairs_kept']} of {train['pairs_read']} training pairs kept; counts in meta.json)")


if __name__ == "__main__":
    main()
