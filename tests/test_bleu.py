"""BLEU: the same numbers as the command-line tools (sacrebleu, sacremoses, sed) on the same files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from novograd.metrics.bleu import sacrebleu_score, split_compounds, tokenized_bleu

REFERENCES = [
    "Das Max-Planck-Institut hat am Montag neue E-Mail-Adressen veröffentlicht.",
    "Die Regierung sagte, dass die Steuern im nächsten Jahr steigen würden.",
    'Er nannte den Vorschlag "völlig unrealistisch" & kündigte Widerstand an.',
    "Der 3-jährige Junge spielte im Garten mit seinem Hund.",
    "Die Nord-Süd-Verbindung wurde 2014 eröffnet, sagte ein Sprecher.",
]
HYPOTHESES = [
    "Das Max-Planck-Institut veröffentlichte am Montag neue E-Mail-Adressen.",
    "Die Regierung sagte, die Steuern würden nächstes Jahr steigen.",
    'Er nannte den Vorschlag "völlig unrealistisch" und kündigte Widerstand an.',
    "Der dreijährige Junge spielte mit seinem Hund im Garten.",
    "Die Nord-Süd-Verbindung wurde im Jahr 2014 eröffnet, so ein Sprecher.",
]
COMPOUND_RULE = r"s/\(\S\)-\(\S\)/\1 ##AT##-##AT## \2/g"  # fairseq's compound_split_bleu.sh, as a sed script


def run(*command: str, stdin: str | None = None) -> str:
    return subprocess.run(command, input=stdin, capture_output=True, text=True, check=True).stdout


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def sacrebleu_cli(refs: Path, hyps: Path, *options: str) -> dict:
    out = run(sys.executable, "-m", "sacrebleu", str(refs), "-i", str(hyps), "--format", "json", "-w", "6", *options)
    return json.loads(out)


def test_sacrebleu_score_is_the_command_lines(tmp_path):
    refs, hyps = write_lines(tmp_path / "ref.de", REFERENCES), write_lines(tmp_path / "hyp.de", HYPOTHESES)
    cli = sacrebleu_cli(refs, hyps)
    score, signature = sacrebleu_score(HYPOTHESES, REFERENCES)
    assert round(score, 6) == pytest.approx(cli["score"], abs=1e-6)
    assert 20 < score < 90  # a partial match, so every n-gram order counts
    assert signature == cli["signature"]
    assert signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")


@pytest.mark.skipif(shutil.which("sed") is None, reason="needs sed")
def test_tokenized_bleu_is_sacremoses_then_sed_then_sacrebleu_without_tokenization(tmp_path):
    lines = "".join(line + "\n" for line in HYPOTHESES + REFERENCES)
    tokenized = run(sys.executable, "-m", "sacremoses", "-q", "-l", "de", "-j", "1", "tokenize", stdin=lines)
    split = run("sed", COMPOUND_RULE, stdin=tokenized).splitlines()
    hyps = write_lines(tmp_path / "hyp.tok.atat", split[: len(HYPOTHESES)])
    refs = write_lines(tmp_path / "ref.tok.atat", split[len(HYPOTHESES) :])
    assert "Max ##AT##-##AT## Planck ##AT##-##AT## Institut" in refs.read_text(encoding="utf-8")
    cli = sacrebleu_cli(refs, hyps, "--tokenize", "none", "--smooth-method", "none")
    score = tokenized_bleu(HYPOTHESES, REFERENCES)
    assert round(score, 6) == pytest.approx(cli["score"], abs=1e-6)
    assert score != pytest.approx(sacrebleu_score(HYPOTHESES, REFERENCES)[0], abs=0.01)


@pytest.mark.skipif(shutil.which("sed") is None, reason="needs sed")
def test_compound_splitting_is_the_sed_rule():
    lines = ["E-Mail-Adressen", "a-b-c-d", "x - y", "-a- b-", "Nord-Süd-Verbindung", "3-jährige", "a--b", "A-B C-D"]
    assert [split_compounds(line) for line in lines] == run("sed", COMPOUND_RULE, stdin="\n".join(lines)).splitlines()
    # Non-overlapping matches, left to right: a one-letter middle part is consumed by the first match.
    assert split_compounds("a-b-c") == "a ##AT##-##AT## b-c"
    assert split_compounds("Das Max-Planck-Institut .") == "Das Max ##AT##-##AT## Planck ##AT##-##AT## Institut ."


def test_perfect_hypotheses_score_100():
    assert sacrebleu_score(REFERENCES, REFERENCES)[0] == pytest.approx(100.0)
    assert tokenized_bleu(REFERENCES, REFERENCES) == pytest.approx(100.0)


def test_unaligned_inputs_are_refused():
    with pytest.raises(ValueError, match="one hypothesis per reference"):
        tokenized_bleu(HYPOTHESES[:-1], REFERENCES)


def test_bleu_from_summed_statistics_equals_the_corpus_score() -> None:
    """Statistics added over batches (and ranks) give exactly the corpus BLEU of both flavours."""
    from novograd.metrics.bleu import bleu_from_statistics, bleu_statistics, sacrebleu_score, tokenized_bleu

    hypotheses = ["Das ist ein Test.", "Die Katze sitzt auf der Matte-Decke.", "Guten Morgen", "ein zwei drei vier"]
    references = ["Das ist ein Test.", "Die Katze saß auf der Matte-Decke.", "Guten Abend", "eins zwei drei vier"]
    for tokenized, corpus in ((False, sacrebleu_score(hypotheses, references)[0]),
                              (True, tokenized_bleu(hypotheses, references))):
        halves = [bleu_statistics(hypotheses[i:i + 2], references[i:i + 2], tokenized) for i in (0, 2)]
        summed = [a + b for a, b in zip(*halves)]
        assert bleu_from_statistics(summed, tokenized) == pytest.approx(corpus, abs=1e-9)
        assert 0 < corpus < 100
