"""Prepare WMT14 English-German for Transformer-big: joint BPE, pre-encoded token arrays, raw references.

    python scripts/prepare_wmt14.py --root DIR [--source hub|TEXT_DIR] [--vocab-size 8192] [...]
    (or: make prepare-wmt14 WMT14_ROOT=DIR [SOURCE=hub|TEXT_DIR])

Splits: `train`, `newstest2013` (validation, 3000 sentences), and newstest2014 twice:
- `newstest2014_filtered`: the 2737 sentences that `sacrebleu -t wmt14 -l en-de` scores (statmt.org's
  test-filtered.tgz: only the sentences originally written in English or German). The authors' pipeline
  translated and scored this set, so the paper's Table 7 columns are read on it.
- `newstest2014`: the full 3003 sentences (test-full.tgz; sacrebleu's `wmt14/full`; the datasets hub's test
  split), on which fairseq's and Tensor2Tensor's tokenized BLEU are usually reported.

Sources:
- `hub` (default): the datasets hub's `wmt/wmt14`, config `de-en` (Europarl v7, Common Crawl and News
  Commentary v9 for training; newstest2013 as its validation split, the full newstest2014 as its test split), and
  the filtered newstest2014 from sacrebleu's own test-set download (statmt.org; kept in ~/.sacrebleu, or $SACREBLEU).
  Both need the network unless already cached. The text is first written to DIR/raw/ as line-aligned files (a
  re-run reuses them; delete DIR/raw/ afterwards to save about 1.4 GB).
- a directory of UTF-8 plain text, one sentence per line, line i of each .en file aligned with line i of the
  matching .de file:
      train.en, train.de                 the training corpus: Europarl v7, Common Crawl and News Commentary
                                         concatenated in the same order on both sides
                                         (e.g. `cat europarl-v7.de-en.en commoncrawl.de-en.en
                                         news-commentary-v9.de-en.en > train.en`, and the same for .de; the
                                         authors used News Commentary v11)
      newstest2013.en, newstest2013.de   validation (e.g. `sacrebleu -t wmt13 -l en-de --echo src` / `ref`)
      newstest2014.en, newstest2014.de   the full test set (`sacrebleu -t wmt14/full -l en-de --echo src` / `ref`)
      newstest2014_filtered.en, .de      the filtered test set (`sacrebleu -t wmt14 -l en-de --echo src` / `ref`)
  Instead of the two newstest2014 pairs of text files, the official SGML files may be given as they come out of
  statmt.org's tarballs: test-full/newstest2014-deen-{src.en,ref.de}.sgm (test-full.tgz) and
  test/newstest2014-deen-{src.en,ref.de}.sgm (test-filtered.tgz), extracted into the directory; they are read
  with sacrebleu's own SGML reader, into DIR/raw/.

Before any heavy work every text file is checked to be UTF-8, line-aligned with its pair; an error names the file
and line. The output layout, special ids, length definition and filters are described in data/wmt14.py.
Re-running is safe: finished stages whose inputs and parameters are unchanged are reused, so an interrupted run
resumes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere in the checkout

from data.wmt14 import TextError, check_text_file, prepare_translation_data  # noqa: E402

LANGUAGES = ("en", "de")  # translation direction: English to German
LANGPAIR = "en-de"
FILTERED_TEST = "newstest2014_filtered"
#: split name in the output and in local file names -> split name on the datasets hub
HUB_SPLITS = {"train": "train", "newstest2013": "validation", "newstest2014": "test"}
SPLITS = (*HUB_SPLITS, FILTERED_TEST)
HUB_DATASET = ("wmt/wmt14", "de-en")
#: test set -> (sacrebleu's name for it, the folder of its SGML files in statmt.org's tarball)
SACREBLEU_SETS = {"newstest2014": ("wmt14/full", "test-full"), FILTERED_TEST: ("wmt14", "test")}
SGML_FILES = ("newstest2014-deen-src.en.sgm", "newstest2014-deen-ref.de.sgm")


class SourceError(RuntimeError):
    """A source that cannot give the WMT14 text: the message says what is missing and what to do."""


def _split_files(directory: Path, split: str) -> tuple[Path, Path]:
    return tuple(directory / f"{split}.{lang}" for lang in LANGUAGES)


def local_texts(text_dir: Path, raw_dir: Path) -> dict[str, tuple[Path, Path]]:
    """{split: (english file, german file)} under `text_dir` (newstest2014's SGML converted into `raw_dir`), or a
    SourceError listing what is missing."""
    texts, missing = {}, []
    for split in SPLITS:
        files = _split_files(text_dir, split)
        if all(path.is_file() for path in files):
            texts[split] = files
        elif split in SACREBLEU_SETS and all((text_dir / SACREBLEU_SETS[split][1] / name).is_file()
                                             for name in SGML_FILES):
            texts[split] = _sgml_to_text(text_dir / SACREBLEU_SETS[split][1], split, raw_dir)
        else:
            missing += [path.name for path in files if not path.is_file()]
    if missing:
        expected = ", ".join(path.name for split in SPLITS for path in _split_files(Path(), split))
        raise SourceError(
            f"{text_dir} lacks {', '.join(missing)}. A local WMT14 source directory must hold line-aligned UTF-8 "
            f"plain text files {expected} (for the newstest2014 pairs, statmt.org's SGML files may be extracted "
            "there instead; see the docstring of scripts/prepare_wmt14.py), or use SOURCE=hub when online."
        )
    return texts


def _sgml_to_text(sgml_dir: Path, split: str, raw_dir: Path) -> tuple[Path, Path]:
    """Official newstest SGML -> line-aligned text, by sacrebleu's reader (the text `sacrebleu --echo` prints)."""
    from sacrebleu.dataset import DATASETS

    reader = DATASETS[SACREBLEU_SETS[split][0]]
    raw_dir.mkdir(parents=True, exist_ok=True)
    outputs = _split_files(raw_dir, split)
    for name, output in zip(SGML_FILES, outputs):
        check_text_file(sgml_dir / name)  # a bad byte named here, not as a bare UnicodeDecodeError in sacrebleu
        staging = output.with_name(f".{output.name}.{os.getpid()}")
        reader._convert_format(str(sgml_dir / name), str(staging))  # sacrebleu's FakeSGMLDataset parser
        os.replace(staging, output)
    return outputs


def sacrebleu_texts(split: str, raw_dir: Path) -> tuple[Path, Path]:
    """A test set as sacrebleu downloads it (or finds it in its cache), copied to line-aligned files in raw_dir."""
    outputs = _split_files(raw_dir, split)
    if all(path.is_file() for path in outputs):
        return outputs
    from sacrebleu.dataset import DATASETS

    name, folder = SACREBLEU_SETS[split]
    dataset = DATASETS[name]
    try:
        files = (dataset.get_source_file(LANGPAIR), dataset.get_reference_files(LANGPAIR)[0])
    except (Exception, SystemExit) as error:  # sacrebleu exits on a failed download; offline, a URLError
        raise SourceError(
            f"could not get {split} (`sacrebleu -t {name} -l {LANGPAIR}`) through sacrebleu: it downloads "
            f"{dataset.data[0]} into {dataset._rawdir}, which needs the network ({type(error).__name__}). "
            f"Offline, give SOURCE=DIR with {split}.en and {split}.de, or with {folder}/{SGML_FILES[0]} and "
            f"{folder}/{SGML_FILES[1]} extracted from that tarball (see scripts/prepare_wmt14.py)."
        ) from None
    raw_dir.mkdir(parents=True, exist_ok=True)
    for file, output in zip(files, outputs):
        staging = output.with_name(f".{output.name}.{os.getpid()}")
        shutil.copyfile(file, staging)
        os.replace(staging, output)
    return outputs


def hub_texts(raw_dir: Path) -> dict[str, tuple[Path, Path]]:
    """Write the hub's WMT14 de-en splits and sacrebleu's filtered newstest2014 to line-aligned files under
    `raw_dir` (reused when already there)."""
    filtered = sacrebleu_texts(FILTERED_TEST, raw_dir)  # small and quick to fail: before the hub's 1.4 GB
    texts = {split: _split_files(raw_dir, split) for split in HUB_SPLITS}
    if all(path.is_file() for paths in texts.values() for path in paths):
        print(f"reusing the hub text in {raw_dir}")
        return texts | {FILTERED_TEST: filtered}
    import datasets

    try:
        hub = datasets.load_dataset(*HUB_DATASET)
    except Exception as error:  # offline, not cached, hub unreachable: all end the same way for the user
        raise SourceError(
            f"could not load {HUB_DATASET[0]} ({HUB_DATASET[1]}) from the datasets hub ({type(error).__name__}): "
            "it is not in the local datasets cache, and downloading it needs the network. Offline, give "
            "SOURCE=/path/to/text with the text files listed in scripts/prepare_wmt14.py."
        ) from None
    raw_dir.mkdir(parents=True, exist_ok=True)
    for split, hub_split in HUB_SPLITS.items():
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
    return texts | {FILTERED_TEST: filtered}


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
    try:
        prepare(args)
    except (SourceError, TextError) as error:  # what is wrong with the input, and what to do: no traceback
        raise SystemExit(f"prepare_wmt14: error: {error}") from None


def prepare(args: argparse.Namespace) -> None:
    root = args.root.expanduser()
    if args.source == "hub":
        texts = hub_texts(root / "raw")
        source = f"datasets hub {HUB_DATASET[0]} {HUB_DATASET[1]}; {FILTERED_TEST}: sacrebleu wmt14 {LANGPAIR}"
    else:
        text_dir = Path(args.source).expanduser().resolve()
        texts, source = local_texts(text_dir, root / "raw"), str(text_dir)
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
