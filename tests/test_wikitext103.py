"""WikiText-103 data: the authors' tokenisation, the prepare script (folder, zip, hub), reading, stream cutting, and
the synthetic twins with the theoretical perplexities of the learnable one."""

from __future__ import annotations

import math
import sys
import types
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from data.synthetic_wikitext103 import (
    copy_stream,
    make_synthetic_wikitext103,
    symbol_names,
    theoretical_perplexities,
)
from data.wikitext103 import (
    EOS,
    SPLITS,
    TEXT_FILES,
    WIKITEXT103_VOCAB_SIZE,
    load_corpus,
    streams,
    write_corpus,
)
from novograd.engine.compose import compose_config
from script_modules import load_script


# A tiny corpus in the official files' shape: blank lines of one space, lines with leading and trailing spaces, a
# tab, a line of several spaces, case-distinct words, count ties between words first seen in a known order.
TRAIN_TEXT = " \n = Title = \n \n b a , \n\tA a c\n   \n c b = \n"
VALID_TEXT = " \n a A \n"
TEST_TEXT = "c\n\n"


prepare = load_script("prepare_wikitext103")


def write_text_folder(folder: Path, texts: tuple[str, str, str] = (TRAIN_TEXT, VALID_TEXT, TEST_TEXT)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in zip(SPLITS, texts):
        (folder / TEXT_FILES[split]).write_text(text, encoding="utf-8")
    return folder


def authors_reference(texts: dict[str, str]) -> tuple[list[str], dict[str, list[int]]]:
    """The authors' Vocab with the wt103 settings, written out slowly: count the training words (no <eos>), order
    by decreasing count and then by first occurrence, <eos> first; encode each line as strip().split() + <eos>."""
    first_seen: dict[str, int] = {}
    counts: Counter[str] = Counter()
    for line in texts["train"].splitlines(keepends=True):
        for word in line.strip().split():
            first_seen.setdefault(word, len(first_seen))
            counts[word] += 1
    vocab = [EOS] + sorted(counts, key=lambda word: (-counts[word], first_seen[word]))
    index = {word: i for i, word in enumerate(vocab)}
    encoded = {
        split: [index[symbol] for line in text.splitlines(keepends=True) for symbol in [*line.strip().split(), EOS]]
        for split, text in texts.items()
    }
    return vocab, encoded


# --- tokenisation and the on-disk corpus ------------------------------------------------------------------------

def test_vocabulary_and_encoding_follow_the_authors(tmp_path):
    folder = write_text_folder(tmp_path / "text")
    corpus = load_corpus(write_corpus(dict(zip(SPLITS, text_paths(folder))), tmp_path / "corpus"))
    # Counts: "=" 3; b, a, c 2 each, first seen in that order; Title, ",", A 1 each, first seen in that order.
    assert corpus.vocab == (EOS, "=", "b", "a", "c", "Title", ",", "A")
    vocab, encoded = authors_reference({"train": TRAIN_TEXT, "valid": VALID_TEXT, "test": TEST_TEXT})
    assert list(corpus.vocab) == vocab
    # Every line gives <eos>, blank ones only that: 7 lines and 12 words in train.
    assert corpus.split("train").tolist() == encoded["train"] and len(encoded["train"]) == 7 + 12
    assert corpus.split("valid").tolist() == encoded["valid"] == [0, 3, 7, 0]
    assert corpus.split("test").tolist() == encoded["test"] == [4, 0, 0]
    assert corpus.decode(corpus.split("valid")) == [EOS, "a", "A", EOS]
    assert corpus.vocab_size == 8 and corpus.word_to_id["A"] == 7
    assert corpus.num_tokens == {"train": 19, "valid": 4, "test": 3}


def text_paths(folder: Path) -> list[Path]:
    return [folder / TEXT_FILES[split] for split in SPLITS]


def test_split_is_a_read_only_int32_memmap(tmp_path):
    root = prepare_folder_corpus(tmp_path)
    train = load_corpus(root).split("train")
    assert isinstance(train, np.memmap) and train.dtype == np.int32 and train.ndim == 1
    with pytest.raises(ValueError, match="read-only"):
        train[0] = 1
    with pytest.raises(ValueError, match="unknown WikiText-103 split 'validation'"):
        load_corpus(root).split("validation")
    assert (root / "vocab.txt").read_text(encoding="utf-8") == "".join(f"{w}\n" for w in load_corpus(root).vocab)


def prepare_folder_corpus(tmp_path: Path) -> Path:
    prepare.main(["--root", str(tmp_path / "corpus"), "--source", str(write_text_folder(tmp_path / "text"))])
    return tmp_path / "corpus"


def test_missing_corpus_names_the_make_target(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"make prepare-wikitext103 WT103_ROOT=.*nowhere"):
        load_corpus(tmp_path / "nowhere")
    root = prepare_folder_corpus(tmp_path)
    (root / "test.npy").unlink()
    with pytest.raises(FileNotFoundError, match="test.npy is missing.*make prepare-wikitext103"):
        load_corpus(root)


def test_vocab_size_must_match_the_config(tmp_path):
    root = prepare_folder_corpus(tmp_path)
    assert load_corpus(root, vocab_size=8).vocab_size == 8
    with pytest.raises(ValueError, match="data.vocab_size is 267735 but the corpus .* has 8 words"):
        load_corpus(root, vocab_size=WIKITEXT103_VOCAB_SIZE)


def test_word_missing_from_train_is_an_error(tmp_path):
    folder = write_text_folder(tmp_path / "text", (TRAIN_TEXT, " a\n novel word \n", TEST_TEXT))
    with pytest.raises(ValueError, match=r"wiki.valid.tokens, line 2: the word 'novel' does not occur"):
        write_corpus(dict(zip(SPLITS, text_paths(folder))), tmp_path / "corpus")
    assert not (tmp_path / "corpus" / "corpus.json").exists()


def test_interrupted_preparation_resumes(tmp_path, capsys):
    root = prepare_folder_corpus(tmp_path)
    complete = {name: (root / name).read_bytes() for name in ("vocab.txt", "train.npy", "valid.npy", "test.npy")}
    train_mtime = (root / "train.npy").stat().st_mtime_ns
    # As if the run had stopped after writing train.npy.
    (root / "corpus.json").unlink()
    (root / "valid.npy").unlink()
    (root / "test.npy").unlink()
    capsys.readouterr()
    prepare_folder_corpus(tmp_path)
    log = capsys.readouterr().out
    assert "kept from" in log and "train: 19 tokens, kept" in log and "valid: 4 tokens written" in log
    assert (root / "train.npy").stat().st_mtime_ns == train_mtime
    assert {name: (root / name).read_bytes() for name in complete} == complete
    assert not list(root.glob(".*partial"))
    prepare_folder_corpus(tmp_path)
    assert "already prepared" in capsys.readouterr().out


# --- the prepare script's sources -------------------------------------------------------------------------------

def test_zip_and_folder_sources_give_the_same_corpus(tmp_path):
    folder_root = prepare_folder_corpus(tmp_path)
    archive = tmp_path / "download" / "wikitext-103-v1.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as packed:
        for split, text in zip(SPLITS, (TRAIN_TEXT, VALID_TEXT, TEST_TEXT)):
            packed.writestr(f"wikitext-103/{TEXT_FILES[split]}", text)
    for name, source in (("zip", archive), ("folder_with_zip", archive.parent)):
        root = tmp_path / name
        prepare.main(["--root", str(root), "--source", str(source)])
        assert (root / "wikitext-103" / "wiki.train.tokens").read_text(encoding="utf-8") == TRAIN_TEXT
        for split in SPLITS:
            assert (root / f"{split}.npy").read_bytes() == (folder_root / f"{split}.npy").read_bytes()
    nested = tmp_path / "extracted"
    write_text_folder(nested / "wikitext-103")
    prepare.main(["--root", str(tmp_path / "nested"), "--source", str(nested)])
    assert (tmp_path / "nested" / "train.npy").read_bytes() == (folder_root / "train.npy").read_bytes()
    with pytest.raises(SystemExit, match="no WikiText-103 text in"):
        prepare.main(["--root", str(tmp_path / "none"), "--source", str(tmp_path / "download" / "missing")])


def hub_rows(text: str) -> list[str]:
    """What the datasets hub's wikitext holds for a file: one row per line, newline kept, blank lines as ""."""
    return [line if line.strip() else "" for line in text.splitlines(keepends=True)]


def fake_datasets_module(texts: tuple[str, str, str]) -> types.ModuleType:
    module = types.ModuleType("datasets")
    calls = []

    def load_dataset(path, name):
        calls.append((path, name))
        return {hub_split: {"text": hub_rows(text)} for hub_split, text in zip(("train", "validation", "test"), texts)}

    module.load_dataset, module.calls = load_dataset, calls
    return module


def test_hub_rows_reconstruct_the_official_files(tmp_path, monkeypatch):
    fake = fake_datasets_module((TRAIN_TEXT, VALID_TEXT, TEST_TEXT))
    monkeypatch.setitem(sys.modules, "datasets", fake)
    # The hub is the real WikiText-103: its vocabulary size is checked, so the tiny stand-in fails, naming both sizes.
    with pytest.raises(SystemExit, match="has 8 words .*expected 267735"):
        prepare.main(["--root", str(tmp_path / "hub")])
    assert fake.calls == [("Salesforce/wikitext", "wikitext-103-v1")]
    assert not (tmp_path / "hub" / "vocab.txt").exists()
    prepare.main(["--root", str(tmp_path / "hub"), "--expected-vocab-size", "0"])
    assert len(fake.calls) == 1  # the text files written by the first run are reused
    text_dir = tmp_path / "hub" / "wikitext-103"
    # Blank lines come back as the official " \n"; the others byte for byte.
    assert (text_dir / "wiki.train.tokens").read_text(encoding="utf-8") == TRAIN_TEXT.replace("\n   \n", "\n \n")
    folder_root = prepare_folder_corpus(tmp_path)
    for split in SPLITS:
        assert (tmp_path / "hub" / f"{split}.npy").read_bytes() == (folder_root / f"{split}.npy").read_bytes()


def test_official_line_appends_a_missing_final_newline():
    assert prepare.official_line("") == " \n"
    assert prepare.official_line(" last line without newline") == " last line without newline\n"
    assert prepare.official_line(" = Title = \n") == " = Title = \n"


def test_full_size_training_text_must_give_the_real_vocabulary(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "FULL_SIZE_BYTES", 10)  # our tiny train file now counts as full size
    with pytest.raises(SystemExit, match="expected 267735"):
        prepare_folder_corpus(tmp_path)
    assert not (tmp_path / "corpus" / "vocab.txt").exists()
    with pytest.raises(SystemExit, match="has 8 words .*expected 9"):
        prepare.main(["--root", str(tmp_path / "corpus"), "--source", str(tmp_path / "text"),
                      "--expected-vocab-size", "9"])
    monkeypatch.setattr(prepare, "FULL_SIZE_BYTES", 100 * 2**20)
    assert load_corpus(prepare_folder_corpus(tmp_path)).vocab_size == 8


# --- streams ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_streams", [1, 2, 3, 5, 7, 23])
def test_streams_trim_and_cut_contiguously(num_streams):
    tokens = np.arange(100, 123, dtype=np.int32)
    cut = streams(tokens, num_streams)
    length = len(tokens) // num_streams
    assert cut.shape == (num_streams, length)
    for i in range(num_streams):
        assert cut[i].tolist() == tokens.tolist()[i * length:(i + 1) * length]
    assert np.shares_memory(cut, tokens)


def test_streams_rejects_impossible_cuts():
    with pytest.raises(ValueError, match="cannot fill 24 streams"):
        streams(np.arange(23), 24)
    with pytest.raises(ValueError, match="positive"):
        streams(np.arange(23), 0)


def test_streams_of_a_memmap_read_no_data(tmp_path):
    tokens = load_corpus(prepare_folder_corpus(tmp_path)).split("train")
    cut = streams(tokens, 4)
    assert cut.shape == (4, 4) and np.shares_memory(cut, tokens)  # 19 tokens: the last 3 dropped


# --- synthetic twins --------------------------------------------------------------------------------------------

def test_synthetic_corpus_is_the_generated_stream_in_the_real_format(tmp_path):
    root = make_synthetic_wikitext103(tmp_path, kind="learnable", num_train_tokens=3000, num_eval_tokens=500, seed=3,
                                      vocab_size=16, copy_distance=5, copy_prob=0.5)
    corpus = load_corpus(root, vocab_size=16)
    rng = np.random.default_rng(3)
    names = symbol_names(16)
    for split in SPLITS:
        expected = copy_stream(rng, 3000 if split == "train" else 500, 16, 5, 0.5)
        expected[-1] = 0
        assert corpus.decode(corpus.split(split)) == [names[s] for s in expected]
    assert sorted(corpus.vocab) == sorted(names) and corpus.vocab[0] == EOS


def test_synthetic_cache_is_deterministic_and_keyed_by_every_parameter(tmp_path):
    kwargs = dict(kind="smoke", num_train_tokens=6000, num_eval_tokens=300, seed=1, vocab_size=50)
    first = make_synthetic_wikitext103(tmp_path / "a", **kwargs)
    again = make_synthetic_wikitext103(tmp_path / "a", **kwargs)
    elsewhere = make_synthetic_wikitext103(tmp_path / "b", **kwargs)
    assert again == first and elsewhere.name == first.name
    for name in ("vocab.txt", "train.npy", "valid.npy", "test.npy"):
        assert (first / name).read_bytes() == (elsewhere / name).read_bytes()
    # copy_* do not change a smoke corpus, so they do not change its key; everything else does.
    assert make_synthetic_wikitext103(tmp_path / "a", **kwargs, copy_prob=0.5) == first
    for change in ({"seed": 2}, {"vocab_size": 60}, {"num_eval_tokens": 301}, {"kind": "learnable"}):
        other = make_synthetic_wikitext103(tmp_path / "a", **{**kwargs, **change})
        assert other != first
    assert not np.array_equal(load_corpus(first).split("train"),
                              load_corpus(make_synthetic_wikitext103(tmp_path / "a", **{**kwargs, "seed": 2}))
                              .split("train"))


def test_concurrent_synthetic_writers_agree_and_leave_no_staging(tmp_path):
    with ThreadPoolExecutor(max_workers=4) as pool:
        roots = list(pool.map(lambda _: make_synthetic_wikitext103(tmp_path, num_train_tokens=2000), range(4)))
    assert len(set(roots)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [roots[0].name]
    assert load_corpus(roots[0]).num_tokens["train"] == 2000


def test_synthetic_rejects_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match="kind must be one of"):
        make_synthetic_wikitext103(tmp_path, kind="copy")
    with pytest.raises(ValueError, match="0 <= copy_prob < 1"):
        make_synthetic_wikitext103(tmp_path, kind="learnable", copy_prob=1.0)
    with pytest.raises(ValueError, match="too small for every one of the 64 symbols"):
        make_synthetic_wikitext103(tmp_path, num_train_tokens=30)
    assert list(tmp_path.iterdir()) == []


def mutual_information(x: np.ndarray, y: np.ndarray, vocab_size: int) -> float:
    """Plug-in estimate of I(x; y) in nats from paired samples."""
    joint = np.bincount(x * vocab_size + y, minlength=vocab_size**2).reshape(vocab_size, vocab_size) / len(x)
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    seen = joint > 0
    return float((joint[seen] * np.log(joint[seen] / outer[seen])).sum())


def test_learnable_stream_depends_on_distance_d_only_and_meets_the_theoretical_perplexities():
    vocab_size, distance, copy_prob = 64, 24, 0.9
    stream = copy_stream(np.random.default_rng(0), 200_000, vocab_size, distance, copy_prob)
    best = theoretical_perplexities(vocab_size, copy_prob)
    target = stream[distance:]
    # Within a window shorter than D every pair of tokens is independent, so no short context helps: the best
    # perplexity there is V. The plug-in estimate of their mutual information is not 0 but its bias, about 0.1 nats
    # here because copies come in long runs: it must match what the estimate gives against an independent stream.
    assert best["without_source"] == vocab_size
    independent = copy_stream(np.random.default_rng(1), len(stream), vocab_size, distance, copy_prob)
    bias = max(mutual_information(target, independent[distance - k:-k], vocab_size) for k in range(1, distance))
    within_window = max(mutual_information(target, stream[distance - k:-k], vocab_size) for k in range(1, distance))
    assert within_window < bias + 0.01
    # Uniform marginal; the runs of copies leave about N (1 - p) / (1 + p) effective samples, so counts vary by ~8%.
    counts = np.bincount(stream, minlength=vocab_size) / (len(stream) / vocab_size)
    assert counts.min() > 0.7 and counts.max() < 1.3
    # The token D back carries ln V - ln(best with source) nats, and the optimal predictor reaches that bound.
    source = stream[:-distance]
    assert mutual_information(target, source, vocab_size) == pytest.approx(
        math.log(vocab_size) - math.log(best["with_source"]), abs=0.03)
    oracle = np.where(target == source, copy_prob + (1 - copy_prob) / vocab_size, (1 - copy_prob) / vocab_size)
    assert math.exp(-np.log(oracle).mean()) == pytest.approx(best["with_source"], rel=0.02)
    assert best["with_source"] == pytest.approx(2.074, abs=1e-3)


def test_smoke_stream_has_nothing_to_learn():
    assert theoretical_perplexities(50, 0.0) == {"with_source": pytest.approx(50.0), "without_source": 50.0}
    stream = copy_stream(np.random.default_rng(0), 100_000, 50, 24, 0.0)
    assert mutual_information(stream[24:], stream[:-24], 50) < 0.03  # i.i.d. pairs: the bias is (V - 1)^2 / 2N


# --- configs ----------------------------------------------------------------------------------------------------

def test_config_holds_the_authors_settings(monkeypatch):
    monkeypatch.delenv("WT103_ROOT", raising=False)
    data = compose_config(["data=wikitext103"]).data
    assert data.root == "datasets/wikitext103" and data.vocab_size == WIKITEXT103_VOCAB_SIZE
    assert data.synthetic is None and list(data.eval_sets) == ["valid", "test"]
    assert dict(data.eval) == {"tgt_len": 64, "mem_len": 640, "clamp_len": 400, "same_length": True,
                               "num_streams": 10, "warm_up": False}
    assert data.roll is False  # the paper's code base (kimiyoung, cybertronai) reads the same windows every epoch
    monkeypatch.setenv("WT103_ROOT", "/data/wt103")
    assert compose_config(["data=wikitext103"]).data.root == "/data/wt103"


def test_synthetic_config_builds_a_corpus_of_its_vocab_size(tmp_path):
    data = compose_config(["data=wikitext103_synthetic", f"data.synthetic.directory={tmp_path}",
                           "data.synthetic.kind=learnable"]).data
    root = make_synthetic_wikitext103(vocab_size=data.vocab_size, **data.synthetic)
    corpus = load_corpus(root, vocab_size=data.vocab_size)
    assert corpus.num_tokens == {"train": 20000, "valid": 4000, "test": 4000}
    assert data.synthetic.copy_distance > data.eval.tgt_len and data.eval.mem_len >= data.synthetic.copy_distance - 1
    # The copies survive the frequency-ordered vocabulary: ids are a permutation of the generated symbols.
    train = np.asarray(corpus.split("train"))
    distance = data.synthetic.copy_distance
    copied = np.mean(train[distance:] == train[:-distance])
    assert copied == pytest.approx(data.synthetic.copy_prob + (1 - data.synthetic.copy_prob) / data.vocab_size,
                                   abs=0.02)
