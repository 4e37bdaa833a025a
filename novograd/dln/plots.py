"""Figures of the study: one per scenario in the style of the paper's Figures 6-9, and the robustness maps."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from novograd.dln.optimizers import DISPLAY_NAMES, OPTIMIZERS
from novograd.dln.problem import FLAT_MINIMA
from novograd.dln.verdict import VERDICTS

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from novograd.dln.study import HyperparameterMap, InitMap, Run

COLORS = {"sgd": "#1f77b4", "adam": "#d62728", "adamw": "#ff7f0e", "novograd": "#2ca02c"}
VERDICT_COLORS = {"converged": "#4daf4a", "oscillating": "#ffb000", "stalled": "#9e9e9e", "diverged": "#c0392b"}


def _pyplot():
    """matplotlib with a file-only backend, imported when a figure is drawn (it costs ~0.5 s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw_landscape(ax: Axes, lims: tuple[float, float, float, float], with_contours: bool = True) -> None:
    """Contours of log10 of the loss, the hyperbola of minima w1 w2 = 1 and the flat minima (1, 1), (-1, -1)."""
    x0, x1, y0, y1 = lims
    if with_contours:
        w1, w2 = np.meshgrid(np.linspace(x0, x1, 240), np.linspace(y0, y1, 240))
        log_loss = np.log10((w1 * w2 - 1.0) ** 2 + 1e-4)
        ax.contourf(w1, w2, log_loss, levels=24, cmap="Blues_r", alpha=0.55)
        ax.contour(w1, w2, log_loss, levels=12, colors="white", linewidths=0.4, alpha=0.7)
    for sign in (1.0, -1.0):  # the two branches of w2 = 1 / w1 inside the view
        w1 = sign * np.geomspace(max(1.0 / max(abs(y0), abs(y1)), 1e-3), max(abs(x0), abs(x1)), 400)
        ax.plot(w1, 1.0 / w1, color="black", linestyle="--", linewidth=1.0)
    ax.plot(*zip(*FLAT_MINIMA), linestyle="none", marker="*", markersize=11, color="gold", markeredgecolor="black")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("$w_1$")
    ax.set_ylabel("$w_2$")


def _square_around(points: np.ndarray, min_half_width: float, pad: float) -> tuple[float, float, float, float]:
    """A square view containing `points` (M, 2) with some padding."""
    low, high = points.min(axis=0), points.max(axis=0)
    centre = (low + high) / 2
    half = max((high - low).max() / 2 * (1 + pad), min_half_width)
    return centre[0] - half, centre[0] + half, centre[1] - half, centre[1] + half


def _draw_zoom(ax: Axes, runs: list[Run], trajectories: dict[str, np.ndarray], bound: float) -> None:
    """The last 100 steps near the flat minimum that most runs end next to; runs that end elsewhere are named."""
    ends = {run.optimizer: trajectories[run.optimizer][-1] for run in runs}
    ends = {o: e for o, e in ends.items() if np.isfinite(e).all() and (np.abs(e) <= bound).all()}
    if not ends:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no run ends inside the box", ha="center", va="center", transform=ax.transAxes)
        return
    minima = np.array(FLAT_MINIMA)
    nearest = {o: int(np.linalg.norm(minima - e, axis=1).argmin()) for o, e in ends.items()}
    cluster = max(set(nearest.values()), key=list(nearest.values()).count)
    # Runs that end on the other branch, or far along this one, would stretch the zoom into a second overview.
    shown = {o: e for o, e in ends.items() if nearest[o] == cluster and np.linalg.norm(e - minima[cluster]) < 1.0}
    view = _square_around(np.array([*shown.values(), minima[cluster]]), min_half_width=0.15, pad=0.6)
    _draw_landscape(ax, view)
    for run in runs:
        tail = trajectories[run.optimizer][-100:]
        ax.plot(tail[:, 0], tail[:, 1], color=COLORS[run.optimizer], linewidth=1.0, marker=".", markersize=2)
        if run.optimizer in shown:
            ax.plot(*tail[-1], marker="o", markersize=8, color=COLORS[run.optimizer], markeredgecolor="black")
    elsewhere = [f"{DISPLAY_NAMES[o]} ends at ({e[0]:.2f}, {e[1]:.2f})" for o, e in ends.items() if o not in shown]
    if elsewhere:
        ax.text(0.02, 0.02, "\n".join(elsewhere), transform=ax.transAxes, fontsize=8, va="bottom",
                bbox=dict(facecolor="white", alpha=0.85, edgecolor="none"))
    ax.set_title("Zoom near the end points (last 100 steps)")


def plot_scenario(runs: list[Run], path: Path, bound: float) -> None:
    """Left: the whole trajectories over the loss landscape; right: a zoom on the end points."""
    plt = _pyplot()
    scenario = runs[0].scenario
    fig, (ax_full, ax_zoom) = plt.subplots(1, 2, figsize=(12, 5.6))

    trajectories = {run.optimizer: run.trajectory.numpy() for run in runs}
    # The view: at least the robustness maps' square, at most the verdicts' box, enough for what stays inside it.
    points = np.concatenate(list(trajectories.values()))
    inside = points[np.isfinite(points).all(axis=1) & (np.abs(points) <= bound).all(axis=1)]
    half = min(max(3.0, float(np.abs(inside).max(initial=0.0)) * 1.05), bound)
    _draw_landscape(ax_full, (-half, half, -half, half))
    for run in runs:
        t = trajectories[run.optimizer]
        label = f"{DISPLAY_NAMES[run.optimizer]}: {run.verdict} (loss {run.final_loss:.2g})"
        ax_full.plot(t[:, 0], t[:, 1], color=COLORS[run.optimizer], linewidth=1.2, label=label)
        if np.isfinite(t[-1]).all():
            ax_full.plot(*t[-1], marker="o", color=COLORS[run.optimizer], markeredgecolor="black")
    ax_full.plot(*scenario.init, marker="s", color="black", linestyle="none", label="initial point")
    ax_full.legend(loc="lower left", fontsize=8, framealpha=0.9)
    ax_full.set_title(f"Trajectories ({len(t) - 1} steps)")

    _draw_zoom(ax_zoom, runs, trajectories, bound)
    fig.suptitle(scenario.title or f"{scenario.name}: lr {scenario.lr}, wd {scenario.weight_decay}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_init_maps(
    maps: list[InitMap], path: Path, scenario_inits: dict[str, tuple[float, float]], steps: int
) -> None:
    """Rows: (lr, wd) settings; columns: optimizers; colour: the verdict from each initial point."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    cmap = ListedColormap([VERDICT_COLORS[v] for v in VERDICTS])
    fig, axes = plt.subplots(len(maps), len(OPTIMIZERS), figsize=(3.4 * len(OPTIMIZERS), 3.4 * len(maps) + 0.6),
                             squeeze=False)
    for row, init_map in zip(axes, maps):
        half = init_map.half_width
        for ax, optimizer in zip(row, OPTIMIZERS):
            codes = init_map.codes[optimizer].numpy()
            ax.imshow(codes, origin="lower", extent=(-half, half, -half, half), cmap=cmap, vmin=-0.5,
                      vmax=len(VERDICTS) - 0.5, interpolation="nearest")
            _draw_landscape(ax, (-half, half, -half, half), with_contours=False)
            for name in init_map.scenarios:
                ax.plot(*scenario_inits[name], marker="X", markersize=9, color="white", markeredgecolor="black")
            converged = float((codes == VERDICTS.index("converged")).mean())
            ax.set_title(f"{DISPLAY_NAMES[optimizer]}: {converged:.0%} converge", fontsize=10)
        row[0].set_ylabel(f"lr {init_map.lr:g}, wd {init_map.weight_decay:g}\n({', '.join(init_map.scenarios)})\n$w_2$")
    handles = [Patch(color=VERDICT_COLORS[v], label=v) for v in VERDICTS]
    handles.append(plt.Line2D([], [], marker="X", color="white", markeredgecolor="black", linestyle="none",
                              markersize=9, label="scenario's initial point"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle(f"Verdict from each initial point ({steps} steps)", y=0.995)
    fig.tight_layout(rect=(0, 0.04, 1, 0.99))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_hyperparameter_map(
    hp_map: HyperparameterMap, path: Path, scenario_points: dict[str, tuple[float, float]], steps: int
) -> None:
    """Per optimizer: the fraction of initial points that converge at each (lr, weight decay)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(OPTIMIZERS), figsize=(4.0 * len(OPTIMIZERS), 4.0), sharey=True)
    lrs, wds = hp_map.lrs.numpy(), hp_map.weight_decays.numpy()
    mesh = None
    for ax, optimizer in zip(axes, OPTIMIZERS):
        fraction = hp_map.fraction[optimizer].numpy()
        mesh = ax.pcolormesh(lrs, wds, fraction, cmap="viridis", vmin=0.0, vmax=1.0, shading="nearest")
        ax.set_xscale("log")
        names_at: dict[tuple[float, float], list[str]] = {}
        for name, point in scenario_points.items():
            names_at.setdefault(point, []).append(name)
        for i, ((lr, wd), names) in enumerate(names_at.items()):
            ax.plot(lr, wd, marker="o", markersize=6, color="white", markeredgecolor="black")
            # Alternate above and below, so that neighbouring settings' names do not overlap.
            ax.annotate(", ".join(names), (lr, wd), textcoords="offset points", xytext=(4, 5 if i % 2 == 0 else -11),
                        fontsize=7, color="white")
        ax.set_title(f"{DISPLAY_NAMES[optimizer]}: {fraction.mean():.0%} on average", fontsize=10)
        ax.set_xlabel("learning rate")
    axes[0].set_ylabel("weight decay")
    fig.colorbar(mesh, ax=axes, fraction=0.02, pad=0.01, label="fraction of initial points that converge")
    n, half = len(hp_map.init_axis), hp_map.init_half_width
    fig.suptitle(f"Fraction of a {n}x{n} grid of initial points in [{-half:g}, {half:g}]$^2$ that converges "
                 f"({steps} steps)")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
