"""Performance profiles of the optimizers across the paper's workloads, as MLCommons AlgoPerf defines them
(Dahl et al., 2023, "Benchmarking Neural Network Training Algorithms").

A workload is a table that compares optimizers (Tables 1, 4, 6 and 7); an optimizer's time on it is the fastest
time-to-target among its rows there (`novograd/report/targets.py`: the median over a row's runs; a miss, a
divergence included, is infinite). Its performance ratio on a workload is that time over the fastest optimizer's
time on the workload; its profile rho(tau) is the fraction of workloads whose ratio is at most tau, for tau from 1
to `TAU_MAX` = 4; its score is the area under the profile over [1, 4] divided by 3, so 1 means fastest everywhere
and 0 never within 4x of the fastest. The area of the step function is computed exactly: each workload with ratio
r <= 4 contributes (4 - r) / 3. Workloads no optimizer has a run of are left out. The same is done with
steps-to-target, which needs no wall clock and compares the rows of a table at their equal batch sizes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from novograd.engine.logger import optimizer_name
from novograd.report.matching import row_config
from novograd.report.targets import TimeLine

TAU_MAX = 4.0
MEASURES = {"seconds": "training time to target", "steps": "steps to target"}


def performance_ratios(times: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """`times[workload][optimizer]` (inf for a miss; an optimizer absent from a workload misses it) as ratios to
    each workload's fastest time; workloads that every optimizer missed are left out."""
    optimizers = sorted({name for per_workload in times.values() for name in per_workload})
    ratios: dict[str, dict[str, float]] = {name: {} for name in optimizers}
    for workload, per_workload in times.items():
        best = min(per_workload.values(), default=math.inf)
        if math.isinf(best):
            continue
        for name in optimizers:
            ratios[name][workload] = per_workload.get(name, math.inf) / best
    return ratios


def profile(ratios: dict[str, float], taus: np.ndarray) -> np.ndarray:
    """rho(tau): the fraction of workloads with a ratio at most tau."""
    values = np.array(list(ratios.values()))
    return (values[None, :] <= taus[:, None]).mean(axis=1)


def score(ratios: dict[str, float], tau_max: float = TAU_MAX) -> float:
    """The area under rho over [1, tau_max], normalised by tau_max - 1 (exact for the step function)."""
    return sum(max(0.0, tau_max - ratio) for ratio in ratios.values()) / ((tau_max - 1.0) * len(ratios))


def workload_times(tables: dict[str, Any], lines: list[TimeLine], measure: str) -> dict[str, dict[str, float]]:
    """Per optimizer-comparison table, each optimizer's fastest row median of `measure` ("seconds" or "steps") among
    the rows' times to target (`lines`); rows whose runs did not log their training time are left out of
    "seconds"."""
    optimizers = {name: {row["experiment"]: optimizer_name(row_config(row["experiment"])["optimizer"])
                         for row in table["rows"] if "experiment" in row} for name, table in tables.items()}
    times: dict[str, dict[str, float]] = {}
    for line in lines:
        table_optimizers = optimizers[line.table]
        value = getattr(line.times, measure)
        if len(set(table_optimizers.values())) < 2 or value is None:
            continue
        per_optimizer = times.setdefault(line.table, {})
        optimizer = table_optimizers[line.experiment]
        per_optimizer[optimizer] = min(value, per_optimizer.get(optimizer, math.inf))
    return times


def write_profiles(tables: dict[str, Any], lines: list[TimeLine], out_dir: Path) -> tuple[str, Path | None]:
    """The profiles of the rows' times to target (`lines`) and their scores as Markdown, and their figure in
    `out_dir/performance_profiles.png` (None when no workload has a run that reached its target)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    taus = np.linspace(1.0, TAU_MAX, 301)
    out, drawn = ["## Performance profiles (AlgoPerf)", ""], False
    for index, (measure, title) in enumerate(MEASURES.items()):
        ratios = performance_ratios(workload_times(tables, lines, measure))
        ax = figure.add_subplot(1, len(MEASURES), index + 1)
        workloads = sorted({w for per in ratios.values() for w in per})
        if not workloads:
            out.append(f"- {title}: no table has runs that reached its target yet.")
            continue
        drawn = True
        scores = ", ".join(f"{name} {score(r):.3f}" for name, r in sorted(ratios.items()))
        out.append(f"- {title}, over {', '.join(workloads)}: score {scores}")
        for name, per_workload in sorted(ratios.items()):
            ax.step(taus, profile(per_workload, taus), where="post", label=f"{name} ({score(per_workload):.3f})")
        ax.set_xlabel("tau (ratio to the fastest optimizer)")
        ax.set_ylabel("fraction of workloads")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    if not drawn:
        return "\n".join(out) + "\n", None
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "performance_profiles.png"
    figure.savefig(path, dpi=120)
    return "\n".join(out) + "\n", path
