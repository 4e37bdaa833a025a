"""The run config as `python -m novograd.train` trains it: Hydra's composition, then the two adjustments that YAML
cannot express (`settle_config`), then the checks that need no model and no data (novograd/engine/config_checks).

- `settle_config`, applied by the entry point (`settle_and_check`, the first thing `novograd.train.main` does), by
  the launcher's check of a command before it starts workers, and by `compose_config`, so all three see the same
  config:
  - `optimizer=<name>` on a row whose own optimizer is another takes that optimizer's defaults, not the row's
    hyperparameters (novograd/engine/optimizer_swap.py);
  - a debug run (`debug=smoke|learn|...`) whose row warms up for longer than the debug run trains (Table 3's 500
    warmup steps against smoke's 4) warms up for half of its steps, so that warmup and decay both run; a warmup
    given on the command line is kept (and checked).
- `compose_config`: the config in-process (Hydra's compose API), for the launcher, tests, benchmarks and notebooks
  that call `novograd.engine.run(cfg)` directly. Hydra's `${hydra:...}` resolvers do not exist outside
  `@hydra.main`, so the caller names the output directory.
- `describe_composition_error`: a command that does not compose, in the suite's words: a misspelt key with the key
  meant (Hydra would advise adding it with `+`), an experiment that does not exist with the closest rows. The
  launcher reports it for each job, `python -m novograd.train` before Hydra composes (`direct_command_problem`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from novograd.engine.config_checks import (
    ConfigError, check_config, composition_error_message, data_problems, format_problems, unknown_experiment_problem,
    unknown_key_problem)
from novograd.engine.optimizer_swap import swap_optimizer

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
#: Set (to 1) by novograd.engine.launcher for its workers: it checked the command before starting them.
LAUNCHER_CHECKED_ENV = "NOVOGRAD_LAUNCHER_CHECKED"

log = logging.getLogger("novograd.config")


def _parsed(overrides: Iterable[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(overrides=list(overrides))


def command_line_keys(overrides: Iterable[str]) -> list[str]:
    """The config keys (dotted) that command-line overrides set, config group choices left out."""
    return [o.key_or_group for o in _parsed(overrides) if not _is_group(o.key_or_group)]


def added_keys(overrides: Iterable[str]) -> list[str]:
    """The keys that `+key=value` overrides add (config groups added with `+group=option` left out)."""
    return [o.key_or_group for o in _parsed(overrides) if o.is_add() and not _is_group(o.key_or_group)]


def _is_group(key: str) -> bool:
    return (CONFIG_DIR / key.lstrip("/")).is_dir()


def _compose(overrides: list[str]) -> DictConfig:
    """The primary config with `overrides` and its `hydra` node (choices, task overrides), inside `@hydra.main`
    too (where Hydra is already initialised with the same config directory)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def settle_config(cfg: DictConfig, choices: Mapping[str, Any], overrides: list[str]) -> list[str]:
    """Apply the optimizer swap and the debug warmup (module docstring) to `cfg` in place, for a run composed with
    the config group `choices` (`hydra.runtime.choices`) from the command-line `overrides`; returns one line per
    change, for the run's log."""
    keys = command_line_keys(overrides)
    notes = []
    row, chosen = choices.get("experiment"), choices.get("optimizer")
    chooses_optimizer = any(o.key_or_group.lstrip("/") == "optimizer" for o in _parsed(overrides))
    if row and chosen and chooses_optimizer:
        row_optimizer = _compose([f"experiment={row}"]).hydra.runtime.choices.optimizer
        if row_optimizer != chosen:
            optimizer_keys = [key.removeprefix("optimizer.") for key in keys if key.startswith("optimizer.")]
            notes.append(swap_optimizer(cfg, row, row_optimizer, chosen, CONFIG_DIR,
                                        choices.get("debug_optimizer"), optimizer_keys))
    mode = choices.get("debug")
    if mode and "scheduler.warmup_steps" not in keys:
        note = _fit_warmup_into_debug_run(cfg, mode)
        notes += [note] if note else []
    return notes


def _fit_warmup_into_debug_run(cfg: DictConfig, mode: str) -> str | None:
    max_steps, warmup = cfg.trainer.get("max_steps"), cfg.scheduler.get("warmup_steps")
    if not isinstance(max_steps, int) or not isinstance(warmup, int) or warmup < max_steps:
        return None
    cfg.scheduler.warmup_steps = max_steps // 2
    return (f"debug={mode}: scheduler.warmup_steps {warmup} -> {max_steps // 2}, half of the run's {max_steps} "
            "steps: the row's warmup is longer than the debug run (set scheduler.warmup_steps to choose another).")


def compose_run_config(overrides: list[str]) -> tuple[DictConfig, list[str]]:
    """The settled config of `python -m novograd.train <overrides>` (no `hydra` node) and the settling notes."""
    cfg = _compose(overrides)
    notes = settle_config(cfg, cfg.hydra.runtime.choices, overrides)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, notes


def composition_problem(overrides: list[str]) -> str | None:
    """Why `overrides` do not compose, in the suite's words (`describe_composition_error`), or None when they do:
    what `python -m novograd.train` checks before Hydra composes, so that a typo gets its answer on the first try."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        _compose(overrides)
    except (HydraException, OmegaConfBaseException) as error:
        return describe_composition_error(error, overrides)
    return None


def direct_command_problem(script_args: list[str]) -> str | None:
    """`composition_problem` of `python -m novograd.train <script_args>`, for its entry point to print before Hydra
    composes (Hydra's own message for a misspelt key advises adding it with `+`). None for a sweep (`-m`: Hydra
    composes its jobs one by one), for another primary config (`--config-name`, ...), and under
    novograd.engine.launcher, which checked every job already."""
    from hydra._internal.utils import get_args_parser

    if os.environ.get(LAUNCHER_CHECKED_ENV) == "1":
        return None
    args = get_args_parser().parse_intermixed_args(script_args)
    if args.multirun or args.config_name or args.config_path or args.config_dir or args.experimental_rerun:
        return None
    return composition_problem(list(args.overrides))


def describe_composition_error(error: Exception, overrides: list[str]) -> str:
    """Hydra's composition `error` of `overrides` as one message: an experiment that does not exist with the rows
    closest to it, a key that does not exist with the closest key and the valid ones (where Hydra advises adding it
    with `+`), anything else in Hydra's words."""
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    parsed = _parsed(overrides)
    if isinstance(error, MissingConfigException):
        for override in parsed:
            name = override.value() if override.key_or_group.lstrip("/") == "experiment" else None
            if isinstance(name, str) and not (CONFIG_DIR / "experiment" / f"{name}.yaml").is_file():
                experiments = sorted(str(path.relative_to(CONFIG_DIR / "experiment").with_suffix(""))
                                     for path in (CONFIG_DIR / "experiment").rglob("*.yaml"))
                return format_problems([unknown_experiment_problem(name, experiments)])
    unknown, failure = [], error
    # Hydra stops at the first key it cannot override: compose without it until the rest composes, so that every
    # unknown key of the command is named at once.
    while not_overridden := re.match(r"Could not override '([^']+)'", str(failure)):
        unknown.append(not_overridden.group(1))
        try:
            cfg = _compose([text for text, override in zip(overrides, parsed) if override.key_or_group not in unknown])
        except (HydraException, OmegaConfBaseException) as next_failure:
            failure = next_failure
            continue
        return format_problems([unknown_key_problem(cfg, key) for key in unknown])
    return composition_error_message(failure)


def compose_config(overrides: list[str], output_dir: str | Path | None = None) -> DictConfig:
    """The settled primary config with `overrides` (command-line syntax); `trainer.output_dir` set when given."""
    if output_dir is not None:
        overrides = [*overrides, f"trainer.output_dir={Path(output_dir).absolute()}"]
    cfg, notes = compose_run_config(overrides)
    for note in notes:
        log.info(note)
    return cfg


def world_size_from_environment() -> int:
    """The job's number of processes: torchrun's WORLD_SIZE, else SLURM's task count (launcher=slurm), else 1."""
    return int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)


def settle_and_check(cfg: DictConfig) -> None:
    """The first step of `python -m novograd.train` (inside `@hydra.main`): settle `cfg` in place and log what
    changed, then check it; on a config error print it once per node and exit with status 2, before anything is
    built or any dataset is opened."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    try:
        notes = settle_config(cfg, hydra_cfg.runtime.choices, overrides)
        check_config(cfg, world_size_from_environment(), added_keys(overrides))
        if not os.environ.get(LAUNCHER_CHECKED_ENV) and (problems := data_problems(cfg)):  # torchrun without it
            raise ConfigError(format_problems(problems, "Dataset not found"))
    except ConfigError as error:  # exit status 2: a launcher does not restart what fails the same way again
        if os.environ.get("LOCAL_RANK", "0") == "0":
            print(error, file=sys.stderr, flush=True)
        sys.exit(2)
    if os.environ.get("RANK", "0") == "0":
        for note in notes:
            log.info(note)
