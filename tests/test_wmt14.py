"""WMT14 data: preparation (local text and hub), on-disk format, filters, resumption, the Dataset and collate, the
tokenizer, the synthetic twins and the data configs. Everything runs on tiny generated corpora in tmp_path."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from data.synthetic_wmt14 import make_synthetic_wmt14
from data.wmt14 import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    Tokenizer,
    TranslationDataset,
    build_wmt14_datasets,
    collate,
)
from script_modules import load_script
from wmt14_official import install_sacrebleu_cache

REPO = Path(__file__).resolve().parents[1]
VOCAB_SIZE = 120
MAX_LEN = 40
EN_WORDS = "the a house is small big cat dog runs fast green tree we see and old new car road city".split()
DE_WORDS = "das ein haus ist klein groß katze hund läuft schnell grün baum wir sehen und alt neu auto weg".split()


prepare_script = load_script("prepare_wmt14")


def tiny_corpus() -> dict[str, tuple[list[str], list[str]]]:
    """{split: (english lines, german lines)} with pairs each filter must drop, and awkward evaluation text."""
    rng = np.random.default_rng(0)

    def sentence(words: list[str], n: int) -> str:
        return " ".join(rng.choice(words, size=n))

    en, de = [], []
    for _ in range(300):
        n = int(rng.integers(3, 10))
        en.append(sentence(EN_WORDS, n))
        de.append(sentence(DE_WORDS, n))
    for i in range(0, 300, 37):  # ratio violators: one side three times the other
        de[i] = sentence(DE_WORDS, 12)
        en[i] = sentence(EN_WORDS, 3)
    for i in (5, 50, 250):  # too long (> MAX_LEN subwords), with a sane ratio
        en[i], de[i] = sentence(EN_WORDS, 60), sentence(DE_WORDS, 60)
    en[7], de[8] = "", "   "  # empty sides
    en[9] = "the cat\rsees a dog"  # a stray carriage return must not split the line
    valid = ([sentence(EN_WORDS, 5) for _ in range(20)], [sentence(DE_WORDS, 5) for _ in range(20)])
    test_en = [sentence(EN_WORDS, 6) for _ in range(23)]
    test_de = [sentence(DE_WORDS, 6) for _ in range(23)]
    test_en[3], test_de[3] = sentence(EN_WORDS, 80), sentence(DE_WORDS, 20)  # kept: eval sets are not filtered
    test_de[4] = "„Das  Haus“ ist  groß "  # raw references are kept verbatim
    filtered = (test_en[::2], test_de[::2])  # like sacrebleu's wmt14 en-de: a subset of the full newstest2014
    return {"train": (en, de), "newstest2013": valid, "newstest2014": (test_en, test_de),
            "newstest2014_filtered": filtered}


def write_text_dir(directory: Path, corpus: dict[str, tuple[list[str], list[str]]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split, sides in corpus.items():
        for lang, lines in zip(("en", "de"), sides):
            (directory / f"{split}.{lang}").write_text("".join(line + "\n" for line in lines), encoding="utf-8",
                                                       newline="\n")
    return directory


def prepare(root: Path, source: Path | str, *extra: str) -> None:
    prepare_script.main(["--root", str(root), "--source", str(source), "--vocab-size", str(VOCAB_SIZE),
                         "--max-len", str(MAX_LEN), "--input-sentence-size", "10000", "--num-threads", "1", *extra])


@pytest.fixture(scope="module")
def corpus() -> dict[str, tuple[list[str], list[str]]]:
    return tiny_corpus()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, corpus) -> Path:
    base = tmp_path_factory.mktemp("wmt14")
    prepare(base / "root", write_text_dir(base / "text", corpus))
    return base / "root"


def expected_verdicts(tokenizer: Tokenizer, en: list[str], de: list[str], max_len: int, ratio: float) -> list[str]:
    """The training filter, one pair at a time, as written in data/wmt14.py's docstring."""
    verdicts = []
    for source, target in zip(en, de):
        src_len, tgt_len = len(tokenizer.encode(source)) + 1, len(tokenizer.encode(target)) + 1
        if min(src_len, tgt_len) == 1:
            verdicts.append("dropped_empty")
        elif max(src_len, tgt_len) > max_len:
            verdicts.append("dropped_too_long")
        elif max(src_len, tgt_len) > ratio * min(src_len, tgt_len):
            verdicts.append("dropped_ratio")
        else:
            verdicts.append("kept")
    return verdicts


# --- preparation ----------------------------------------------------------------------------------------------

def test_prepare_counts_filters_and_encodes_every_kept_pair(prepared, corpus):
    meta = TranslationDataset(prepared, "train").meta
    tokenizer = Tokenizer(prepared / "spm.model")
    en, de = corpus["train"]
    verdicts = expected_verdicts(tokenizer, en, de, MAX_LEN, 1.5)
    counts = meta["splits"]["train"]
    for reason in ("dropped_empty", "dropped_too_long", "dropped_ratio"):
        assert counts[reason] == verdicts.count(reason) > 0, reason
    assert counts["pairs_read"] == len(en) and counts["pairs_kept"] == verdicts.count("kept")

    kept = [i for i, verdict in enumerate(verdicts) if verdict == "kept"]
    assert 9 in kept  # the line with a stray "\r" stayed one line (otherwise every later pair would shift)
    for side, lines in (("src", en), ("tgt", de)):
        tokens = np.load(prepared / "train" / f"{side}.tokens.npy", mmap_mode="r")
        offsets = np.load(prepared / "train" / f"{side}.offsets.npy")
        assert tokens.dtype == np.uint16 and offsets.dtype == np.int64 and offsets[0] == 0
        expected = [tokenizer.encode(lines[i]) + [EOS_ID] for i in kept]
        assert len(offsets) == len(kept) + 1 and offsets[-1] == len(tokens) == counts[f"{side}_tokens"]
        assert [tokens[offsets[j]:offsets[j + 1]].tolist() for j in range(len(kept))] == expected
        assert counts[f"max_{side}_len"] == max(map(len, expected)) <= MAX_LEN


def test_prepare_keeps_evaluation_sets_whole_with_raw_text(prepared, corpus):
    tokenizer = Tokenizer(prepared / "spm.model")
    for split in ("newstest2013", "newstest2014"):
        en, de = corpus[split]
        dataset = TranslationDataset(prepared, split)
        assert len(dataset) == len(en) and dataset.meta["splits"][split]["pairs_kept"] == len(en)
        assert dataset.sources == en and dataset.references == de
        assert (prepared / split / "tgt.txt").read_bytes() == "".join(line + "\n" for line in de).encode()
        assert [dataset[i][0].tolist() for i in range(len(en))] == [tokenizer.encode(s) + [EOS_ID] for s in en]
    assert TranslationDataset(prepared, "newstest2014").src_lengths[3] > MAX_LEN  # long but kept


def test_special_ids_and_tokenizer_round_trip(prepared, corpus):
    tokenizer = TranslationDataset(prepared, "train").tokenizer
    pieces = [tokenizer.processor.id_to_piece(i) for i in (PAD_ID, UNK_ID, BOS_ID, EOS_ID)]
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3) and pieces == ["<pad>", "<unk>", "<s>", "</s>"]
    assert tokenizer.vocab_size == VOCAB_SIZE
    sentence = corpus["newstest2013"][1][0]
    ids = tokenizer.encode(sentence)
    assert ids and EOS_ID not in ids and tokenizer.decode(ids) == sentence
    # a decoder's output: BOS first, EOS then padding and garbage after it
    raw_output = torch.tensor([BOS_ID, *ids, EOS_ID, 7, PAD_ID, PAD_ID])
    assert tokenizer.decode(raw_output) == sentence
    assert tokenizer.decode_batch(torch.stack([raw_output, raw_output])) == [sentence, sentence]
    assert pickle.loads(pickle.dumps(tokenizer)).encode(sentence) == ids


def test_rerun_reuses_what_is_done_and_redoes_what_changed(tmp_path, corpus, capsys):
    text_dir = write_text_dir(tmp_path / "text", corpus)
    root = tmp_path / "root"
    prepare(root, text_dir)
    arrays = {path.relative_to(root): path.read_bytes() for path in root.rglob("*.npy")}
    capsys.readouterr()

    prepare(root, text_dir)  # nothing changed: everything reused
    assert capsys.readouterr().out.count("reusing") == 1 + 4
    assert {path.relative_to(root): path.read_bytes() for path in root.rglob("*.npy")} == arrays

    # an interrupted run: a split and meta.json missing, a stale staging directory left behind
    for path in (root / "newstest2013").iterdir():
        path.unlink()
    (root / "newstest2013").rmdir()
    (root / "meta.json").unlink()
    (root / ".train.12345").mkdir()
    with pytest.raises(FileNotFoundError, match="make prepare-wmt14 WMT14_ROOT="):
        TranslationDataset(root, "train")
    prepare(root, text_dir)
    output = capsys.readouterr().out
    assert "encoding newstest2013" in output and "encoding train" not in output
    assert {path.relative_to(root): path.read_bytes() for path in root.rglob("*.npy")} == arrays
    assert not list(root.glob(".*"))

    prepare(root, text_dir, "--max-len", "20")  # a training filter changed: only the training split is redone
    output = capsys.readouterr().out
    assert "reusing" in output and "encoding train" in output and "encoding newstest" not in output
    assert TranslationDataset(root, "train").src_lengths.max() <= 20


def test_missing_or_misaligned_source_says_what_is_expected(tmp_path, corpus):
    text_dir = write_text_dir(tmp_path / "text", corpus)
    (text_dir / "newstest2014.de").unlink()
    with pytest.raises(SystemExit, match=r"lacks newstest2014\.de.*train\.en, train\.de"):
        prepare(tmp_path / "root", text_dir)

    write_text_dir(text_dir, corpus)
    (text_dir / "train.de").write_text("ein haus\n" * 10, encoding="utf-8")
    with pytest.raises(SystemExit, match=r"train\.de \(10 lines\) are not line-aligned"):
        prepare(tmp_path / "root", text_dir)


def test_hub_source_gives_the_same_dataset_as_local_text(tmp_path, corpus, prepared, monkeypatch):
    hub_splits = {"train": "train", "newstest2013": "validation", "newstest2014": "test"}
    served = dict(corpus)  # what the fake hub serves

    class FakeSplit:
        def __init__(self, en: list[str], de: list[str]) -> None:
            self.pairs = [{"en": e, "de": d} for e, d in zip(en, de)]

        def iter(self, batch_size: int):
            for start in range(0, len(self.pairs), batch_size):
                yield {"translation": self.pairs[start:start + batch_size]}

    def load_dataset(name: str, config: str) -> dict[str, FakeSplit]:
        assert (name, config) == ("wmt/wmt14", "de-en")
        return {hub_splits[split]: FakeSplit(*sides) for split, sides in served.items() if split in hub_splits}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    install_sacrebleu_cache(monkeypatch, tmp_path / "sacrebleu", *corpus["newstest2014_filtered"])
    prepare(tmp_path / "root", "hub")
    assert (tmp_path / "root" / "spm.model").read_bytes() == (prepared / "spm.model").read_bytes()
    for path in prepared.rglob("*.npy"):
        assert (tmp_path / "root" / path.relative_to(prepared)).read_bytes() == path.read_bytes(), path

    # a line break inside a hub sentence must not shift the lines after it
    en, de = corpus["newstest2013"]
    served["newstest2013"] = (["the cat\nsees", *en[1:]], de)
    prepare(tmp_path / "again", "hub")
    assert TranslationDataset(tmp_path / "again", "newstest2013").sources[:2] == ["the cat sees", en[1]]

    def offline(name: str, config: str):
        raise ConnectionError("offline")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(SystemExit, match="needs the network. Offline, give SOURCE=/path/to/text") as raised:
        prepare(tmp_path / "offline", "hub")
    assert "OFFLINE" not in str(raised.value)  # the Makefile sets those itself: not a fix to suggest


# --- dataset and batches --------------------------------------------------------------------------------------

def test_dataset_items_lengths_and_errors(prepared, tmp_path):
    dataset = TranslationDataset(prepared, "train")
    assert len(dataset) == dataset.meta["splits"]["train"]["pairs_kept"] == len(dataset.tgt_lengths)
    for i in (0, len(dataset) // 2, len(dataset) - 1):
        src, tgt = dataset[i]
        assert src.dtype == tgt.dtype == torch.int64 and src[-1] == tgt[-1] == EOS_ID
        assert (len(src), len(tgt)) == (dataset.src_lengths[i], dataset.tgt_lengths[i])
        assert EOS_ID not in src[:-1] and PAD_ID not in src and BOS_ID not in tgt
    assert dataset.vocab_size == VOCAB_SIZE

    with pytest.raises(ValueError, match="keeps no raw text"):
        dataset.references
    with pytest.raises(ValueError, match="holds no split 'newstest2015'"):
        TranslationDataset(prepared, "newstest2015")
    with pytest.raises(FileNotFoundError, match=r"make prepare-wmt14 WMT14_ROOT="):
        TranslationDataset(tmp_path / "nowhere", "train")

    # pickling (spawned DataLoader workers) carries no token arrays, and the copy maps them again
    dataset[0]
    copy = pickle.loads(pickle.dumps(dataset))
    assert dataset._arrays and copy._arrays == {}
    assert all(torch.equal(a, b) for a, b in zip(copy[3], dataset[3]))


def test_load_time_filters_only_tighten(prepared, corpus):
    full = TranslationDataset(prepared, "train")
    tight = TranslationDataset(prepared, "train", max_len=8, max_len_ratio=1.2)
    en, de = corpus["train"]
    verdicts = expected_verdicts(full.tokenizer, en, de, 8, 1.2)
    assert 0 < len(tight) == verdicts.count("kept") < len(full)
    assert max(tight.src_lengths.max(), tight.tgt_lengths.max()) <= 8
    kept_text = [(en[i], de[i]) for i, verdict in enumerate(verdicts) if verdict == "kept"]
    decoded = [tuple(map(full.tokenizer.decode, tight[i])) for i in range(len(tight))]
    assert decoded == kept_text
    assert len(TranslationDataset(prepared, "train", max_len=MAX_LEN, max_len_ratio=1.5)) == len(full)
    assert len(TranslationDataset(prepared, "newstest2014", max_len=8)) == len(corpus["newstest2014"][0])
    with pytest.raises(ValueError, match="looser than the 40.*--max-len 50"):
        TranslationDataset(prepared, "train", max_len=50)


def test_collate_pads_and_shifts_the_target():
    samples = [
        (torch.tensor([5, 6, 7, EOS_ID]), torch.tensor([8, 9, EOS_ID])),
        (torch.tensor([5, EOS_ID]), torch.tensor([10, 11, 12, 13, EOS_ID])),
        (torch.tensor([EOS_ID]), torch.tensor([EOS_ID])),
    ]
    batch = collate(samples, pad_id=PAD_ID)
    src_width, tgt_width = 4, 5
    for row, (src, tgt) in enumerate(samples):
        assert batch["src"][row].tolist() == src.tolist() + [PAD_ID] * (src_width - len(src))
        assert batch["target"][row].tolist() == tgt.tolist() + [PAD_ID] * (tgt_width - len(tgt))
        assert batch["tgt_input"][row].tolist() == [BOS_ID] + tgt.tolist()[:-1] + [PAD_ID] * (tgt_width - len(tgt))
    assert batch["src_lengths"].tolist() == [4, 2, 1]
    assert batch["ntokens"].item() == 3 + 5 + 1
    assert {key: value.dtype for key, value in batch.items()} == dict.fromkeys(batch, torch.int64)


def test_build_datasets_checks_the_vocabulary(prepared):
    train, evals = build_wmt14_datasets(prepared, VOCAB_SIZE, {"valid": "newstest2013", "test": "newstest2014"})
    assert train.split == "train" and {name: d.split for name, d in evals.items()} == {
        "valid": "newstest2013", "test": "newstest2014"}
    with pytest.raises(ValueError, match=f"data.vocab_size={VOCAB_SIZE} or re-prepare with --vocab-size 8192"):
        build_wmt14_datasets(prepared, 8192, {})


# --- synthetic twins ------------------------------------------------------------------------------------------

def test_synthetic_twin_is_deterministic_and_cached(tmp_path):
    kwargs = dict(kind="smoke", num_train=120, num_eval=8, vocab_size=48, seed=3)
    first = make_synthetic_wmt14(**kwargs, cache_dir=tmp_path / "a")
    stamp = (first / "meta.json").stat().st_mtime_ns
    assert make_synthetic_wmt14(**kwargs, cache_dir=tmp_path / "a") == first
    assert (first / "meta.json").stat().st_mtime_ns == stamp
    elsewhere = make_synthetic_wmt14(**kwargs, cache_dir=tmp_path / "b")
    other_seed = make_synthetic_wmt14(**{**kwargs, "seed": 4}, cache_dir=tmp_path / "a")
    assert elsewhere.name == first.name and other_seed != first
    binaries = sorted(path.relative_to(first) for path in first.rglob("*") if path.suffix in (".npy", ".model"))
    assert len(binaries) == 1 + 4 * 4  # spm.model and four splits of token and offset arrays
    assert all((first / path).read_bytes() == (elsewhere / path).read_bytes() for path in binaries)
    assert (first / "train/src.tokens.npy").read_bytes() != (other_seed / "train/src.tokens.npy").read_bytes()
    assert not list(tmp_path.glob("a/.*"))  # no staging directory left behind
    with pytest.raises(ValueError, match="kind must be one of"):
        make_synthetic_wmt14(kind="wmt", cache_dir=tmp_path)


@pytest.mark.parametrize("kind", ["smoke", "learnable"])
def test_synthetic_twin_text_and_tokens(tmp_path, kind):
    root = make_synthetic_wmt14(kind=kind, num_train=200, num_eval=16, vocab_size=64, cache_dir=tmp_path)
    train, evals = build_wmt14_datasets(root, 64, {"valid": "newstest2013", "test": "newstest2014"})
    assert train.meta["splits"]["train"]["pairs_read"] == 200 and all(len(d) == 16 for d in evals.values())
    tokenizer = train.tokenizer
    # the real detokenize path gives back the raw references
    test = evals["test"]
    assert [tokenizer.decode(test[i][1]) for i in range(len(test))] == test.references
    # learnable: one fixed dictionary explains every pair, read backwards; smoke: no dictionary does
    dictionary: dict[str, set[str]] = {}
    for dataset in (train, *evals.values()):
        for i in range(len(dataset)):
            source, target = (tokenizer.decode(ids).split() for ids in dataset[i])
            assert len(source) == len(target) and 3 <= len(source) <= 12
            for word, translation in zip(source, reversed(target)):
                dictionary.setdefault(word, set()).add(translation)
    one_to_one = all(len(translations) == 1 for translations in dictionary.values())
    assert one_to_one == (kind == "learnable")
    if kind == "learnable":
        assert len({next(iter(t)) for t in dictionary.values()}) == len(dictionary) == 16


def test_data_configs_compose_and_build(tmp_path, monkeypatch):
    monkeypatch.setenv("WMT14_ROOT", "/data/wmt14")
    real = OmegaConf.load(REPO / "configs" / "data" / "wmt14.yaml")
    assert real.root == "/data/wmt14" and real.vocab_size == 8192 and real.max_len == 256
    assert real.max_len_ratio == 1.5
    expected_sets = {"valid": "newstest2013", "test": "newstest2014_filtered", "test_full": "newstest2014"}
    assert dict(real.eval_sets) == expected_sets

    with initialize_config_dir(config_dir=str(REPO / "configs" / "data"), version_base="1.3"):
        data = compose("wmt14_synthetic", overrides=[f"synthetic.cache_dir={tmp_path}", "synthetic.num_train=64"])
    assert data.synthetic.kind == "smoke" and data.eval_sets == real.eval_sets
    root = make_synthetic_wmt14(vocab_size=data.vocab_size, **data.synthetic)
    train, evals = build_wmt14_datasets(root, data.vocab_size, data.eval_sets, data.max_len, data.max_len_ratio)
    batch = collate([train[i] for i in range(4)])
    assert batch["src"].shape[0] == 4 and batch["tgt_input"].shape == batch["target"].shape
    assert int(batch["src"].max()) < data.vocab_size and sorted(evals) == ["test", "test_full", "valid"]
