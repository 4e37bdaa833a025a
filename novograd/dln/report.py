"""summary.json and summary.md: the paper's claim beside the observed verdict for every run, and the maps' fractions."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from novograd.dln.optimizers import DISPLAY_NAMES, OPTIMIZERS
from novograd.dln.study import HyperparameterMap, InitMap, Run
from novograd.dln.verdict import VERDICTS, VerdictCriteria


def _point(w) -> list[float]:
    return [float(x) for x in w]


def run_record(run: Run, init_map: InitMap | None) -> dict[str, Any]:
    """One row of `runs` in summary.json; `init_map` is the robustness map at the run's (lr, weight decay)."""
    claim = run.paper_claim
    grid_agreement = None
    if init_map is not None and claim != "unstated":
        grid_agreement = float((init_map.codes[run.optimizer] == VERDICTS.index(claim)).double().mean())
    return {
        "scenario": run.scenario.name,
        "optimizer": run.optimizer,
        "lr": run.scenario.lr,
        "weight_decay": run.scenario.weight_decay,
        "init": _point(run.scenario.init),
        "final": _point(run.final),
        "final_loss": run.final_loss,
        "flat_distance": run.flat_distance,
        "max_abs_weight": run.max_abs_weight,
        "verdict": run.verdict,
        "paper_claim": claim,
        # None where the paper says nothing, so that "reproduced" counts only the claims it makes.
        "reproduced": None if claim == "unstated" else claim == run.verdict,
        # The fraction of the grid of initial points (same lr, weight decay) from which the claim holds: whether
        # it is a property of the setting or of the initial point.
        "grid_agreement": grid_agreement,
    }


def build_summary(
    runs: list[Run], *, steps: int, betas: tuple[float, float], criteria: VerdictCriteria,
    init_maps: list[InitMap] | None, hp_map: HyperparameterMap | None,
) -> dict[str, Any]:
    """Everything summary.json holds."""
    maps_by_setting = {(m.lr, m.weight_decay): m for m in init_maps or []}
    records = [run_record(run, maps_by_setting.get((run.scenario.lr, run.scenario.weight_decay))) for run in runs]
    stated = [r for r in records if r["reproduced"] is not None]
    summary: dict[str, Any] = {
        "steps": steps,
        "betas": list(betas),
        "verdict_criteria": asdict(criteria),
        "runs": records,
        "claims": {"stated": len(stated), "reproduced": sum(r["reproduced"] for r in stated)},
        "flattest": {
            scenario: min((r for r in records if r["scenario"] == scenario and r["verdict"] == "converged"),
                          key=lambda r: r["flat_distance"], default={"optimizer": None})["optimizer"]
            for scenario in dict.fromkeys(r["scenario"] for r in records)
        },
    }
    if init_maps is not None:
        summary["robustness_init_grid"] = [
            {
                "lr": m.lr,
                "weight_decay": m.weight_decay,
                "scenarios": list(m.scenarios),
                "points": m.codes[OPTIMIZERS[0]].numel(),
                "half_width": m.half_width,
                "fractions": {o: {v: float((m.codes[o] == i).double().mean()) for i, v in enumerate(VERDICTS)}
                              for o in OPTIMIZERS},
            }
            for m in init_maps
        ]
    if hp_map is not None:
        summary["robustness_hyperparameter_grid"] = {
            "lr": [float(x) for x in hp_map.lrs],
            "weight_decay": [float(x) for x in hp_map.weight_decays],
            "init_points": len(hp_map.init_axis) ** 2,
            "mean_converged_fraction": {o: float(hp_map.fraction[o].mean()) for o in OPTIMIZERS},
            "converged_fraction": {o: hp_map.fraction[o].tolist() for o in OPTIMIZERS},
        }
    return summary


def _reproduced_cell(record: dict[str, Any]) -> str:
    if record["reproduced"] is None:
        return "-"
    if record["reproduced"]:
        return "**yes**"
    return f"**no**: {record['verdict']}, not {record['paper_claim']}"


def summary_markdown(summary: dict[str, Any]) -> str:
    """The tables of summary.md (also printed by `make dln`)."""
    claims = summary["claims"]
    lines = [
        "| scenario | optimizer | lr | wd | init | final (w1, w2) | final loss | distance to flat | max abs w "
        "| paper claim | observed | reproduced | claim holds on the init grid |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["runs"]:
        final = "({:.3g}, {:.3g})".format(*r["final"])
        init = "({:g}, {:g})".format(*r["init"])
        lines.append(
            f"| {r['scenario']} | {DISPLAY_NAMES[r['optimizer']]} | {r['lr']:g} | {r['weight_decay']:g} | {init} "
            f"| {final} | {r['final_loss']:.2e} | {r['flat_distance']:.3g} | {r['max_abs_weight']:.3g} "
            f"| {r['paper_claim']} | {r['verdict']} | {_reproduced_cell(r)} "
            f"| {'-' if r['grid_agreement'] is None else format(r['grid_agreement'], '.0%')} |"
        )
    lines.append("")
    if claims["stated"]:
        lines.append(f"**{claims['reproduced']} of the {claims['stated']} verdicts the paper states reproduced.**")
        if "robustness_init_grid" in summary:
            lines.append("The last column is the fraction of the grid of initial points below (same lr and wd) from "
                         "which the paper's verdict holds.")
        lines.append("")
    flattest = ", ".join(f"{s}: {DISPLAY_NAMES.get(o, 'none converged')}" for s, o in summary["flattest"].items())
    lines += [f"Flattest converged end point (nearest (1, 1) or (-1, -1)) per scenario: {flattest}.", ""]
    if "robustness_init_grid" in summary:
        grids = summary["robustness_init_grid"]
        first = grids[0]
        lines += [
            f"Fraction of a grid of {first['points']} initial points in [-{first['half_width']:g}, "
            f"{first['half_width']:g}]^2 that converge (oscillating / stalled / diverged in brackets):",
            "",
            "| optimizer | " + " | ".join(f"lr {g['lr']:g}, wd {g['weight_decay']:g} ({', '.join(g['scenarios'])})"
                                        for g in grids) + " |",
            "|---|" + "---|" * len(grids),
        ]
        for o in OPTIMIZERS:
            cells = []
            for g in grids:
                f = g["fractions"][o]
                cells.append(f"**{f['converged']:.0%}** ({f['oscillating']:.0%} / {f['stalled']:.0%} / "
                             f"{f['diverged']:.0%})")
            lines.append(f"| {DISPLAY_NAMES[o]} | " + " | ".join(cells) + " |")
        lines.append("")
    if "robustness_hyperparameter_grid" in summary:
        hp = summary["robustness_hyperparameter_grid"]
        lines += [
            f"Mean fraction converged over {len(hp['lr'])} learning rates in [{hp['lr'][0]:g}, {hp['lr'][-1]:g}] "
            f"(log) x {len(hp['weight_decay'])} weight decays in [{hp['weight_decay'][0]:g}, "
            f"{hp['weight_decay'][-1]:g}] x {hp['init_points']} initial points: "
            + ", ".join(f"{DISPLAY_NAMES[o]} {hp['mean_converged_fraction'][o]:.0%}" for o in OPTIMIZERS) + ".",
            "",
        ]
    return "\n".join(lines)


def write_summary(summary: dict[str, Any], output_dir: Path) -> None:
    """summary.json and summary.md in output_dir."""
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    title = "# Deep linear network study (paper Section 4, Appendix A)\n\n"
    (output_dir / "summary.md").write_text(title + summary_markdown(summary))
