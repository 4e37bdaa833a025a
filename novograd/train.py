"""The Hydra entry point: `python -m novograd.train experiment=table1/novograd_100ep [key=value ...]`.

Launch several processes with torchrun (`torchrun --nproc-per-node=8 -m novograd.train ...`); one process works
without it. Nothing heavy is imported before Hydra has composed the config, so `--cfg job` and `--help` are quick.
"""

from __future__ import annotations

import logging
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import novograd.engine  # noqa: F401  (registers the resolvers configs/config.yaml uses; torch is not imported)
from novograd.engine.compose import direct_command_problem, settle_and_check
from novograd.engine.config_checks import missing_launcher_plugin
from novograd.engine.exit_codes import EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_NO_SPACE

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")  # the repository's configs/

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> Any:
    """Train the configured experiment; returns the run's summary (final and best metrics)."""
    from novograd.engine.lazy_dynamo import dynamo_import_skipped
    from novograd.engine.output_dir import no_empty_directories_left
    from novograd.engine.preemption import hand_on_signal, record_outcome

    runtime = HydraConfig.get().runtime
    # Only trainer.compile and NovoGrad's compiled step (optimizer.fused) call torch.compile: without them this
    # process need not import TorchDynamo (novograd/engine/lazy_dynamo.py).
    compiles = cfg.trainer.compile or cfg.optimizer.get("fused")
    # Hydra made its run folder before a config error, a failure or trainer.output_dir could leave it unused.
    with no_empty_directories_left([Path(runtime.output_dir), Path(cfg.trainer.output_dir)]), \
            nullcontext() if compiles else dynamo_import_skipped():
        settle_and_check(cfg)  # the optimizer swap, the debug warmup and every check that needs no model or data
        if cfg.get("experiment_name") is None and runtime.choices.get("debug") is None:  # debug runs reproduce no row
            with open_dict(cfg):
                cfg.experiment_name = runtime.choices.get("experiment")
        from novograd.engine import run
        from novograd.engine.checkpoint import CheckpointSpaceError

        try:
            summary = run(cfg)
        except CheckpointSpaceError as error:  # one message, and a status the launcher does not restart
            log.error("%s", error.strerror)
            sys.exit(EXIT_NO_SPACE)
        except KeyboardInterrupt:  # before training started (the trainer reports one during training)
            log.warning("Interrupted before training started; nothing of this run was written.")
            sys.exit(EXIT_INTERRUPTED)
    record_outcome(summary)  # for novograd.engine.launcher: the run ended cleanly, or diverged
    if summary.get("diverged"):
        sys.exit(EXIT_DIVERGED)  # its own status: not a crash, so the launcher does not restart it
    hand_on_signal(summary)  # submitit's handler (launcher=slurm) requeues the job now that everything is written
    return summary


if __name__ == "__main__":
    # Before Hydra, which cannot compose without the plugin, and whose answer to a misspelt key is to add it.
    if problem := missing_launcher_plugin(sys.argv[1:]) or direct_command_problem(sys.argv[1:]):
        print(problem, file=sys.stderr)
        sys.exit(2)
    main()
