"""The repository stands alone: no pointer outside it, the documents the README names exist, every paper row's
hyperparameter sources are written down, and the README quotes benchmark ratios rather than one machine's speed."""

from __future__ import annotations

import os
import re
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
OUTSIDE = ("../" + "shared", "/work/" + "shared")  # spelled in two parts so this file does not match itself
TEXT_SUFFIXES = {".md", ".py", ".yaml", ".yml", ".toml", ".sh", ".txt", ""}


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
    assert {"docs/hyperparameters.md", "docs/implementations.md", "docs/preemption.md"} <= named
    assert [name for name in sorted(named) if not (REPO / name).is_file()] == []


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


def test_readme_quotes_the_engine_benchmark_as_a_ratio_with_its_machine() -> None:
    readme = (REPO / "README.md").read_text()
    assert not re.search(r"\d+(\.\d+)? (against|vs\.?) \d+(\.\d+)? steps/s", readme)
    overhead = readme[readme.index("**Engine overhead**"):][:600]
    assert re.search(r"0\.\d+ of the\s+bare loop", overhead) and "2-core" in overhead
