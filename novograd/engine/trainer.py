"""The training loop: micro-batches, accumulation, optimizer steps, evaluation, checkpoints, logging.

The trainer knows no workload: it asks the `Workload` named by `cfg.workload` for model, datasets, collate, loss
and evaluation, and the optimizer factory and schedule builder for the rest. `run(cfg)` is the whole job.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from novograd.engine import distributed
from novograd.engine.accumulation import accumulate_gradients, accumulation_steps
from novograd.engine.batches import to_device
from novograd.engine.checkpoint import CheckpointManager
from novograd.engine.data import ShardSampler, StepAlignedSampler, build_loader
from novograd.engine.evaluation import evaluate
from novograd.engine.logger import RunLogger
from novograd.engine.output_dir import ensure_writable_output_dir
from novograd.engine.precision import Precision, enable_tf32
from novograd.engine.preemption import PreemptionFlag, resume_instructions
from novograd.engine.run_config import check_resume_config
from novograd.engine.seeding import capture_rng_state, configure_determinism, restore_rng_state, seed_everything
from novograd.workload import Workload

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    elapsed_s: float = 0.0
    best: dict[str, float] = field(default_factory=dict)
    last_eval_step: int = -1
    last_metrics: dict[str, float] = field(default_factory=dict)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate as `cfg` says; returns the summary (`preempted: True` when stopped early)."""
    owns_process_group = not torch.distributed.is_initialized()
    context = distributed.init_distributed(cfg.trainer.device)
    if not context.is_main:
        logging.getLogger("novograd").setLevel(logging.WARNING)  # one rank reports; the others only warn
    try:
        return Trainer(cfg, context).fit()
    finally:
        if owns_process_group:
            distributed.destroy_distributed()


def _resolve_output_dir(configured: str, context: distributed.DistributedContext) -> Path:
    """Rank 0's output directory for everyone: ranks that resolved a different timestamp drop their empty one."""
    mine = Path(configured).absolute()
    chosen = Path(distributed.broadcast_object(str(mine)))
    if mine != chosen and mine.is_dir() and not any(mine.iterdir()):
        mine.rmdir()
    return chosen


def _run_name(cfg: DictConfig, workload: Workload) -> str:
    """e.g. `imagenet-novograd-lr0.007-wd0.002-b1024-100ep`: what differs between the rows of a paper table."""
    optimizer = cfg.optimizer.get("name") or str(cfg.optimizer.get("_target_", "optimizer")).rsplit(".", 1)[-1]
    length = f"{cfg.trainer.max_steps}steps" if cfg.trainer.max_steps else f"{cfg.trainer.epochs}ep"
    return (
        f"{_workload_name(workload)}-{optimizer.lower()}-lr{cfg.optimizer.lr:g}-"
        f"wd{cfg.optimizer.get('weight_decay', 0.0):g}-b{cfg.trainer.batch_size}-{length}"
    )


def _workload_name(workload: Workload) -> str:
    return getattr(workload, "name", "") or type(workload).__name__.removesuffix("Workload").lower()


class Trainer:
    """One training job on this rank; build with the composed config, then `fit()`."""

    def __init__(self, cfg: DictConfig, context: distributed.DistributedContext) -> None:
        from hydra.utils import instantiate

        from novograd.optim.factory import build_optimizer
        from novograd.optim.schedules import build_scheduler

        self.cfg = cfg
        self.context = context
        trainer_cfg = cfg.trainer
        self.output_dir = _resolve_output_dir(trainer_cfg.output_dir, context)
        ensure_writable_output_dir(self.output_dir)  # before anything heavy: a clear error naming the key
        check_resume_config(cfg, self.output_dir, context.is_main)  # a resume may only change bookkeeping
        self.accumulation = accumulation_steps(
            trainer_cfg.batch_size, trainer_cfg.micro_batch_size, context.world_size
        )
        configure_determinism(trainer_cfg.deterministic)
        if context.device.type == "cuda":
            enable_tf32()

        # Same initial weights on every rank and for every layout: the model is built from `seed` alone.
        seed_everything(cfg.seed)
        self.workload: Workload = instantiate(cfg.workload, model=cfg.model, data=cfg.data, _recursive_=False)
        model = self.workload.build_model()
        train_set, eval_set = self.workload.build_datasets()
        seed_everything(cfg.seed + context.rank)

        self.channels_last = bool(getattr(self.workload, "channels_last", False)) and context.device.type == "cuda"
        model = model.to(context.device, memory_format=torch.channels_last if self.channels_last else None)
        if trainer_cfg.sync_bn and context.is_distributed:
            if context.device.type != "cuda":
                raise ValueError("trainer.sync_bn=true needs CUDA devices (torch's SyncBatchNorm runs only there); "
                                 "on the CPU keep trainer.sync_bn=false (BatchNorm statistics per micro-batch).")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model  # the bare module: checkpoints and evaluation
        self.optimizer = build_optimizer(cfg.optimizer, model)
        self.eval_model = torch.compile(model) if trainer_cfg.compile else model
        self.train_model: nn.Module = self.eval_model
        if context.is_distributed:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.eval_model,
                device_ids=[context.local_rank] if context.device.type == "cuda" else None,
                gradient_as_bucket_view=True,
            )

        self.train_sampler = StepAlignedSampler(
            len(train_set),  # type: ignore[arg-type]
            trainer_cfg.batch_size,
            trainer_cfg.micro_batch_size,
            context.rank,
            context.world_size,
            cfg.seed,
        )
        eval_sampler = ShardSampler(len(eval_set), context.rank, context.world_size)  # type: ignore[arg-type]
        pin_memory = context.device.type == "cuda" and bool(cfg.data.get("pin_memory", True))
        num_workers = cfg.data.get("num_workers", 0)
        self.train_loader = build_loader(
            train_set, self.train_sampler, trainer_cfg.micro_batch_size, self.workload.collate,
            num_workers, pin_memory, cfg.seed,
        )
        self.eval_loader = build_loader(
            eval_set, eval_sampler, trainer_cfg.get("eval_micro_batch_size") or trainer_cfg.micro_batch_size,
            self.workload.collate, num_workers, pin_memory, cfg.seed,
        )

        self.steps_per_epoch = self.train_sampler.steps_per_epoch
        self.total_steps = int(trainer_cfg.max_steps or trainer_cfg.epochs * self.steps_per_epoch)
        if self.total_steps <= 0:
            raise ValueError("Set trainer.epochs or trainer.max_steps to a positive number.")
        self.scheduler = build_scheduler(cfg.scheduler, self.optimizer, self.total_steps)
        self.precision = Precision(trainer_cfg.precision, context.device)
        self.grad_clip_norm = trainer_cfg.grad_clip_norm  # read once: a DictConfig lookup costs ~10 us per step
        self.checkpoints = CheckpointManager(self.output_dir / "checkpoints", trainer_cfg.keep_last_k)
        self.progress = Progress()
        self.wandb_run_id: str | None = None
        self._restore(self.checkpoints.load_last() if trainer_cfg.resume else None)

        if context.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))
        logger_cfg = cfg.logger
        wandb_settings = None
        if logger_cfg.backend == "wandb":
            wandb_settings = {**OmegaConf.to_container(logger_cfg, resolve=True), "name": _run_name(cfg, self.workload)}
        elif logger_cfg.backend != "none":
            raise ValueError(f"logger.backend must be wandb or none, got {logger_cfg.backend!r}.")
        self.logger = RunLogger(
            self.output_dir,
            enabled=context.is_main,
            wandb_settings=wandb_settings,
            metric_goals=self.workload.metric_goals,
            run_config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
            run_id=self.wandb_run_id,
            total_steps=self.total_steps,
            start_step=self.progress.step,
            show_progress=trainer_cfg.progress_bar,
        )
        self.wandb_run_id = distributed.broadcast_object(self.logger.run_id)
        log.info(
            "%s: %d steps of %d (%d per epoch), %d micro-batches of %d per rank x %d ranks per step, %s, output %s",
            _run_name(cfg, self.workload), self.total_steps - self.progress.step, self.total_steps,
            self.steps_per_epoch, self.accumulation, trainer_cfg.micro_batch_size, context.world_size,
            trainer_cfg.precision, self.output_dir,
        )

    # ----------------------------------------------------------------------------------------------- checkpoints
    def _state(self) -> dict[str, Any]:
        """Everything a resumed run needs; the generator states of all ranks are gathered here (a collective)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.precision.scaler.state_dict(),
            "progress": asdict(self.progress),
            "rng": distributed.gather_objects(capture_rng_state()),
            "batch_size": self.cfg.trainer.batch_size,
            "wandb_run_id": self.wandb_run_id,
        }

    def _save_checkpoint(self, is_best: bool = False) -> None:
        state = self._state()
        if self.context.is_main:
            self.checkpoints.save(state, self.progress.step, is_best)
        distributed.barrier()

    def _restore(self, state: dict[str, Any] | None) -> None:
        if state is None:
            return
        if state["batch_size"] != self.cfg.trainer.batch_size:
            raise ValueError(
                f"{self.checkpoints.last_path} was trained with trainer.batch_size={state['batch_size']}, not "
                f"{self.cfg.trainer.batch_size}: resume with the same batch size, or choose a new trainer.output_dir."
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.scaler.load_state_dict(state["scaler"])
        self.progress = Progress(**state["progress"])
        self.wandb_run_id = state["wandb_run_id"]
        if len(state["rng"]) == self.context.world_size:
            restore_rng_state(state["rng"][self.context.rank])
        else:
            # The data order does not depend on the layout, but dropout-like randomness of each rank does.
            log.warning(
                "The checkpoint was written by %d ranks, this run has %d: generator states start afresh.",
                len(state["rng"]), self.context.world_size,
            )
        log.info("Resumed from %s at step %d (epoch %d).", self.checkpoints.last_path, self.progress.step,
                 self.progress.epoch)

    # ---------------------------------------------------------------------------------------------- evaluation
    def _evaluate(self) -> bool:
        """Evaluate, log, track the best metrics; True when the primary metric improved."""
        metrics = evaluate(
            self.workload, self.eval_model, self.eval_loader,
            lambda batch: to_device(batch, self.context.device, self.channels_last),
            self.precision, self.context.device,
        )
        progress = self.progress
        progress.last_eval_step = progress.step
        progress.last_metrics = metrics
        improved = False
        for name, goal in self.workload.metric_goals.items():
            if name not in metrics:
                continue
            best = progress.best.get(name)
            if best is None or (metrics[name] > best if goal == "max" else metrics[name] < best):
                progress.best[name] = metrics[name]
                improved |= name == self.workload.primary_metric
        self.logger.log(progress.step, {f"eval/{k}": v for k, v in metrics.items()} | {"epoch": self._epoch_float()})
        log.info("step %d eval: %s", progress.step, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return improved

    def _epoch_float(self) -> float:
        return self.progress.epoch + self.progress.step_in_epoch / self.steps_per_epoch

    # -------------------------------------------------------------------------------------------------- training
    def _optimizer_step(self, micro_batches: list[Any], global_count: float) -> tuple[torch.Tensor, float]:
        """One optimizer step over this rank's micro-batches; returns (local loss sum, learning rate used)."""
        loss_sum = accumulate_gradients(
            self.train_model, self.workload, micro_batches, global_count, self.context.world_size, self.precision
        )
        lr = self.optimizer.param_groups[0]["lr"]
        self.precision.step(self.optimizer, self.model.parameters(), self.grad_clip_norm)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum, lr

    def fit(self) -> dict[str, Any]:
        trainer_cfg = self.cfg.trainer
        progress = self.progress
        eval_every_steps = trainer_cfg.eval_every_steps
        eval_every_epochs = trainer_cfg.eval_every_epochs
        checkpoint_every_steps = trainer_cfg.checkpoint_every_steps
        stop_at_step = trainer_cfg.stop_at_step
        log_every = trainer_cfg.log_every_steps
        device = self.context.device
        self.train_model.train()

        window_loss = torch.zeros((), device=device)
        window_count, window_steps, window_start = 0.0, 0, time.perf_counter()
        run_start, elapsed_before = time.perf_counter(), progress.elapsed_s
        stop_reason = ""
        with PreemptionFlag() as preemption:
            while progress.step < self.total_steps and not stop_reason:
                self.train_sampler.set_position(progress.epoch, progress.step_in_epoch)
                batches = iter(self.train_loader)
                while progress.step_in_epoch < self.steps_per_epoch and progress.step < self.total_steps:
                    micro_batches = [
                        to_device(next(batches), device, self.channels_last) for _ in range(self.accumulation)
                    ]
                    local_count = sum(self.workload.count(batch) for batch in micro_batches)
                    # One small collective per step: the global count that normalises the loss, and whether any
                    # rank was asked to stop (so all ranks stop at the same step boundary).
                    planned_stop = stop_at_step is not None and progress.step >= stop_at_step
                    agreed = distributed.all_reduce_sum(
                        torch.tensor([local_count, preemption.requested or planned_stop], dtype=torch.float64,
                                     device=device)
                    ).tolist()
                    global_count, stop_votes = agreed
                    if stop_votes:
                        stop_reason = preemption.signal_name or f"trainer.stop_at_step={stop_at_step}"
                        break
                    loss_sum, lr = self._optimizer_step(micro_batches, global_count)
                    progress.step += 1
                    progress.step_in_epoch += 1
                    window_loss += loss_sum
                    window_count += global_count
                    window_steps += 1
                    if progress.step_in_epoch == self.steps_per_epoch:
                        progress.epoch += 1
                        progress.step_in_epoch = 0

                    if window_steps == log_every or progress.step == self.total_steps:
                        elapsed = time.perf_counter() - window_start
                        mean_loss = distributed.all_reduce_sum(window_loss).item() / window_count
                        self.logger.log(progress.step, {
                            "train/loss": mean_loss, "train/lr": lr, "train/throughput": window_count / elapsed,
                            "epoch": self._epoch_float(),
                        })
                        self.logger.advance(window_steps, {
                            "loss": f"{mean_loss:.4f}", "lr": f"{lr:.3g}", "items/s": f"{window_count / elapsed:.0f}"
                        })
                        window_loss.zero_()
                        window_count, window_steps, window_start = 0.0, 0, time.perf_counter()

                    epoch_ended = progress.step_in_epoch == 0
                    due_eval = (eval_every_steps and progress.step % eval_every_steps == 0) or (
                        epoch_ended and eval_every_epochs and progress.epoch % eval_every_epochs == 0
                    )
                    is_last = progress.step == self.total_steps
                    pause_start = time.perf_counter()
                    improved = self._evaluate() if due_eval or is_last else False
                    progress.elapsed_s = elapsed_before + time.perf_counter() - run_start
                    if due_eval or is_last or (checkpoint_every_steps and progress.step % checkpoint_every_steps == 0):
                        self._save_checkpoint(is_best=improved)
                    window_start += time.perf_counter() - pause_start  # throughput counts training time only
                    if epoch_ended:
                        break

            if stop_reason:
                progress.elapsed_s = elapsed_before + time.perf_counter() - run_start
                self._save_checkpoint()
            elif progress.last_eval_step != progress.step:
                # Only reachable when a resumed run finds nothing left to train and no final evaluation yet.
                improved = self._evaluate()
                self._save_checkpoint(is_best=improved)

        summary = self._summary(stop_reason)
        if self.context.is_main and not stop_reason:
            (self.output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            self.logger.write_summary(summary)
        self.logger.close()
        if stop_reason and self.context.is_main:
            log.warning(resume_instructions(
                stop_reason, progress.step, self.total_steps, self.checkpoints.last_path, self.output_dir
            ))
        return summary

    def _summary(self, stop_reason: str) -> dict[str, Any]:
        """Final metrics under the paper's column names, the best of each, and how long it took."""
        progress = self.progress
        summary: dict[str, Any] = dict(progress.last_metrics)
        summary |= {f"best_{name}": value for name, value in progress.best.items()}
        summary |= {
            "steps": progress.step,
            "epochs": round(self._epoch_float(), 4),
            "wall_time_s": progress.elapsed_s,
            "world_size": self.context.world_size,
            "output_dir": str(self.output_dir),
        }
        if stop_reason:
            summary |= {"preempted": True, "stop_reason": stop_reason}
        return summary
