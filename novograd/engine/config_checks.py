"""The checks of a composed run config that need no model and no data: found in a second, before any work.

`config_errors` lists every problem of a config (negative lr, an optimizer key its optimizer does not take, a
global batch that the micro-batches and ranks do not divide, a warmup as long as training, an unknown precision,
a `+key` nothing reads, ...), each with what to change. It applies the rules of the modules that build things
(the optimizer factory, the schedule, the precision, the batch accumulation) to stand-ins that cost nothing, so
each rule is written once, where it is enforced. `novograd.engine.launcher` (what `make <row>` runs) checks
every job of a command before starting torchrun's workers; `python -m novograd.train` checks again, for direct
torchrun or python use. `composition_error_message` makes Hydra's own composition errors (a missing config group
option, ...) read the same way; `unknown_key_problem` and `unknown_experiment_problem` answer a misspelt key and a
row that does not exist with the closest ones (novograd.engine.compose finds them); `missing_launcher_plugin` says
what to install for `launcher=slurm`. `data_problems` says that a run's dataset is not there, for the launcher.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Sections whose keys are arguments of a class the config names with `_target_`: a `+key` there is checked
# against the class's signature. Everywhere else the suite reads only the keys configs/ define, so an added key
# would be read by nothing. (`optimizer` and `scheduler` keys are checked by their builders, whose messages list
# the valid keys; `hydra` is Hydra's own.)
TARGET_SECTIONS = ("model", "workload")
UNCHECKED_SECTIONS = ("optimizer", "scheduler", "hydra")
# A schedule length for configs that train by epochs: their number of steps depends on the dataset's size.
_UNKNOWN_LENGTH = 2**62


class ConfigError(ValueError):
    """A config that cannot run; the message lists every problem found, each with what to change."""


def config_errors(cfg: DictConfig, world_size: int | None = None, added_keys: Iterable[str] = ()) -> list[str]:
    """Every problem of the composed `cfg` for a job of `world_size` processes (None: not known yet, so the split
    over ranks is not checked); `added_keys` are the keys the command line added with `+key=value`."""
    problems = [*_optimizer_problems(cfg), *_batch_problems(cfg, world_size), *_length_problems(cfg)]
    problems += _schedule_problems(cfg) + _precision_problems(cfg) + _nonfinite_problems(cfg) + _decode_problems(cfg)
    problems += _target_problems(cfg) + _parallelism_problems(cfg)
    problems += [problem for key in added_keys if (problem := _added_key_problem(cfg, key))]
    return problems


def check_config(cfg: DictConfig, world_size: int | None = None, added_keys: Iterable[str] = ()) -> None:
    """Raise a ConfigError listing `config_errors(cfg, world_size, added_keys)`, if there are any."""
    problems = config_errors(cfg, world_size, added_keys)
    if problems:
        raise ConfigError(format_problems(problems))


def format_problems(problems: list[str], kind: str = "Config error") -> str:
    lines = "\n".join(f"  - {problem}" for problem in problems)
    return f"{kind} (nothing was started):\n{lines}"


def data_problems(cfg: DictConfig) -> list[str]:
    """Why the dataset `cfg` trains on is not there: the workload's `check_data` (the data module's own check, whose
    message names the make target that prepares it). Not part of `config_errors`, which needs no data (a row's
    config is checked on machines without its dataset); the launcher adds it before it starts any worker."""
    from hydra.utils import get_class

    try:
        get_class(cfg.workload._target_).check_data(_plain(cfg.data))
    except (OSError, ValueError) as error:
        return [str(error)]
    return []


def unknown_key_problem(cfg: DictConfig, key: str) -> str:
    """What to write instead of `key=value`, a key that `cfg` (composed without it) does not have: the closest key
    and the keys there are, where Hydra would advise adding it with `+`."""
    parts = key.split(".")
    node: Any = cfg
    for depth, part in enumerate(parts):
        parent = ".".join(parts[:depth])
        if not isinstance(node, DictConfig):
            return f"{key}: {parent} is a value, not a section with keys; `--cfg job` prints the config."
        if part not in node:
            valid = sorted(str(name) for name in node.keys() if parent or name != "hydra")
            close = _closest_key(part, valid)
            hint = f"did you mean {'.'.join([*parts[:depth], close, *parts[depth + 1:]])}? " if close else ""
            return (f"unknown key {key}: {hint}valid keys{f' of {parent}' if parent else ''} are {valid} (a key "
                    "that configs/ does not set is added with +key=value, where something reads it).")
        node = OmegaConf.select(cfg, ".".join(parts[: depth + 1]), throw_on_resolution_failure=False)
    return f"{key}: Hydra could not override it; `--cfg job` prints the config."


def _closest_key(typed: str, valid: list[str]) -> str | None:
    """The key of `valid` that `typed` most likely meant: the closest spelling, else the one that abbreviates it
    or that it abbreviates by initials (learning_rate and lr, weight_decay and wd)."""
    close = difflib.get_close_matches(typed, valid, n=1)
    if close:
        return close[0]

    def initials(name: str) -> str:
        return "".join(word[:1] for word in name.split("_"))

    return next((name for name in valid if name == initials(typed) or initials(name) == typed), None)


def unknown_experiment_problem(name: str, experiments: list[str]) -> str:
    """For `experiment=<name>`, which no config file defines: the closest of `experiments` and where to see them
    all."""
    close = difflib.get_close_matches(name, experiments, n=3, cutoff=0.5)
    hint = f"the closest: {', '.join(close)}. " if close else ""
    return f"experiment={name}: no such experiment; {hint}`make help` lists every paper row (configs/experiment/)."


def composition_error_message(error: Exception) -> str:
    """A Hydra composition error (and what caused it) as one message, with the fix where the suite knows it."""
    text = str(error).strip()
    cause = error.__cause__
    if cause is not None and str(cause).strip() and str(cause).strip() not in text:
        text += f"\n{str(cause).strip()}"
    return f"Config error (nothing was started):\n  {text}"


def missing_launcher_plugin(args: list[str]) -> str | None:
    """What to install when the command line chooses `launcher=slurm` (configs/launcher/slurm.yaml) without its
    Hydra plugin, which Hydra would only report as a config it cannot find."""
    if "launcher=slurm" not in args:
        return None
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
        return None
    except ImportError:
        pass
    return ("Config error (nothing was started):\n  launcher=slurm submits through hydra-submitit-launcher, which "
            "is not installed: install the `slurm` extra with `uv sync --frozen --extra slurm` (then `make install` "
            "keeps it).")


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None)


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


# --------------------------------------------------------------------------------------------------- the rules
def _optimizer_problems(cfg: DictConfig) -> list[str]:
    """The optimizer factory's own checks, on one stand-in parameter (implementation switches left out: they
    choose how the update is computed, and some need a GPU)."""
    import torch

    from novograd.optim.factory import build_optimizer

    optimizer_cfg = {key: value for key, value in _plain(cfg.optimizer).items() if key not in ("foreach", "fused")}
    try:
        build_optimizer(optimizer_cfg, [torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as error:
        return [f"{error}"]
    return []


def _batch_problems(cfg: DictConfig, world_size: int | None) -> list[str]:
    """The global batch against the micro-batch and the ranks, as the batch plan will split it (the rule of
    novograd.engine.accumulation), for workloads whose batch is a count; a token budget (WMT14) splits any
    batch."""
    from hydra.utils import get_class

    from novograd.engine.accumulation import accumulation_steps

    trainer = cfg.trainer
    batch, micro = trainer.batch_size, trainer.micro_batch_size
    for key, value in (("batch_size", batch), ("micro_batch_size", micro), ("eval_micro_batch_size",
                                                                              trainer.get("eval_micro_batch_size"))):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            return [f"trainer.{key} must be a positive whole number, got {value!r}."]
    workload = get_class(cfg.workload._target_)
    if not getattr(workload, "batch_is_a_count", True):
        return []
    try:
        accumulation_steps(batch, micro, world_size or 1)
    except ValueError as error:
        return [str(error)]
    return []


def _length_problems(cfg: DictConfig) -> list[str]:
    epochs, max_steps = cfg.trainer.get("epochs"), cfg.trainer.get("max_steps")
    for key, value in (("epochs", epochs), ("max_steps", max_steps)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            return [f"trainer.{key} must be a positive whole number or null, got {value!r}."]
    if epochs is None and max_steps is None:
        return ["Set trainer.epochs or trainer.max_steps: the run has no length."]
    return []


def _schedule_problems(cfg: DictConfig) -> list[str]:
    """The schedule's own checks (novograd.optim.schedules) over the run's length when it is known before the data
    is (trainer.max_steps), on a stand-in optimizer with the run's lr."""
    import torch

    from novograd.optim.schedules import build_scheduler

    lr = _get(cfg, "optimizer.lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
        return []  # reported by the optimizer's checks
    max_steps = cfg.trainer.get("max_steps")
    total_steps = max_steps if isinstance(max_steps, int) and max_steps > 0 else _UNKNOWN_LENGTH
    stand_in = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=float(lr))
    try:
        build_scheduler(_plain(cfg.scheduler), stand_in, total_steps)
    except ValueError as error:
        message = str(error)
        if "total_steps=" in message and total_steps == max_steps:
            message = f"{message} (trainer.max_steps={max_steps})"
        return [message]
    return []


def _precision_problems(cfg: DictConfig) -> list[str]:
    import torch

    from novograd.engine.precision import Precision

    try:
        Precision(cfg.trainer.precision, torch.device("cpu"))
    except ValueError as error:
        return [str(error)]
    return []


def _nonfinite_problems(cfg: DictConfig) -> list[str]:
    from novograd.engine.nonfinite import NonFinitePolicy

    trainer = cfg.trainer
    try:
        NonFinitePolicy(trainer.nonfinite, trainer.max_consecutive_skips, trainer.max_rewinds, trainer.min_loss_scale)
    except ValueError as error:
        return [str(error)]
    return []


def _parallelism_problems(cfg: DictConfig) -> list[str]:
    """An unknown `trainer.parallelism`, or FSDP2 with `trainer.compile` where it fails (the CPU)."""
    import torch

    from novograd.engine.parallel import shards

    try:
        sharded = shards(cfg.trainer.parallelism)
    except ValueError as error:
        return [str(error)]
    if sharded and cfg.trainer.compile and (cfg.trainer.device == "cpu" or not torch.cuda.is_available()):
        return ["trainer.compile=true with trainer.parallelism=fsdp fails on the CPU (TorchInductor, torch 2.13: "
                "'Cannot convert expression to float' in the backward of a sharded block): set trainer.compile=false, "
                "or run on CUDA, where each block is compiled before it is sharded (docs/sharding.md)."]
    return []


def _decode_problems(cfg: DictConfig) -> list[str]:
    """`data.decode=gpu` (the workers read the files, the training GPU decodes them) where it cannot run: without
    CUDA, or with `data.skip_corrupt`, whose substitute for an unreadable file is found by the worker's decode."""
    from data.imagenet import DECODE_CHOICES

    decode = _get(cfg, "data.decode")
    if decode is None or decode == "cpu":
        return []
    if decode not in DECODE_CHOICES:
        return [f"data.decode must be one of {list(DECODE_CHOICES)}, got {decode!r}."]
    import torch

    problems = []
    if cfg.trainer.device == "cpu" or not torch.cuda.is_available():
        where = "this run trains on the CPU (trainer.device=cpu)" if cfg.trainer.device == "cpu" else (
            "no CUDA device is visible here")
        problems.append(f"data.decode=gpu decodes the JPEGs with nvJPEG on the training GPU, but {where}: set "
                        "data.decode=cpu (the default: the loader's workers decode), or run on a CUDA machine.")
    if _get(cfg, "data.skip_corrupt"):
        problems.append("data.decode=gpu cannot skip unreadable images (the workers no longer decode, so they cannot "
                        "find the next readable one): set data.skip_corrupt=false, or data.decode=cpu to skip them.")
    return problems


def _target_problems(cfg: DictConfig) -> list[str]:
    from hydra.utils import get_class

    from novograd.engine.target import run_target

    try:
        run_target(_plain(cfg.get("target")), get_class(cfg.workload._target_).metric_goals)
    except ValueError as error:
        return [str(error)]
    return []


def _added_key_problem(cfg: DictConfig, key: str) -> str | None:
    """Why `+key=value` sets something nothing reads, or None when something reads it."""
    section, _, rest = key.partition(".")
    if section in UNCHECKED_SECTIONS:
        return None
    if section in TARGET_SECTIONS and rest and "." not in rest:
        target = _get(cfg, f"{section}._target_")
        if target is None:
            return None
        from hydra.utils import get_class

        parameters = inspect.signature(get_class(target)).parameters
        if rest in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return None
        known = [name for name in parameters if name != "self"]
        reader = f"{target} takes no argument {rest!r}"
    else:
        parent = key.rpartition(".")[0]
        node = _get(cfg, parent) if parent else cfg
        known = [str(name) for name in node.keys()] if isinstance(node, DictConfig) else []
        known = [name for name in known if f"{parent}.{name}".lstrip(".") != key]
        reader = "no part of the suite reads it"
    close = difflib.get_close_matches(key.rpartition(".")[2], known, n=1)
    hint = f"did you mean {'.'.join(filter(None, [key.rpartition('.')[0], close[0]]))}?" if close else (
        "keys that exist are set without '+'; `--cfg job` prints them all.")
    return f"+{key}: {reader}: {hint}"
