"""The study end to end, from its Hydra config (configs/dln/config.yaml) to results/dln/."""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from novograd.dln import plots
from novograd.dln.report import build_summary, summary_markdown, write_summary
from novograd.dln.study import (
    Scenario,
    hyperparameter_axis,
    hyperparameter_map,
    init_maps,
    run_scenario,
)
from novograd.dln.verdict import VerdictCriteria

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "dln"
CUSTOM_KEYS = ("lr", "weight_decay", "init")


def is_custom(cfg: DictConfig) -> bool:
    """Whether the user set a scenario of their own with top-level lr / weight_decay / init."""
    return any(cfg.get(key) is not None for key in CUSTOM_KEYS)


def scenarios_from_config(cfg: DictConfig) -> list[Scenario]:
    """The paper's scenarios, or the one the user set with top-level lr / weight_decay / init."""
    if not is_custom(cfg):
        return [Scenario(name=name, **OmegaConf.to_container(s, resolve=True)) for name, s in cfg.scenarios.items()]
    custom = {key: cfg[key] for key in CUSTOM_KEYS if cfg.get(key) is not None}
    if "baseline" not in cfg.scenarios:
        raise ValueError("A custom scenario takes what it leaves unset from `scenarios.baseline`; set all of "
                         f"{', '.join(CUSTOM_KEYS)} or keep the baseline scenario")
    base = cfg.scenarios.baseline
    lr = float(custom.get("lr", base.lr))
    weight_decay = float(custom.get("weight_decay", base.weight_decay))
    init = tuple(float(x) for x in custom.get("init", base.init))
    title = f"{cfg.name}: lr {lr:g}, wd {weight_decay:g}, init ({init[0]:g}, {init[1]:g})"
    return [Scenario(name=cfg.name, lr=lr, weight_decay=weight_decay, init=init, title=title)]


def run_study(cfg: DictConfig) -> dict:
    """Run every scenario and the robustness maps, write figures and summaries; return the summary."""
    scenarios = scenarios_from_config(cfg)
    output_dir = Path(cfg.custom_output_dir if is_custom(cfg) else cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    betas = tuple(float(b) for b in cfg.betas)
    if len(betas) != 2:
        raise ValueError(f"betas must be [beta1, beta2], got {list(cfg.betas)}")
    steps = int(cfg.steps)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    criteria = VerdictCriteria(**OmegaConf.to_container(cfg.verdict, resolve=True))

    # Elementwise work on a few thousand numbers: threads only add synchronisation (and, on a shared machine,
    # spin-waiting that made the maps 30x slower), so run on one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.perf_counter()
        runs = [run for s in scenarios for run in run_scenario(s, betas=betas, steps=steps, criteria=criteria)]
        scenario_seconds = time.perf_counter() - started

        maps, hp_map = None, None
        if cfg.robustness.enabled:
            started = time.perf_counter()
            settings: dict[tuple[float, float], tuple[str, ...]] = {}
            for s in scenarios:
                settings[(s.lr, s.weight_decay)] = settings.get((s.lr, s.weight_decay), ()) + (s.name,)
            grid = cfg.robustness.init_grid
            maps = init_maps([(lr, wd, names) for (lr, wd), names in settings.items()], half_width=grid.half_width,
                             points=grid.points, betas=betas, steps=steps, criteria=criteria)
            hp = cfg.robustness.hyperparameter_grid
            hp_map = hyperparameter_map(
                hyperparameter_axis(hp.lr.low, hp.lr.high, hp.lr.points, hp.lr.log),
                hyperparameter_axis(hp.weight_decay.low, hp.weight_decay.high, hp.weight_decay.points,
                                    hp.weight_decay.log),
                half_width=grid.half_width, init_points=hp.init_points, betas=betas, steps=steps, criteria=criteria,
            )
            map_seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)

    summary = build_summary(runs, steps=steps, betas=betas, criteria=criteria, init_maps=maps, hp_map=hp_map)
    write_summary(summary, output_dir)

    started = time.perf_counter()
    for s in scenarios:
        plots.plot_scenario([r for r in runs if r.scenario is s], output_dir / f"{s.name}.png", criteria.bound)
    if maps is not None:
        plots.plot_init_maps(maps, output_dir / "robustness_init.png", {s.name: s.init for s in scenarios}, steps)
        plots.plot_hyperparameter_map(hp_map, output_dir / "robustness_lr_wd.png",
                                      {s.name: (s.lr, s.weight_decay) for s in scenarios}, steps)
    plot_seconds = time.perf_counter() - started

    print(summary_markdown(summary))
    timing = f"scenarios {scenario_seconds:.1f} s"
    if maps is not None:
        timing += f", robustness maps {map_seconds:.1f} s"
    print(f"Figures, summary.json and summary.md are in {output_dir}/ ({timing}, figures {plot_seconds:.1f} s).")
    return summary


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    run_study(cfg)
