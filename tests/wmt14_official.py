"""Tiny WMT14 en-de sources in the forms a user has them, for the tests of scripts/prepare_wmt14.py.

- `write_text_layout`: the local text layout docs/transformer-big.md documents (train/newstest2013 as line-aligned
  text, both newstest2014 sets as statmt.org's SGML files extracted from test-full.tgz and test-filtered.tgz).
- `install_sacrebleu_cache`: sacrebleu's own cache of `wmt14` en-de (the filtered newstest2014) as its download
  leaves it, pointed at a temporary directory, so the hub path's sacrebleu step runs offline.
Made on the fly from a handful of sentence pairs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

EN_WORDS = "the a house is small big cat dog runs fast green tree we see and old new car road city".split()
DE_WORDS = ("das ein haus ist klein groß katze hund läuft schnell grün baum wir sehen und alt neu auto weg "
            "stadt").split()
SGML_FILES = {"src": "newstest2014-deen-src.en.sgm", "ref": "newstest2014-deen-ref.de.sgm"}


def small_corpus(train_pairs: int = 120, seed: int = 0) -> dict[str, tuple[list[str], list[str]]]:
    """{split: (english lines, german lines)}: word-for-word translations, so that a tiny model can learn them.
    The filtered newstest2014 is a subset of the full one, as statmt.org's is."""
    rng = np.random.default_rng(seed)
    dictionary = dict(zip(EN_WORDS, DE_WORDS))

    def pairs(count: int) -> tuple[list[str], list[str]]:
        english = [list(rng.choice(EN_WORDS, size=int(rng.integers(2, 6)))) for _ in range(count)]
        return [" ".join(words) for words in english], [" ".join(dictionary[w] for w in words) for words in english]

    full_en, full_de = pairs(9)
    return {"train": pairs(train_pairs), "newstest2013": pairs(6), "newstest2014": (full_en, full_de),
            "newstest2014_filtered": (full_en[1::2], full_de[1::2])}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8", newline="\n")
    return path


def write_sgml(directory: Path, english: list[str], german: list[str]) -> None:
    """newstest2014-deen-{src.en,ref.de}.sgm as in statmt.org's tarballs: a document per three segments."""
    for kind, lines, header in (("src", english, '<srcset setid="newstest2014" srclang="any">'),
                                ("ref", german, '<refset setid="newstest2014" srclang="any" trglang="de">')):
        out = [header]
        for start in range(0, len(lines), 3):
            out += [f'<doc sysid="ref" docid="{start // 3}-test" genre="news" origlang="en">', "<p>"]
            out += [f'<seg id="{i + 1}">{line}</seg>' for i, line in enumerate(lines[start:start + 3], start)]
            out += ["</p>", "</doc>"]
        out.append(header.split()[0].replace("<", "</") + ">")
        write_lines(directory / SGML_FILES[kind], out)


def write_text_layout(directory: Path, corpus: dict[str, tuple[list[str], list[str]]]) -> Path:
    """SOURCE=DIR as docs/transformer-big.md documents it, the test sets as the official SGML (test-full/, test/)."""
    for split in ("train", "newstest2013"):
        for lang, lines in zip(("en", "de"), corpus[split]):
            write_lines(directory / f"{split}.{lang}", lines)
    write_sgml(directory / "test-full", *corpus["newstest2014"])
    write_sgml(directory / "test", *corpus["newstest2014_filtered"])
    return directory


def install_sacrebleu_cache(monkeypatch: pytest.MonkeyPatch, directory: Path, english: list[str],
                            german: list[str]) -> None:
    """sacrebleu's `wmt14` (the filtered newstest2014) as its download leaves it: the tarball (present, so not
    fetched again) and its extracted SGML, under `directory` instead of ~/.sacrebleu."""
    from sacrebleu.dataset import DATASETS

    dataset = DATASETS["wmt14"]
    outdir, rawdir = directory / "wmt14", directory / "wmt14" / "raw"
    write_sgml(rawdir / "test", english, german)
    (rawdir / "wmt14.test-filtered.tgz").write_bytes(b"extracted already")
    monkeypatch.setattr(dataset, "_outdir", str(outdir))
    monkeypatch.setattr(dataset, "_rawdir", str(rawdir))
