"""`optimizer=<name>` on a row whose own optimizer is another: the chosen optimizer as its config file defines it,
not with the row's hyperparameters.

A row's experiment file sets its optimizer's hyperparameters (`optimizer.lr`, `betas`, `weight_decay`, ...) on top
of the optimizer it chooses, and Hydra merges them onto whichever optimizer the command line chooses instead: on a
Table 6 row `optimizer=sgd` would inherit NovoGrad's `betas` (a key SGD does not take) and `optimizer=adamw` on a
NovoGrad row NovoGrad's lr and decay, silently. `swap_optimizer` rebuilds the optimizer section of such a run from
- the chosen optimizer's own file (configs/optimizer/<name>.yaml): its defaults;
- the row's `larc` (`KEPT_FROM_ROW`): LARC is part of a workload's recipe (Tables 4-5 wrap all three optimizers in
  it, set once by the workload's base experiment file), not a hyperparameter of one optimizer;
- the debug mode's values for the chosen optimizer (configs/debug_optimizer/<workload>_<mode>_<name>.yaml), which
  are that optimizer's own;
- every `optimizer.*` key given on the command line, which always wins;
and drops every other value the row set (its lr, weight decay, betas, eps, `exclude_from_weight_decay`, which the
authors chose per optimizer). It returns one plain line that says what was kept, dropped, and taken from the
chosen optimizer's defaults. Such a run is a variant of its row: `novograd.report.matching` compares every key
of the optimizer section, its name included, so it is listed apart and never averaged into the row.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

KEPT_FROM_ROW = ("larc",)


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (`larc.enabled`); lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return nested


def _covered(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


def _value(value: Any) -> str:
    """As on the command line: `0.007`, `[0.95, 0.98]`, `true`, `null`."""
    if value is None or isinstance(value, bool):
        return str(value).lower() if value is not None else "null"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(map(_value, value)) + "]"
    return str(value)


def _listing(flat: dict[str, Any]) -> str:
    return ", ".join(f"{key}={_value(value)}" for key, value in flat.items()) or "none"


def swap_optimizer(cfg: DictConfig, row: str, row_optimizer: str, chosen: str, config_dir: Path,
                   debug_optimizer: str | None, command_line_keys: Iterable[str]) -> str:
    """Rebuild `cfg.optimizer` for `optimizer=<chosen>` on `row`, whose optimizer is `row_optimizer`; returns
    what was kept, dropped and taken from the defaults. `debug_optimizer` is the chosen debug_optimizer option
    (None when there is none), `command_line_keys` the keys below `optimizer.` the command line sets."""
    command_line_keys = list(command_line_keys)
    defaults = _flatten(OmegaConf.to_container(OmegaConf.load(config_dir / "optimizer" / f"{chosen}.yaml")))
    debug_values: dict[str, Any] = {}
    debug_path = config_dir / "debug_optimizer" / f"{debug_optimizer}.yaml"
    if debug_optimizer is not None and debug_path.is_file():  # an optional default: Hydra names it when absent too
        debug_file = OmegaConf.load(debug_path)
        debug_values = _flatten(OmegaConf.to_container(debug_file).get("optimizer", {}))
    composed = _flatten(OmegaConf.to_container(cfg.optimizer, resolve=True))  # type: ignore[arg-type]

    rebuilt, kept, dropped, given = dict(defaults), {}, {}, {}
    for key, value in composed.items():
        if _covered(key, command_line_keys) or key in debug_values:
            rebuilt[key] = value
            given[key] = value
        elif _covered(key, KEPT_FROM_ROW):
            rebuilt[key] = value
            if defaults.get(key, object()) != value:
                kept[key] = value
        elif key not in defaults or defaults[key] != value:
            dropped[key] = value
    from_defaults = {key: rebuilt[key] for key in dropped if key in rebuilt and key not in given}
    with open_dict(cfg):
        cfg.optimizer = OmegaConf.create(_unflatten(rebuilt))
    parts = [
        f"optimizer={chosen} on {row}, whose optimizer is {row_optimizer}: a variant of the row, not counted in it.",
        f"Kept from the row: {_listing(kept)}.",
        f"Dropped the row's {row_optimizer} values: {_listing(dropped)}.",
        f"From {chosen}'s defaults (configs/optimizer/{chosen}.yaml) instead: {_listing(from_defaults)}.",
    ]
    if given:
        parts.append(f"Given on the command line{' or by the debug mode' if debug_values else ''}: {_listing(given)}.")
    return " ".join(parts)
