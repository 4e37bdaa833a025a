"""The paper's claims judged from your runs: `results/paper/claims.yaml` read, each claim compared on the runs that
reproduce its rows, and written to `results/tables/claims.md` with one summary line for the terminal.

A claim relates a row to other rows (or to results the paper quotes) on one or more metrics; each relation on each
metric is a `Comparison` of two `Side`s (the mean, spread and count of a row's runs, or a quoted number):
- `better_than` / `worse_than`: the difference, oriented so that positive is better, beyond the margin: the
  metric's tolerance, or `spread_factor` standard errors of the difference when the runs' spread is larger;
- `on_par_with`: the row is not worse than the other by more than the tolerance;
- `below` / `above`: the row's mean on that side of a bound.
A claim holds when every comparison holds, does not hold when one does not, and is "not enough runs" otherwise
(a row without a finished run). A diverged run counts against its row: a row with one is judged as the worst
possible value (it cannot win a comparison, and loses every one against a row that trained), and the verdict
says so. The paper's own numbers are judged by the same rules beside your runs: where they do not support a claim
at the tolerance, that is the paper's claim, not your runs, falling short.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from novograd.report.rows import RowRuns, Stat, diverged_steps, divergence_note, metric_stat, summary_value
from novograd.report.sources import Run

PAPER_CLAIMS = Path(__file__).resolve().parents[2] / "results" / "paper" / "claims.yaml"
HOLDS, FAILS, NO_RUNS = "holds", "does not hold", "not enough runs"
RELATIONS = ("better_than", "worse_than", "on_par_with", "below", "above")


def load_claims(path: Path = PAPER_CLAIMS, tables: dict[str, Any] | None = None) -> dict[str, Any]:
    """The claims file; with `tables`, every claim is checked to name a known table, metrics with a tolerance and
    a goal, and rows that are its table's experiments or quoted results (an error says which claim is wrong)."""
    spec: dict[str, Any] = OmegaConf.to_container(OmegaConf.load(path))  # type: ignore[assignment]
    for claim in spec["claims"] if tables is not None else []:
        where = f"{path}: claim {claim.get('id')!r}"
        if claim.get("table") not in tables:
            raise ValueError(f"{where} names table {claim.get('table')!r}; the tables are {', '.join(tables)}")
        unknown = [m for m in claim["metrics"] if m not in spec["tolerances"] or m not in spec["goals"]]
        relations = [r for r in RELATIONS if r in claim]
        if unknown or len(relations) != 1:
            raise ValueError(f"{where}: give each metric a tolerance and a goal ({unknown} lack one) and exactly "
                             f"one relation of {RELATIONS} (it has {relations})")
        names = claim["rows"] if relations[0] in ("below", "above") else [claim["row"], *claim[relations[0]]]
        table_rows = tables[claim["table"]]["rows"]
        known = {row.get("experiment") for row in table_rows} | {row["label"] for row in table_rows
                                                                   if "experiment" not in row}
        if missing := [name for name in names if name not in known]:
            raise ValueError(f"{where} names {missing}, which are neither experiments nor quoted results of "
                             f"{claim['table']}")
    return spec


# ------------------------------------------------------------------------------------------------- the values
def train_val_gap(run: Run) -> float | None:
    """The last validation perplexity minus the training perplexity (exp of the last logged training loss at or
    before that evaluation): how far apart Figure 4's two curves end."""
    evaluations = run.history("eval/val_ppl")
    if not evaluations:
        return None
    last = max(evaluations, key=lambda record: record["step"])
    losses = [r for r in run.history("train/loss") if r["step"] <= last["step"]]
    if not losses:
        return None
    return last["eval/val_ppl"] - math.exp(max(losses, key=lambda record: record["step"])["train/loss"])


DERIVED = {"train_val_gap": train_val_gap}


def run_value(run: Run, metric: str) -> float | None:
    """A run's final value of a paper column (its summary's), or of a derived metric (`DERIVED`)."""
    return DERIVED[metric](run) if metric in DERIVED else summary_value(run, metric)


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a row's runs on one metric (or a quoted number: `quoted`)."""

    label: str
    stat: Stat | None  # None: no finished run with the metric; a quoted number is one run's, without a spread
    diverged: tuple[int, ...] = ()  # the step each diverged run of the row diverged at
    runs: int = 0  # every run of the row, diverged ones included
    quoted: bool = False

    @property
    def mean(self) -> float | None:
        """The runs' mean (diverged runs left out), or the quoted number; None without either."""
        return None if self.stat is None else self.stat.mean

    def value(self, goal: str) -> float | None:
        """The value judged: the worst possible one when a run diverged, else the mean."""
        if self.diverged:
            return -math.inf if goal == "max" else math.inf
        return self.mean

    def __str__(self) -> str:
        if self.diverged:
            return f"{self.label}: {divergence_note(self.diverged, self.runs)}"
        if self.stat is None:
            return f"{self.label}: no runs"
        if self.quoted:
            return f"{self.label}: {self.stat.mean:.2f} (quoted)"
        return f"{self.label}: {self.stat.with_count()}"


def row_side(label: str, runs: list[Run], metric: str) -> Side:
    """The statistics of `runs` (a row's reproducing runs) on `metric`; diverged runs are in no mean."""
    return Side(label, metric_stat(runs, metric, run_value), diverged_steps(runs), len(runs))


@dataclass(frozen=True)
class Comparison:
    """One relation of a claim on one metric, and its verdict."""

    metric: str
    relation: str
    left: Side
    right: Side | None  # None: a bound
    bound: float | None
    margin: float
    verdict: str

    def __str__(self) -> str:
        if self.right is None:
            return f"{self.metric}, {self.relation} {self.bound:g}: {self.left} → {self.verdict}"
        text = f"{self.metric}, {self.relation.replace('_', ' ')}: {self.left}; against {self.right}"
        if self.left.mean is not None and self.right.mean is not None and not (self.left.diverged or
                                                                                self.right.diverged):
            text += f": difference {self.left.mean - self.right.mean:+.2f}, margin {self.margin:.2f}"
        return f"{text} → {self.verdict}"


def compare(metric: str, relation: str, left: Side, right: Side | None, bound: float | None, goal: str,
            tolerance: float, spread_factor: float) -> Comparison:
    """The verdict of `left <relation> right` (or `left <relation> bound`) on `metric` (module docstring)."""
    if relation in ("below", "above"):
        value = left.value(goal)
        verdict = NO_RUNS if value is None else HOLDS if (value < bound if relation == "below" else value > bound) \
            else FAILS  # type: ignore[operator]
        return Comparison(metric, relation, left, None, bound, 0.0, verdict)
    assert right is not None
    known = [s.stat.std**2 / s.stat.count for s in (left, right)
             if s.stat is not None and s.stat.std is not None and not s.diverged]
    margin = max(tolerance, spread_factor * math.sqrt(sum(known)))
    lvalue, rvalue = left.value(goal), right.value(goal)
    if left.diverged and (right.diverged or relation != "worse_than"):
        verdict = FAILS  # the row the claim favours diverged (or both did: nothing to compare)
    elif lvalue is None or rvalue is None:
        verdict = NO_RUNS
    else:
        better = (lvalue - rvalue) if goal == "max" else (rvalue - lvalue)  # > 0: left is better
        holds = {"better_than": better > margin, "worse_than": better < -margin,
                 "on_par_with": better >= -tolerance}[relation]
        verdict = HOLDS if holds else FAILS
    return Comparison(metric, relation, left, right, None, margin if relation != "on_par_with" else tolerance, verdict)


# ------------------------------------------------------------------------------------------------- the claims
@dataclass(frozen=True)
class Verdict:
    """A claim, its comparisons in your runs and its verdicts in your runs and in the paper's numbers."""

    claim: dict[str, Any]
    comparisons: list[Comparison]
    verdict: str
    paper_verdict: str | None  # None: the paper gives no number for a metric of the claim (a figure)

    @property
    def diverged(self) -> bool:
        return any(c.left.diverged or (c.right is not None and c.right.diverged) for c in self.comparisons)


def combined(verdicts: list[str]) -> str:
    """A claim's verdict from those of its comparisons."""
    return FAILS if FAILS in verdicts else NO_RUNS if NO_RUNS in verdicts else HOLDS


def judge(claim: dict[str, Any], spec: dict[str, Any], table: dict[str, Any], rows: dict[str, RowRuns]) -> Verdict:
    """One claim judged from the runs sorted by row (`novograd.report.rows.sort_runs`) and from the paper."""
    relation = next(r for r in RELATIONS if r in claim)
    by_name = {row.get("experiment", row["label"]): row for row in table["rows"]}

    def sides(name: str, metric: str) -> tuple[Side, Side | None]:
        row = by_name[name]
        paper = row["paper"].get(metric)
        paper_side = None if paper is None else Side(row["label"], Stat(paper, None, 1), quoted=True)
        if "experiment" not in row:  # a quoted result is the same number in your report and in the paper's
            return paper_side or Side(row["label"], None, quoted=True), paper_side
        row_runs = rows.get(name)
        return row_side(row["label"], row_runs.reproducing if row_runs else [], metric), paper_side

    pairs: list[tuple[str, str, str | None, float | None]] = (
        [(name, metric, None, claim[relation]) for metric in claim["metrics"] for name in claim["rows"]]
        if relation in ("below", "above") else
        [(claim["row"], metric, other, None) for metric in claim["metrics"] for other in claim[relation]]
    )
    ours, theirs = [], []
    for left_name, metric, right_name, bound in pairs:
        settings = (spec["goals"][metric], spec["tolerances"][metric], spec["spread_factor"])
        left, paper_left = sides(left_name, metric)
        right, paper_right = sides(right_name, metric) if right_name else (None, None)
        ours.append(compare(metric, relation, left, right, bound, *settings))
        if paper_left is not None and (right_name is None or paper_right is not None):
            theirs.append(compare(metric, relation, paper_left, paper_right, bound, *settings).verdict)
        else:
            theirs.append(None)
    paper_verdict = None if None in theirs else combined(theirs)  # type: ignore[arg-type]
    return Verdict(claim, ours, combined([c.verdict for c in ours]), paper_verdict)


def judge_all(spec: dict[str, Any], tables: dict[str, Any], rows: dict[str, RowRuns]) -> list[Verdict]:
    return [judge(claim, spec, tables[claim["table"]], rows) for claim in spec["claims"]]


def summary_line(verdicts: list[Verdict]) -> str:
    """'k of n claims hold in your runs, f do not, m not yet run' (and how many were judged with a diverged run)."""
    counts = {v: sum(verdict.verdict == v for verdict in verdicts) for v in (HOLDS, FAILS, NO_RUNS)}
    line = (f"{counts[HOLDS]} of {len(verdicts)} claims hold in your runs, {counts[FAILS]} do not, "
            f"{counts[NO_RUNS]} not yet run")
    diverged = sum(verdict.diverged for verdict in verdicts)
    return line + (f" ({diverged} judged with a diverged run)." if diverged else ".")


def render_claims(spec: dict[str, Any], verdicts: list[Verdict]) -> str:
    """`claims.md`: the summary, a table of verdicts (yours beside the paper's numbers'), then each claim's
    comparisons."""
    tolerances = ", ".join(f"{metric} {value:g}" for metric, value in spec["tolerances"].items())
    out = [
        "# The paper's claims in your runs", "", summary_line(verdicts), "",
        f"Tolerances (chosen before any run, docs/claims.md): {tolerances}. A claim that one row is better or worse "
        f"needs a difference beyond the tolerance and beyond {spec['spread_factor']:g} standard errors of the "
        "difference where the runs give a spread; a row with a diverged run is judged as the worst possible value.",
        "", "| claim | source | your runs | the paper's numbers |", "|---|---|---|---|",
    ]
    for verdict in verdicts:
        claim = verdict.claim
        out.append(f"| {claim['id']}: {claim['claim']} | {claim['source']} | {verdict.verdict}"
                   f"{' (a run diverged)' if verdict.diverged else ''} | {verdict.paper_verdict or '- (no number)'} |")
    for verdict in verdicts:
        claim = verdict.claim
        out += ["", f"## {claim['id']}: {verdict.verdict}", "", f"{claim['claim']} ({claim['source']})", ""]
        out += [f"- {comparison}" for comparison in verdict.comparisons]
    return "\n".join(out) + "\n"


def write_claims(spec: dict[str, Any], tables: dict[str, Any], rows: dict[str, RowRuns], out_dir: Path
                 ) -> list[Verdict]:
    """Judge every claim and write `out_dir/claims.md`; returns the verdicts."""
    verdicts = judge_all(spec, tables, rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "claims.md").write_text(render_claims(spec, verdicts))
    return verdicts
