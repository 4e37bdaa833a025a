"""Run by tests/test_engine_fsdp.py under torchrun (2 gloo CPU ranks, one thread each): every workload's smoke
model trained a few steps under DDP and under FSDP2 (`trainer.parallelism=fsdp`), the four optimizers among them,
then a sharded run stopped at step 2 and resumed by the same command, and one stopped at step 2 for the test to
resume on one rank. All in one process group, one launch: the output directories are argv[1]/<case>/<layout>.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch.distributed as dist

from novograd.engine import run
from novograd.engine.compose import compose_config

COMMON = ["debug=smoke", "logger=none", "trainer.max_steps=3", "trainer.eval_every_steps=null"]
# Micro-batches of a quarter of the batch: 2 per rank and step, so both layouts accumulate.
EXAMPLES, TOKENS = "trainer.micro_batch_size=2", "trainer.micro_batch_size=512"
# One case per workload and each optimizer at least once; dropout off, so that both layouts draw nothing else.
CASES = {
    "resnet_sgd": ["experiment=table1/sgd_100ep", EXAMPLES],
    "jasper_adam": ["experiment=table4/adam", "model.dropout=0.0", EXAMPLES],
    "transformer_xl_adamw": ["experiment=table6/adamw_12b", "model.dropout=0.0", EXAMPLES],
    "transformer_novograd": ["experiment=table7/novograd", "model.dropout=0.0", "model.attention_dropout=0.0", TOKENS],
}
RESUME_CASE = "resnet_novograd"  # BatchNorm buffers, a checkpoint's shards, NovoGrad's layer-wise state
RESUME = ["experiment=table1/novograd_100ep", "trainer.keep_last_k=5", EXAMPLES]


def train(out: Path, overrides: list[str]) -> None:
    run(compose_config([*COMMON, *overrides, f"trainer.output_dir={out}"], out))


def main(root: Path) -> None:
    for case, overrides in CASES.items():
        for layout in ("ddp", "fsdp"):
            train(root / case / layout, [*overrides, f"trainer.parallelism={layout}"])
    sharded = [*RESUME, "trainer.parallelism=fsdp"]
    train(root / RESUME_CASE / "fsdp", sharded)
    train(root / RESUME_CASE / "resumed", [*sharded, "trainer.stop_at_step=2"])
    train(root / RESUME_CASE / "resumed", sharded)  # the same command resumes
    train(root / RESUME_CASE / "one_rank", [*sharded, "trainer.stop_at_step=2"])  # the test resumes it alone


if __name__ == "__main__":
    dist.init_process_group("gloo")  # one group for every run (a run that makes its own destroys it at its end)
    try:
        main(Path(sys.argv[1]))
    finally:
        dist.barrier()
        dist.destroy_process_group()
