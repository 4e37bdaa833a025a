"""Comparing resolved run configs: what a resumed run may change, and the key-by-key differences between two configs.

Two questions need the same answer to "what differs between these two configs?":
- resuming: may the command that resumes an output directory differ from the one that started it? Only in
  bookkeeping (`RESUME_MAY_CHANGE`); anything else would train something other than the run's `config.yaml` says,
  so `check_resume_config` refuses it before any work is done;
- reporting: does a finished run reproduce a paper row? `novograd.report.matching` compares the run's config with
  the row's own composed config over the keys that define a row.

Configs are compared as plain nested dicts (`OmegaConf.to_container(cfg, resolve=True)`, or `config.yaml` loaded),
key by key; a key that only one side has is a difference too (`ABSENT`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONFIG_FILE = "config.yaml"  # the resolved config the trainer writes into every output directory
SUMMARY_FILE = "summary.json"  # the final metrics the trainer writes at the end of a finished run
LAST_CHECKPOINT = Path("checkpoints") / "last.pt"  # relative to the output directory (novograd/engine/checkpoint.py)


class _Absent:
    """The value of a key that one of the two configs does not have."""

    def __repr__(self) -> str:
        return "(absent)"


ABSENT: Any = _Absent()

# Keys a resumed run may set to new values, each with why it does not change what is trained. A key names itself
# and everything below it.
RESUME_MAY_CHANGE: dict[str, str] = {
    "trainer.log_every_steps": "how often the training loss is logged",
    "trainer.eval_every_steps": "when the model is evaluated (evaluation does not touch the weights)",
    "trainer.eval_every_epochs": "when the model is evaluated",
    "trainer.eval_micro_batch_size": "evaluation batches: sums over the whole set, in eval mode",
    "trainer.checkpoint_every_steps": "when checkpoints are written",
    "trainer.checkpoint_every_minutes": "when checkpoints are written",
    "trainer.keep_last_k": "which checkpoints are kept",
    "trainer.progress_bar": "what the terminal shows",
    "trainer.stop_at_step": "where this process stops; the schedule spans the whole run",
    "trainer.output_dir": "where the run lives",
    "trainer.resume": "whether to continue at all",
    "trainer.compile": "how the same model is executed (torch.compile)",
    "trainer.deterministic": "which kernels compute the same operations",
    "optimizer.foreach": "which implementation computes the same update",
    "optimizer.fused": "which implementation computes the same update",
    "data.num_workers": "how many processes load the same data",
    "data.pin_memory": "how batches reach the GPU",
    "data.root": "where the dataset lives",
    "data.synthetic.cache_dir": "where the synthetic dataset is written",
    "logger": "where metrics are reported (W&B project, tags, mode, ...)",
    "target": "which value the run's time to target is measured to (a resume catches up from the logged evaluations)",
    "tuning": "which tuning budget the run is a trial of (make tune): the trial's point is in its own keys",
}


def _format(value: Any) -> str:
    """A value as it reads in `config.yaml` or on the command line: `0.007`, `[0.95, 0.98]`, `null`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key}: {_format(item)}" for key, item in value.items()) + "}"
    return str(value)


@dataclass(frozen=True)
class Difference:
    """One key whose value differs: `reference` is the row's (or the run's original) value, `value` the other's."""

    key: str
    reference: Any
    value: Any

    def __str__(self) -> str:
        """e.g. `optimizer.lr 0.01 instead of 0.007`."""
        return f"{self.key} {_format(self.value)} instead of {_format(self.reference)}"


def _covers(prefix: str, key: str) -> bool:
    """Whether `prefix` names `key` itself or a section above it (`trainer` covers `trainer.batch_size`)."""
    return key == prefix or key.startswith(prefix + ".")


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):  # True == 1 in Python, not in a config
        return type(a) is type(b) and a == b
    return a == b


def _walk(reference: Any, value: Any, key: str) -> Iterable[Difference]:
    """Differences below `key`, reported at the deepest key where the two stop being dicts."""
    if isinstance(reference, Mapping) or isinstance(value, Mapping):
        # A whole section present on one side only is compared key by key against nothing.
        reference_section = reference if isinstance(reference, Mapping) else {} if reference is ABSENT else None
        value_section = value if isinstance(value, Mapping) else {} if value is ABSENT else None
        if reference_section is not None and value_section is not None:
            for name in [*reference_section, *(k for k in value_section if k not in reference_section)]:
                yield from _walk(
                    reference_section.get(name, ABSENT), value_section.get(name, ABSENT),
                    f"{key}.{name}" if key else str(name),
                )
            return
    if not _equal(reference, value):
        yield Difference(key, reference, value)


def config_differences(
    reference: Mapping[str, Any], config: Mapping[str, Any], include: Callable[[str], bool] = lambda key: True
) -> list[Difference]:
    """The keys (dotted) where `config` differs from `reference`, in `reference`'s order, for which `include`
    holds. A section that is a dict on one side and a value on the other (`data.synthetic: null` against a dict) is
    one difference at that key."""
    return [difference for difference in _walk(reference, config, "") if include(difference.key)]


def is_covered(key: str, prefixes: Iterable[str]) -> bool:
    """Whether one of `prefixes` names `key` or a section above it."""
    return any(_covers(prefix, key) for prefix in prefixes)


def resume_differences(original: Mapping[str, Any], resumed: Mapping[str, Any]) -> list[Difference]:
    """What a resuming command changes beyond bookkeeping (`RESUME_MAY_CHANGE`)."""
    return config_differences(original, resumed, lambda key: not is_covered(key, RESUME_MAY_CHANGE))


def check_resume_config(cfg: DictConfig, output_dir: Path, is_main: bool) -> None:
    """Refuse to resume `output_dir` with a config that trains differently from the one the run started with.

    Called by every rank before anything is built; rank 0 reads and compares (rank 0 rewrites `config.yaml` later,
    and only after this check passed, so it never says anything the checkpoint was not trained with) and every
    rank raises the same error. Only a directory that holds a checkpoint is a run to resume."""
    from novograd.engine import distributed

    problem = _resume_problem(cfg, output_dir) if is_main else None
    problem = distributed.broadcast_object(problem)
    if problem:
        raise ValueError(problem)


def _resume_problem(cfg: DictConfig, output_dir: Path) -> str | None:
    """The error message when this command would resume `output_dir` with a different training, else None."""
    original_path = output_dir / CONFIG_FILE
    if not cfg.trainer.resume or not (output_dir / LAST_CHECKPOINT).is_file() or not original_path.is_file():
        return None
    original = OmegaConf.to_container(OmegaConf.load(original_path))
    resumed = OmegaConf.to_container(cfg, resolve=True)
    differences = resume_differences(original, resumed)  # type: ignore[arg-type]
    if not differences:
        return None
    listing = "\n".join(
        f"  {d.key}: {_format(d.reference)} (the run) -> {_format(d.value)} (this command)" for d in differences
    )
    return (
        f"trainer.output_dir={output_dir} holds a run to resume, but this command changes how it trains:\n"
        f"{listing}\n"
        f"A resumed run continues the training its {CONFIG_FILE} describes; only bookkeeping may change (logging, "
        f"evaluation and checkpoint frequency, data workers, progress bar, stop_at_step, paths, logger: "
        f"novograd.engine.run_config.RESUME_MAY_CHANGE). Either resume with the original values (as in "
        f"{original_path}), or start a new run with these values in a new trainer.output_dir."
    )
