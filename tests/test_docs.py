"""The repository stands alone: no pointer outside it, the documents the README names exist, every relative link of
the README and docs/ resolves, the README stays short, every paper row's hyperparameter sources are written down, and
the benchmarks are quoted as ratios rather than one machine's speed."""

from __future__ import annotations

import os
import re
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
OUTSIDE = ("../" + "shared", "/work/" + "shared")  # spelled in two parts so this file does not match itself
TEXT_SUFFIXES = {".md", ".py", ".yaml", ".yml", ".toml", ".sh", ".txt", ""}
README_MAX_LINES = 300  # a README read in minutes; depth goes to docs/
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
FENCE = re.compile(r"^\s*(```|~~~)")


def documents() -> list[Path]:
    """The README and every page under docs/: the documents whose links must resolve."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `# comment` in a bash block is not a heading)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(re.sub(r"`[^`]*\]\([^`]*`", "", line))  # `[text](path)` in code is no link
    return lines


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for the headings of a markdown text: lower case, punctuation but `-` and `_` dropped, spaces
    as `-`, a repeated anchor numbered `-1`, `-2`, ..."""
    anchors: set[str] = set()
    for line in prose_lines(text):
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            anchor = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
            numbered, n = anchor, 0
            while numbered in anchors:
                n += 1
                numbered = f"{anchor}-{n}"
            anchors.add(numbered)
    return anchors


def broken_links(document: Path) -> list[str]:
    """Every relative link of a markdown file whose file, or heading in that file, does not exist."""
    broken = []
    for line in prose_lines(document.read_text()):
        for target in LINK.findall(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not this repository's
                continue
            path, _, anchor = target.partition("#")
            resolved = (document.parent / path).resolve() if path else document
            if not resolved.exists():
                broken.append(f"{document.name}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved.read_text()):
                broken.append(f"{document.name}: {target} (no such heading)")
    return broken


def repository_text_files() -> list[Path]:
    """The repository's own text files: not the environment, runs, data or caches (pruned, never walked)."""
    skip = {".git", ".venv", "runs", "outputs", "datasets", "wandb", "__pycache__", ".pytest_cache"}
    files = []
    for directory, subdirectories, names in os.walk(REPO):
        subdirectories[:] = [d for d in subdirectories if d not in skip]
        files += [Path(directory, n) for n in names if Path(n).suffix in TEXT_SUFFIXES]
    return files


def test_nothing_points_outside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(REPO)}: {marker}"
        for path in repository_text_files()
        for marker in OUTSIDE
        if marker in path.read_text(errors="ignore")
    ]
    assert offenders == []


def test_documents_named_by_the_readme_and_configs_exist() -> None:
    readme = (REPO / "README.md").read_text()
    named = set(re.findall(r"docs/[\w-]+\.md", readme))
    for config in (REPO / "configs").rglob("*.yaml"):
        named |= set(re.findall(r"docs/[\w-]+\.md", config.read_text()))
    assert {"docs/hyperparameters.md", "docs/implementations.md", "docs/preemption.md", "docs/runs.md"} <= named
    assert [name for name in sorted(named) if not (REPO / name).is_file()] == []


def test_the_readme_links_every_page_of_docs() -> None:
    linked = {target.partition("#")[0] for target in LINK.findall((REPO / "README.md").read_text())}
    pages = {f"docs/{page.name}" for page in (REPO / "docs").glob("*.md")}
    assert len(pages) >= 17 and sorted(pages - linked) == []


def test_every_relative_link_of_the_readme_and_docs_resolves() -> None:
    assert [problem for document in documents() for problem in broken_links(document)] == []


def test_a_broken_link_or_heading_is_reported(tmp_path: Path) -> None:
    """The negative control of the link check: a missing file and a missing heading are reported, good links not."""
    (tmp_path / "other.md").write_text("# Other page\n\n## Runs: output, resume\n\n```bash\n# not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[fine](other.md#runs-output-resume), [self](#page), [web](https://example.org/x.md#y)\n"
        "[gone](missing.md), [no heading](other.md#not-a-heading), ![figure](figures/none.png)\n"
        "`[code](not-a-link.md)` is code\n"
    )
    assert broken_links(page) == [
        "page.md: missing.md (no such file)",
        "page.md: other.md#not-a-heading (no such heading)",
        "page.md: figures/none.png (no such file)",
    ]


def test_the_readme_is_read_in_minutes() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert 50 < len(lines) <= README_MAX_LINES


def test_every_paper_row_has_its_sources_written_down() -> None:
    tables = OmegaConf.to_container(OmegaConf.load(REPO / "results" / "paper" / "tables.yaml"))
    sources = (REPO / "docs" / "hyperparameters.md").read_text()
    rows = {row["experiment"] for table in tables.values() for row in table["rows"] if "experiment" in row}
    assert len(rows) == 26
    lines = sources.splitlines()

    def written_down(row: str) -> bool:  # `table1/sgd_100ep`, or `_200ep` on a line that names `table1/sgd_...`
        if f"`{row}`" in sources:
            return True
        prefix, _, suffix = row.rpartition("_")
        return bool(prefix) and any(f"`{prefix}_" in line and f"`_{suffix}`" in line for line in lines)

    assert [row for row in sorted(rows) if not written_down(row)] == []
    assert "Deep linear network" in sources


def test_the_engine_benchmark_is_quoted_as_a_ratio_with_its_machine() -> None:
    for document in documents():
        assert not re.search(r"\d+(\.\d+)? (against|vs\.?) \d+(\.\d+)? steps/s", document.read_text()), document.name
    benchmarks = (REPO / "docs" / "benchmarks.md").read_text()
    overhead = benchmarks[benchmarks.index("## Engine overhead"):][:700]
    assert re.search(r"0\.\d+ of the\s+bare loop", overhead) and "2-core" in overhead
