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


# ---------------------------------------------------------------- tokenizer.perl's rules, on a small corpus

# Expected outputs worked out by hand from tokenizer.perl's rules (-l de, default escaping): a word ending in a
# period keeps it when it is a non-breaking prefix of German (single letters, Roman numerals, abbreviations such
# as Nr or z.B, the ordinals 1-99), or holds a dot and a letter, or the next word starts lower-case; otherwise,
# and always for a sentence's last word, the period is split off. Lines 0-3 are where sacremoses (which keeps a
# last word that is a prefix) departs from the script.
PERL_RULE_CASES = [
    ("Der Läufer belegte Platz 3.", "Der Läufer belegte Platz 3 ."),
    ("Das kostet z.B.", "Das kostet z.B ."),
    ("Er kam aus den U.S.A.", "Er kam aus den U.S.A ."),
    ("Gemeint ist Art.", "Gemeint ist Art ."),
    ("Am 3. Mai kam er.", "Am 3. Mai kam er ."),
    ("Siehe Nr. 5 und Dr. Müller.", "Siehe Nr. 5 und Dr. Müller ."),
    ("Er kam an. Nr. 3 folgt.", "Er kam an . Nr. 3 folgt ."),
    ("Das Haus. der Baum", "Das Haus. der Baum"),
    ('Er sagte "Ja" & ging.', "Er sagte &quot; Ja &quot; &amp; ging ."),  # punctuation split, then escaped
    ("Die Nord-Süd-Verbindung, sagte er.", "Die Nord ##AT##-##AT## Süd ##AT##-##AT## Verbindung , sagte er ."),
]


def test_t2t_tokenization_follows_tokenizer_perl_where_sacremoses_departs():
    from sacremoses import MosesTokenizer

    from novograd.metrics.bleu import bleu_tokenizer

    tokenize = bleu_tokenizer("t2t")
    assert [tokenize(line) for line, _ in PERL_RULE_CASES] == [expected for _, expected in PERL_RULE_CASES]
    plain = MosesTokenizer(lang="de")  # negative control: the unmodified port keeps these last words whole
    departs = [i for i, (line, expected) in enumerate(PERL_RULE_CASES)
               if split_compounds(plain.tokenize(line, return_str=True, escape=True)) != expected]
    assert departs == [0, 1, 2, 3]


def test_fairseq_procedure_normalises_punctuation_and_splits_dashes_aggressively():
    from novograd.metrics.bleu import bleu_tokenizer, remove_non_printing_characters

    fairseq, t2t = bleu_tokenizer("fairseq"), bleu_tokenizer("t2t")
    line = "Die rich-text Version \u201eist\u201c gut\u200b, Platz 3."
    assert t2t(line) == "Die rich ##AT##-##AT## text Version \u201e ist \u201c gut \u200b , Platz 3 ."
    # normalize-punctuation.perl turns the German quotes into ", the zero-width space (category Cf) becomes a
    # space, -a splits the hyphen as @-@, whose "@-@" the compound rule then splits once more.
    assert fairseq(line) == "Die rich @ ##AT##-##AT## @ text Version &quot; ist &quot; gut , Platz 3 ."
    assert remove_non_printing_characters("a\u200bb\x07c\u00e9") == "a b c\u00e9"
    scores = {p: tokenized_bleu(HYPOTHESES, REFERENCES, procedure=p) for p in ("t2t", "fairseq")}
    assert scores["t2t"] != pytest.approx(scores["fairseq"], abs=0.01)  # the procedures differ on this corpus
    with pytest.raises(ValueError, match="t2t"):
        tokenized_bleu(HYPOTHESES, REFERENCES, procedure="moses")


@pytest.mark.skipif(shutil.which("perl") is None, reason="needs perl")
def test_compound_splitting_is_the_scripts_perl_rule():
    """The rule as both scripts run it: perl -ple 's{(\\S)-(\\S)}{$1 ##AT##-##AT## $2}g'."""
    lines = ["E-Mail-Adressen", "a-b-c-d", "x - y", "-a- b-", "Nord-Süd-Verbindung", "3-jährige", "a--b", "@-@"]
    perl = run("perl", "-CSD", "-ple", r"s{(\S)-(\S)}{$1 ##AT##-##AT## $2}g", stdin="\n".join(lines) + "\n")
    assert [split_compounds(line) for line in lines] == perl.splitlines()
