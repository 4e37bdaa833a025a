"""The training loop: micro-batches, accumulation, optimizer steps, evaluation, checkpoints, logging.

The trainer knows no workload: it asks the `Workload` named by `cfg.workload` for model, datasets, batch plan,
collate, loss and evaluation, and the optimizer factory and schedule builder for the rest. `run(cfg)` is the whole
job.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from novograd.engine import distributed, parallel
from novograd.engine.accumulation import accumulate_gradients
from novograd.engine.batches import DataWait, device_batches, tensors_in
from novograd.engine.checkpoint import CheckpointManager, load_shards
from novograd.engine.data import EvalBatchSampler, PlannedBatchSampler, build_loader
from novograd.engine.evaluation import SKIPPED, evaluate
from novograd.engine.exit_codes import EXIT_INTERRUPTED
from novograd.engine.logger import METRICS_FILE, RunLogger, TrainingStatus, metrics_text, read_metrics, summary_line
from novograd.engine.nonfinite import (
    BufferSnapshot, Diverged, NonFinitePolicy, Rewind, SkipCounter, any_nonfinite)
from novograd.engine.output_dir import ensure_writable_output_dir
from novograd.engine.precision import Precision, enable_tf32
from novograd.engine.preemption import PreemptionFlag, resume_instructions
from novograd.engine.run_config import CONFIG_FILE, LAST_CHECKPOINT, SUMMARY_FILE, check_resume_config
from novograd.engine.seeding import capture_rng_state, configure_determinism, restore_rng_state, seed_everything
from novograd.engine.target import TRAIN_ELAPSED, first_reached, run_target, target_summary

if TYPE_CHECKING:
    from collections.abc import Iterator

    from novograd.workload import Workload

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    elapsed_s: float = 0.0
    paused_s: float = 0.0  # of elapsed_s, the time spent evaluating and checkpointing
    best: dict[str, float] = field(default_factory=dict)
    last_eval_step: int = -1
    last_metrics: dict[str, float] = field(default_factory=dict)
    skipped_train: int | None = None  # examples replaced for unreadable files; None: not counted
    skipped_steps: int = 0  # optimizer steps not applied: non-finite, or dropped by a rewind (nonfinite.py)
    rewinds: int = 0  # reloads of the last checkpoint after a non-finite step (trainer.nonfinite=rewind)
    target: dict[str, Any] | None = None  # the target (Target.as_dict) the evaluations were checked against
    steps_to_target: int | None = None  # the first evaluation that reached it: its step and training time
    time_to_target_s: float | None = None


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate as `cfg` says; returns the summary (`preempted: True` when stopped early). A run whose
    output directory holds a finished run trains nothing and returns that run's summary."""
    owns_process_group = not torch.distributed.is_initialized()
    context = distributed.init_distributed(cfg.trainer.device, group_alone=parallel.shards(cfg.trainer.parallelism))
    if not context.is_main:
        logging.getLogger("novograd").setLevel(logging.WARNING)  # one rank reports; the others only warn
    try:
        output_dir = _resolve_output_dir(cfg.trainer.output_dir, context)
        ensure_writable_output_dir(output_dir)  # before anything heavy: a clear error naming the key
        check_resume_config(cfg, output_dir, context.is_main)  # a resume may only change bookkeeping
        finished = distributed.broadcast_object(
            _finished_summary(output_dir) if cfg.trainer.resume and context.is_main else None
        )
        if finished is not None and finished.get("diverged"):
            if context.is_main:
                log.error("This run diverged: %s. Nothing to train. %s", output_dir / SUMMARY_FILE,
                          diverged_message(finished))
            return finished
        if finished is not None:
            from hydra.utils import get_class

            log.info(
                "This run already finished: %s. Nothing to train. To train the same settings again, add seed=<n> "
                "or run_name=<name>, or give another trainer.output_dir.", output_dir / SUMMARY_FILE,
            )
            log.info(summary_line(finished, columns=get_class(cfg.workload._target_).columns()))
            return finished
        trainer = Trainer(cfg, context, output_dir)
        try:
            return trainer.fit()
        except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint now, so say which one a re-run resumes from
            if context.is_main:
                log.warning(trainer.interrupted_message())
            raise SystemExit(EXIT_INTERRUPTED) from None
    finally:
        if owns_process_group:
            distributed.destroy_distributed()


def _finished_summary(output_dir: Path) -> dict[str, Any] | None:
    """The summary of the finished run in `output_dir` (its `summary.json` and final checkpoint), else None."""
    summary_path = output_dir / SUMMARY_FILE
    if not (summary_path.is_file() and (output_dir / LAST_CHECKPOINT).is_file()):
        return None
    return json.loads(summary_path.read_text())


def diverged_message(summary: dict[str, Any]) -> str:
    """What a diverged run tells its user: where, why, the last finite checkpoint, and what to try."""
    checkpoint = (f"the last finite checkpoint is {summary['last_checkpoint']} (step {summary['last_checkpoint_step']})"
                  if summary.get("last_checkpoint") else "no checkpoint was written before it")
    other_precision = {"bf16": ", or trainer.precision=fp32 (or fp16, with its loss scaling)",
                       "fp16": ", or trainer.precision=bf16 or fp32"}.get(summary.get("precision", ""), "")
    return (
        f"Diverged at step {summary['diverged_at_step']}: {summary['diverged_reason']}; {checkpoint}. Nothing "
        "non-finite was applied, evaluated or saved. Try a lower optimizer.lr, a longer warmup, or gradient "
        f"clipping (trainer.grad_clip_norm=1.0){other_precision}: each is a new run, in a new output directory."
    )


def _resolve_output_dir(configured: str, context: distributed.DistributedContext) -> Path:
    """Rank 0's output directory for everyone. The default name is a function of the command line, so ranks agree
    anyway; a rank that resolved another one (another working directory) drops its empty folder."""
    mine = Path(configured).absolute()
    chosen = Path(distributed.broadcast_object(str(mine)))
    if mine != chosen and mine.is_dir() and not any(mine.iterdir()):
        mine.rmdir()
    return chosen


def _run_name(cfg: DictConfig, workload: Workload) -> str:
    """e.g. `imagenet-novograd-lr0.007-wd0.002-b1024-100ep`: what differs between the rows of a paper table
    (and `-<run_name>` when the command gives one)."""
    optimizer = cfg.optimizer.get("name") or str(cfg.optimizer.get("_target_", "optimizer")).rsplit(".", 1)[-1]
    length = f"{cfg.trainer.max_steps}steps" if cfg.trainer.max_steps else f"{cfg.trainer.epochs}ep"
    suffix = f"-{cfg.run_name}" if cfg.get("run_name") else ""
    return (
        f"{_workload_name(workload)}-{optimizer.lower()}-lr{cfg.optimizer.lr:g}-"
        f"wd{cfg.optimizer.get('weight_decay', 0.0):g}-b{cfg.trainer.batch_size}-{length}{suffix}"
    )


def _workload_name(workload: Workload) -> str:
    return getattr(workload, "name", "") or type(workload).__name__.removesuffix("Workload").lower()


class Trainer:
    """One training job on this rank; build with the composed config, then `fit()`."""

    def __init__(self, cfg: DictConfig, context: distributed.DistributedContext, output_dir: Path) -> None:
        """`output_dir`: the same on every rank, writable, and checked against the config (see `run`)."""
        from hydra.utils import instantiate

        from novograd.optim.factory import build_optimizer
        from novograd.optim.schedules import build_scheduler

        self.cfg = cfg
        self.context = context
        trainer_cfg = cfg.trainer
        self.output_dir = output_dir
        configure_determinism(trainer_cfg.deterministic)
        if context.device.type == "cuda":
            enable_tf32()

        # Same initial weights on every rank and for every layout: the model is built from `seed` alone.
        seed_everything(cfg.seed)
        self.workload: Workload = instantiate(cfg.workload, model=cfg.model, data=cfg.data, _recursive_=False)
        self.workload.output_dir = self.output_dir if context.is_main else None
        self.target = run_target(cfg.get("target"), self.workload.metric_goals)  # novograd/engine/target.py
        model = self.workload.build_model()
        train_set, eval_sets = self.workload.build_datasets()
        self.plan = self.workload.batch_plan(train_set, trainer_cfg.batch_size, trainer_cfg.micro_batch_size, cfg.seed)
        self.train_sampler = PlannedBatchSampler(self.plan, context.rank, context.world_size)  # checks the layout
        seed_everything(cfg.seed + context.rank)

        self.channels_last = bool(getattr(self.workload, "channels_last", False)) and context.device.type == "cuda"
        model = model.to(context.device, memory_format=torch.channels_last if self.channels_last else None)
        if trainer_cfg.sync_bn and context.is_distributed:
            if context.device.type != "cuda":
                raise ValueError("trainer.sync_bn=true needs CUDA devices (torch's SyncBatchNorm runs only there); "
                                 "on the CPU keep trainer.sync_bn=false (BatchNorm statistics per micro-batch).")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.precision = Precision(trainer_cfg.precision, context.device)
        self.sharded = parallel.shards(trainer_cfg.parallelism)
        if self.sharded:  # before the optimizer is built: it holds the shards
            parallel.shard_model(model, self.precision.dtype, compile_blocks=trainer_cfg.compile)
        self.model = model  # the bare (or sharded) module: checkpoints and evaluation
        self.optimizer = build_optimizer(cfg.optimizer, model)
        self.eval_model = torch.compile(model) if trainer_cfg.compile and not self.sharded else model
        self.train_model: nn.Module = self.eval_model
        if context.is_distributed and not self.sharded:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.eval_model,
                device_ids=[context.local_rank] if context.device.type == "cuda" else None,
                gradient_as_bucket_view=True,
            )

        pin_memory = context.device.type == "cuda" and bool(cfg.data.get("pin_memory", True))
        num_workers = cfg.data.get("num_workers", 0)
        self.train_loader = build_loader(
            train_set, self.train_sampler, self.workload.collate, num_workers, pin_memory, cfg.seed
        )
        eval_batch_size = trainer_cfg.get("eval_micro_batch_size") or trainer_cfg.micro_batch_size
        self.eval_loaders = {
            name: build_loader(
                dataset,
                EvalBatchSampler(len(dataset), eval_batch_size, context.rank, context.world_size,  # type: ignore[arg-type]
                                 getattr(dataset, "lengths", None)),
                self.workload.collate, num_workers, pin_memory, cfg.seed,
            )
            for name, dataset in eval_sets.items()
        }

        self.total_steps = int(trainer_cfg.max_steps or self.plan.total_steps(trainer_cfg.epochs))
        if self.total_steps <= 0:
            raise ValueError("Set trainer.epochs or trainer.max_steps to a positive number.")
        self.scheduler = build_scheduler(cfg.scheduler, self.optimizer, self.total_steps)
        self.nonfinite = NonFinitePolicy(
            trainer_cfg.nonfinite, trainer_cfg.max_consecutive_skips, trainer_cfg.max_rewinds,
            trainer_cfg.min_loss_scale,
        )
        self.buffers = BufferSnapshot(self.model)
        self.skips = SkipCounter(context.device)
        # Read once: a DictConfig lookup costs ~10 us, and these are consulted every step.
        self.grad_clip_norm = trainer_cfg.grad_clip_norm
        self.intervals = _Intervals(
            log_steps=trainer_cfg.log_every_steps, eval_steps=trainer_cfg.eval_every_steps,
            eval_epochs=trainer_cfg.eval_every_epochs, checkpoint_steps=trainer_cfg.checkpoint_every_steps,
            stop_at_step=trainer_cfg.stop_at_step,
            checkpoint_seconds=None if trainer_cfg.checkpoint_every_minutes is None
            else 60.0 * trainer_cfg.checkpoint_every_minutes,
        )
        # Preemption signals and time-based checkpoints are decided by all ranks together (a collective to create).
        self.vote = distributed.DeferredVote(num_flags=2)
        self.checkpoints = CheckpointManager(self.output_dir / "checkpoints", trainer_cfg.keep_last_k, context.is_main)
        self.progress = Progress(target=self.target and self.target.as_dict())
        self.wandb_run_id: str | None = None
        if trainer_cfg.resume and (state := self._load_last()) is not None:
            self._restore(state)
            log.info("Resuming from step %d of %s (epoch %d).", self.progress.step, self.checkpoints.latest[0],
                     self.progress.epoch)

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
            "%s: %d steps of %d (%d per epoch), batches of %d %s in micro-batches of up to %d per rank x %d ranks, "
            "%s, output %s", _run_name(cfg, self.workload), self.total_steps - self.progress.step, self.total_steps,
            self.plan.steps_per_epoch(self.progress.epoch), trainer_cfg.batch_size, self.plan.unit,
            trainer_cfg.micro_batch_size, context.world_size, trainer_cfg.precision, self.output_dir,
        )

    # ----------------------------------------------------------------------------------------------- checkpoints
    def _state(self) -> dict[str, Any]:
        """Everything a resumed run needs but a sharded model's and optimizer's state (`_shards`); the generator
        states of all ranks are gathered here (a collective)."""
        unsharded = {} if self.sharded else {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        return unsharded | {
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.precision.scaler.state_dict(),
            "progress": asdict(self.progress),
            "rng": distributed.gather_objects(capture_rng_state()),
            "workload": distributed.gather_objects(self.workload.state_dict()),
            "batch_size": self.cfg.trainer.batch_size,
            "wandb_run_id": self.wandb_run_id,
        }

    def interrupted_message(self) -> str:
        latest = self.checkpoints.latest
        kept = (f"the last checkpoint is {latest[0]} (step {latest[1]}); re-run the same command to resume from it"
                if latest else "no checkpoint was written; a re-run starts afresh")
        return f"Interrupted at step {self.progress.step}: {kept}."

    def _save_checkpoint(self, is_best: bool = False) -> None:
        self._check_state()  # never a checkpoint of a non-finite step, weight or optimizer state
        started = time.perf_counter()
        self.progress.elapsed_s = self._elapsed()
        state = self._state()
        shards = None
        if self.sharded:
            if self.progress.last_eval_step != self.progress.step:  # an evaluation here synchronised them already
                # Rank 0's buffers, as DDP saves them: DCP writes each replicated tensor from any one rank.
                parallel.sync_buffers(self.model)
            shards = parallel.sharded_state(self.model, self.optimizer)
        self.checkpoints.save(state, self.progress.step, is_best, shards)
        distributed.barrier()
        self.progress.paused_s += time.perf_counter() - started
        self._last_checkpoint = (self.progress.step, time.monotonic())

    def _load_last(self) -> dict[str, Any] | None:
        """The last checkpoint's state (checkpoint.py), its shards already loaded into a sharded model."""
        return self.checkpoints.load_last(self._load_shards if self.sharded else None)

    def _load_shards(self, directory: Path) -> None:
        state = parallel.sharded_state(self.model, self.optimizer)
        load_shards(state, directory)
        parallel.load_sharded_state(self.model, self.optimizer, state)

    def _restore(self, state: dict[str, Any]) -> None:
        if state["batch_size"] != self.cfg.trainer.batch_size:
            raise ValueError(
                f"{self.checkpoints.latest[0]} was trained with trainer.batch_size={state['batch_size']}, not "
                f"{self.cfg.trainer.batch_size}: resume with the same batch size, or choose a new trainer.output_dir."
            )
        if not self.sharded:  # a sharded model's state was loaded with the file (_load_last)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.scaler.load_state_dict(state["scaler"])
        self.progress = Progress(**state["progress"])
        self._catch_up_target()
        self.wandb_run_id = state["wandb_run_id"]
        # Every rank's carried state, merged: state keyed by stream (not by rank) survives a change of world size.
        self.workload.load_state_dict({key: value for shard in state["workload"] for key, value in shard.items()})
        if len(state["rng"]) == self.context.world_size:
            restore_rng_state(state["rng"][self.context.rank])
        else:
            # The data order does not depend on the layout, but dropout-like randomness of each rank does.
            log.warning(
                "The checkpoint was written by %d ranks, this run has %d: generator states start afresh.",
                len(state["rng"]), self.context.world_size,
            )

    def _catch_up_target(self) -> None:
        """A checkpoint whose evaluations were checked against no or another target (written before the run had
        this one): rank 0 finds where the run reached it in the evaluations it logged up to the checkpoint."""
        progress = self.progress
        if self.target is None or progress.target == self.target.as_dict() or not self.context.is_main:
            return
        records = [r for r in read_metrics(self.output_dir / METRICS_FILE) if r["step"] <= progress.step]
        reached = first_reached(records, self.target)
        progress.target = self.target.as_dict()
        progress.steps_to_target = reached and reached.step
        progress.time_to_target_s = reached and reached.seconds

    # ------------------------------------------------------------------------------------------ non-finite steps
    def _check_skips(self) -> None:
        """Read the skipped-step counts and apply `trainer.nonfinite` (raises Diverged or Rewind). Every rank
        reads the same agreed counts at the same step, so all ranks act together."""
        counts, policy, progress = self.skips.read(), self.nonfinite, self.progress
        progress.skipped_steps += counts.skipped
        loss_scale = self.precision.loss_scale
        if loss_scale is not None:  # fp16: GradScaler's skips are its own; a collapsed scale is a divergence
            if (scale := loss_scale.item()) < policy.min_loss_scale:
                raise Diverged(progress.step, f"the fp16 loss scale fell to {scale:g}, below "
                                              f"trainer.min_loss_scale={policy.min_loss_scale:g}")
            return
        if not counts.skipped:
            return
        reason = "the loss or the gradients were not finite"
        if policy.policy == "stop":
            raise Diverged(counts.first, f"{reason} (trainer.nonfinite=stop)")
        if policy.policy == "rewind":
            raise Rewind(counts.first, reason)
        if counts.consecutive >= policy.max_consecutive_skips:
            raise Diverged(counts.streak_start, f"{reason} in {counts.consecutive} steps in a row "
                                                f"(trainer.max_consecutive_skips={policy.max_consecutive_skips})")
        log.warning("step %d: %s; %d step(s) skipped, %d in this run", counts.first, reason, counts.skipped,
                    progress.skipped_steps)

    def _check_state(self) -> None:
        """Before an evaluation or a checkpoint: no pending non-finite step, finite weights, buffers and
        optimizer state (a finite update can still overflow them)."""
        self._check_skips()
        tensors = [*self.model.parameters(), *self.model.buffers(), *tensors_in(self.optimizer.state)]
        if any_nonfinite(tensors, self.context.device):
            raise self._nonfinite_now("the weights or the optimizer state are no longer finite (an update overflowed)")

    def _nonfinite_now(self, reason: str) -> Rewind | Diverged:
        """What a non-finite model at this step leads to: a rewind under `trainer.nonfinite=rewind`, else the end."""
        return (Rewind if self.nonfinite.policy == "rewind" else Diverged)(self.progress.step, reason)

    def _rewind(self, rewind: Rewind) -> None:
        """Back to the last checkpoint, then past every batch up to step `rewind.step`: their updates are dropped
        (counted as skipped steps), the schedule and the data move on as if they had been skipped."""
        policy, rewinds = self.nonfinite, self.progress.rewinds + 1
        if rewinds > policy.max_rewinds:
            raise Diverged(rewind.step, f"{rewind.reason}, after {policy.max_rewinds} rewinds "
                                        f"(trainer.max_rewinds={policy.max_rewinds})")
        state = self._load_last()
        if state is None:
            raise Diverged(rewind.step, f"{rewind.reason}, with no checkpoint to rewind to")
        self._restore(state)
        progress, resumed_from = self.progress, self.progress.step
        while progress.step < rewind.step:
            self._advance()
            self.scheduler.step()
        progress.rewinds = rewinds
        progress.skipped_steps += rewind.step - resumed_from
        self.skips.read()  # the counts of the dropped steps are spent
        self._window.reset()
        log.warning("step %d: %s; rewound to step %d of %s and moved past the batches up to step %d "
                    "(rewind %d of at most %d)", rewind.step, rewind.reason, resumed_from,
                    self.checkpoints.latest[0], rewind.step, rewinds, policy.max_rewinds)

    # ---------------------------------------------------------------------------------------------- evaluation
    def _evaluate(self, final: bool = False) -> bool:
        """Evaluate (`final`: at the end of training), log, track the best metrics; True when the primary metric
        improved."""
        self._check_state()  # a non-finite model is never scored
        started, train_s = time.perf_counter(), self._elapsed() - self.progress.paused_s
        if self.sharded:
            parallel.sync_buffers(self.model)  # every rank evaluates the model a checkpoint keeps
        with parallel.gathered(self.model):
            metrics = evaluate(
                self.workload, self.eval_model, self.eval_loaders,
                lambda loader: device_batches(loader, self.context.device, self.channels_last, self.workload.on_device),
                self.precision, self.context.device, final,
            )
        progress = self.progress
        if nonfinite := sorted(name for name, value in metrics.items() if not math.isfinite(value)):
            raise self._nonfinite_now(
                f"the evaluation gave {', '.join(f'{n}={metrics[n]}' for n in nonfinite)} (the outputs overflow)")
        progress.last_eval_step = progress.step
        progress.last_metrics = metrics
        if self.target and progress.steps_to_target is None and self.target.reached(metrics.get(self.target.metric)):
            progress.steps_to_target, progress.time_to_target_s = progress.step, train_s
        improved = False
        for name, goal in self.workload.metric_goals.items():
            if name not in metrics:
                continue
            best = progress.best.get(name)
            if best is None or (metrics[name] > best if goal == "max" else metrics[name] < best):
                progress.best[name] = metrics[name]
                improved |= name == self.workload.primary_metric
        self.logger.log(progress.step, {f"eval/{k}": v for k, v in metrics.items()} | {"epoch": self._epoch_float(),
                                                                                       TRAIN_ELAPSED: train_s})
        progress.paused_s += time.perf_counter() - started
        log.info("step %d eval: %s", progress.step, metrics_text(metrics))
        return improved

    def _epoch_float(self) -> float:
        return self.progress.epoch + self.progress.step_in_epoch / self.plan.steps_per_epoch(self.progress.epoch)

    # -------------------------------------------------------------------------------------------------- training
    def _optimizer_step(
        self, micro_batches: Iterator[Any], num_micro_batches: int, global_count: float
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimizer step over this rank's micro-batches, not applied when non-finite (nonfinite.py); returns
        (local loss sum, 1.0 on the device when the step was skipped, learning rate used)."""
        self.buffers.take()
        loss_sum = accumulate_gradients(
            self.train_model, self.workload.loss, micro_batches, num_micro_batches, global_count,
            self.context.world_size, self.precision,
        )
        lr = self.optimizer.param_groups[0]["lr"]
        result = self.precision.step(self.optimizer, self.model.parameters(), self.grad_clip_norm, loss_sum)
        skipped = result.skipped
        self.buffers.restore_where(skipped, result.skipped_known)
        self.skips.add(skipped, self.progress.step + 1, result.skipped_known)
        self._skipped_on_host = result.skipped_known is True  # then `trainer.nonfinite` acts at once
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum, skipped, lr

    def _at_step_boundary(self, preemption: PreemptionFlag) -> str:
        """Before each optimizer step: the planned stop, then what the ranks' vote of the previous boundary decided
        (stop on a preemption signal; write a checkpoint due by time), then this boundary's vote. The reason to
        stop, or ''.

        `trainer.stop_at_step` is known to every rank and needs no vote. A signal or a due checkpoint is seen by
        each rank on its own (signals reach the ranks at different moments, clocks differ); the vote cast here is
        read at the next boundary, so every rank acts after the same step without a device sync (DeferredVote)."""
        stop_at_step, progress = self.intervals.stop_at_step, self.progress
        if stop_at_step is not None and progress.step >= stop_at_step:
            return f"trainer.stop_at_step={stop_at_step}"
        signal_number, checkpoint_due = self.vote.result()
        if signal_number:
            return signal.Signals(signal_number).name
        if checkpoint_due and self._last_checkpoint[0] != progress.step:
            pause_start = time.perf_counter()
            minutes = (time.monotonic() - self._last_checkpoint[1]) / 60
            self._save_checkpoint()
            log.info("step %d: checkpoint (%.1f minutes after the previous one)", progress.step, minutes)
            self._window.pause(time.perf_counter() - pause_start)
        every_s = self.intervals.checkpoint_seconds
        due = every_s is not None and time.monotonic() - self._last_checkpoint[1] >= every_s
        self.vote.cast([preemption.signal_number, int(due)])
        return ""

    def fit(self) -> dict[str, Any]:
        progress = self.progress  # replaced by a rewind: read self.progress after training
        self.train_model.train()
        self._window = _LogWindow(self.context.device)
        self._run_start, self._elapsed_before = time.perf_counter(), progress.elapsed_s
        self._segment_start = (progress.step, self._run_start)  # for the ETA
        self._last_checkpoint = (progress.step, time.monotonic())  # (step, time): a resumed run's is its start
        stop_reason, diverged = "", None
        with PreemptionFlag() as preemption:
            try:
                stop_reason = self._train(preemption)
            except Diverged as error:  # raised on every rank at the same step: the ranks agree on the counts
                diverged = error
        self.vote.close()  # not after any other exception: waiting on a rank that failed would hang this one

        summary = self._diverged_summary(diverged) if diverged else self._summary(stop_reason)
        if self.context.is_main and not stop_reason:
            (self.output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
            self.logger.write_summary(summary)
        self.logger.close()
        if diverged:
            if self.context.is_main:
                log.error(diverged_message(summary))
            return summary
        if stop_reason and self.context.is_main:
            log.warning(resume_instructions(stop_reason, self.progress.step, self.total_steps,
                                            self.checkpoints.last_path))
        log.info(summary_line(summary, self.total_steps, self.workload.columns()))
        return summary

    def _train(self, preemption: PreemptionFlag) -> str:
        """Train to the end (evaluate and checkpoint there) or to a stop; rewinds as `trainer.nonfinite` asks.
        The stop reason, or ''."""
        while True:  # self.progress is another object after each rewind
            try:
                stop_reason = ""
                while self.progress.step < self.total_steps and not stop_reason:
                    stop_reason = self._train_epoch(preemption)
                if stop_reason:
                    self._save_checkpoint()
                elif self.progress.last_eval_step != self.progress.step:
                    # Only reachable when a resumed run finds nothing left to train and no final evaluation yet.
                    improved = self._evaluate(final=True)
                    self._save_checkpoint(is_best=improved)
                return stop_reason
            except Rewind as rewind:
                self._rewind(rewind)

    def _train_epoch(self, preemption: PreemptionFlag) -> str:
        """Train from the current position to the end of its epoch (or of training); the stop reason, or ''."""
        progress = self.progress
        self.train_sampler.set_position(progress.epoch, progress.step_in_epoch)
        if progress.step_in_epoch == 0:  # not when resuming mid-epoch: carried state comes from the checkpoint
            self.workload.start_epoch(progress.epoch)
        micro_batches = device_batches(
            self.train_loader, self.context.device, self.channels_last, self.workload.on_device, self._window.data_wait
        )
        for num_micro_batches, global_count in self.train_sampler.steps():
            if progress.step >= self.total_steps:
                break
            stop_reason = self._at_step_boundary(preemption)
            if stop_reason:
                return stop_reason
            loss_sum, skipped, lr = self._optimizer_step(micro_batches, num_micro_batches, global_count)
            epoch_ended = self._advance()
            self._window.add(loss_sum, skipped, global_count)
            self._after_step(lr, epoch_ended)
        return ""

    def _advance(self) -> bool:
        """Move the position on by one optimizer step; True when that ended an epoch."""
        progress = self.progress
        progress.step += 1
        progress.step_in_epoch += 1
        epoch_ended = progress.step_in_epoch == self.plan.steps_per_epoch(progress.epoch)
        if epoch_ended:
            progress.epoch += 1
            progress.step_in_epoch = 0
        return epoch_ended

    def _after_step(self, lr: float, epoch_ended: bool) -> None:
        """Logging, evaluation and checkpoints due after the step just taken."""
        if self._skipped_on_host:
            self._check_skips()
        every, progress = self.intervals, self.progress
        is_last = progress.step == self.total_steps
        if self._window.steps == every.log_steps or is_last:
            self._log_window(lr)
        due_eval = bool(every.eval_steps and progress.step % every.eval_steps == 0) or bool(
            epoch_ended and every.eval_epochs and progress.epoch % every.eval_epochs == 0
        )
        pause_start = time.perf_counter()
        improved = self._evaluate(final=is_last) if due_eval or is_last else False
        if due_eval or is_last or (every.checkpoint_steps and progress.step % every.checkpoint_steps == 0):
            self._save_checkpoint(is_best=improved)
        self._window.pause(time.perf_counter() - pause_start)  # throughput counts training time only

    def _elapsed(self) -> float:
        """Training wall time over all segments of the run (a resumed run adds to the stopped one's)."""
        return self._elapsed_before + time.perf_counter() - self._run_start

    def _log_window(self, lr: float) -> None:
        self._check_skips()
        window, progress = self._window, self.progress
        elapsed = window.elapsed()
        sums = window.reduced_sums(self.workload.pop_train_stats())
        # The count of the applied steps: a skipped step's loss is left out (NaN when every step was skipped).
        loss, scored = sums.pop("loss"), sums.pop("scored")
        mean_loss = loss / scored if scored else float("nan")
        throughput = window.count / elapsed
        data_wait = window.data_wait.share(elapsed)
        if SKIPPED in sums:  # cumulative: a run's count of replaced examples, whatever the logging interval
            progress.skipped_train = (progress.skipped_train or 0) + round(sums.pop(SKIPPED))
        skipped = {} if progress.skipped_train is None else {"train/skipped_train": progress.skipped_train}
        self.logger.log(progress.step, {
            "train/loss": mean_loss, "train/lr": lr, "train/throughput": throughput, "epoch": self._epoch_float(),
            "train/skipped_steps": progress.skipped_steps, "train/data_wait": data_wait,
        } | skipped | {f"train/{name}": value for name, value in self.workload.train_metrics(sums).items()})
        segment_step, segment_time = self._segment_start
        seconds_per_step = (time.perf_counter() - segment_time) / (progress.step - segment_step)  # with evaluations
        self.logger.advance(window.steps, TrainingStatus(
            step=progress.step, total_steps=self.total_steps, loss=mean_loss, lr=lr, throughput=throughput,
            unit=self.workload.count_unit, elapsed_s=self._elapsed(),
            eta_s=seconds_per_step * (self.total_steps - progress.step), skipped_steps=progress.skipped_steps,
            data_wait=data_wait,
        ))
        window.reset()

    def _summary(self, stop_reason: str) -> dict[str, Any]:
        """Final metrics under the paper's column names, the best of each, and how long it took."""
        progress = self.progress
        summary: dict[str, Any] = dict(progress.last_metrics)
        summary |= {f"best_{name}": value for name, value in progress.best.items()}
        if progress.skipped_train is not None:
            summary["skipped_train"] = progress.skipped_train
        summary |= self._run_facts()
        if stop_reason:
            summary |= {"preempted": True, "stop_reason": stop_reason}
        return summary

    def _run_facts(self) -> dict[str, Any]:
        progress = self.progress
        return {
            "skipped_steps": progress.skipped_steps,
            "steps": progress.step,
            "epochs": round(self._epoch_float(), 4),
            "wall_time_s": progress.elapsed_s,
            "world_size": self.context.world_size,
            "output_dir": str(self.output_dir),
        } | target_summary(self.target, progress.steps_to_target, progress.time_to_target_s)

    def _diverged_summary(self, error: Diverged) -> dict[str, Any]:
        """A diverged run's record: where and why, the last finite checkpoint (rank 0 wrote or read it: every
        checkpoint is finite), and no metric (never scored)."""
        latest = self.checkpoints.latest
        return {
            "diverged": True, "diverged_at_step": error.step, "stop_reason": "diverged",
            "diverged_reason": error.reason, "precision": self.precision.mode,
            "last_checkpoint": str(latest[0]) if latest else None, "last_checkpoint_step": latest[1] if latest else None,
        } | self._run_facts()


@dataclass(frozen=True)
class _Intervals:
    """How often the loop logs, evaluates and checkpoints (null: never), and the planned stop."""

    log_steps: int
    eval_steps: int | None
    eval_epochs: int | None
    checkpoint_steps: int | None
    stop_at_step: int | None
    checkpoint_seconds: float | None  # wall time between checkpoints (trainer.checkpoint_every_minutes)


class _LogWindow:
    """Loss and count of the steps since the last log record, and the training time they took."""

    def __init__(self, device: torch.device) -> None:
        # On the device, so no host sync per step: the loss of the applied steps, and their count.
        self.loss = torch.zeros((), device=device)
        self.scored = torch.zeros((), dtype=torch.float64, device=device)
        self.data_wait = DataWait()  # the training loop's time blocked on its loader
        self.reset()

    def reset(self) -> None:
        self.loss.zero_()
        self.scored.zero_()
        self.count, self.steps, self.start = 0.0, 0, time.perf_counter()
        self.data_wait.seconds = 0.0

    def add(self, loss_sum: torch.Tensor, skipped: torch.Tensor, count: float) -> None:
        applied = skipped == 0
        self.loss += torch.where(applied, loss_sum, 0.0)  # a select: a skipped step's NaN stays out
        self.scored += applied.double() * count
        self.count += count
        self.steps += 1

    def pause(self, seconds: float) -> None:
        """Leave `seconds` (evaluation, checkpoints) out of the throughput."""
        self.start += seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def reduced_sums(self, extra: dict[str, float]) -> dict[str, float]:
        """The window's loss and the workload's `extra` sums, each added over ranks (one all-reduce)."""
        names = sorted(extra)
        values = torch.stack([self.loss.double(), self.scored, *(torch.tensor(float(extra[n]), dtype=torch.float64,
                                                                 device=self.loss.device) for n in names)])
        summed = distributed.all_reduce_sum(values).tolist()
        return {"loss": summed[0], "scored": summed[1]} | dict(zip(names, summed[2:]))
