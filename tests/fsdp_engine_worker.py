"""Run by tests/test_engine_fsdp.py under torchrun (2 gloo CPU ranks, one thread each): the reduce-scatters of
gradient accumulation counted, every workload's smoke model trained a few steps under DDP and under FSDP2
(`trainer.parallelism=fsdp`), the four optimizers among them, then a sharded run stopped at step 2 and resumed by
the same command, and one stopped at step 2 for the test to resume on one rank. All in one process group, one
launch: the output directories are argv[1]/<case>/<layout>.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest import mock

import torch
import torch.distributed as dist
from torch import nn

from novograd.engine import run
from novograd.engine.compose import compose_config

COMMON = ["debug=smoke", "logger=none", "trainer.max_steps=3", "trainer.eval_every_steps=null",
          "trainer.checkpoint_every_steps=1", "trainer.keep_last_k=3"]  # every step's weights, for the tests
# Micro-batches of a quarter of the batch: 2 per rank and step, so both layouts accumulate.
EXAMPLES, TOKENS = "trainer.micro_batch_size=2", "trainer.micro_batch_size=512"
# One case per workload and each optimizer at least once; dropout off, so that both layouts draw nothing else.
CASES = {
    "resnet_sgd": ["experiment=table1/sgd_100ep", EXAMPLES],
    "jasper_adam": ["experiment=table4/adam", "model.dropout=0.0", EXAMPLES],
    # The row's lr, 2.5e-4 at the start of a 3-step cosine, moves the weights by 6e-5 in the last step: a larger
    # one, so that a step is far outside the comparison's tolerance.
    "transformer_xl_adamw": ["experiment=table6/adamw_12b", "model.dropout=0.0", "optimizer.lr=0.01", EXAMPLES],
    "transformer_novograd": ["experiment=table7/novograd", "model.dropout=0.0", "model.attention_dropout=0.0", TOKENS],
}
# Mixed precision under autocast on both layouts. Jasper's BatchNorms keep the sharded run's gathered weights in fp32,
# as DDP's; Transformer-XL's are gathered in bf16 or fp16, where DDP's autocast casts each matmul's weight as it goes.
MIXED_PRECISION_CASES = {
    "jasper_novograd_bf16": ["experiment=table4/novograd", "model.dropout=0.0", "trainer.precision=bf16", EXAMPLES],
    "transformer_xl_novograd_bf16": ["experiment=table6/novograd_12b", "model.dropout=0.0", "trainer.precision=bf16",
                                     EXAMPLES],
    # fp16: weights gathered in fp16, GradScaler's loss scaling and inf checks on the sharded gradients.
    "transformer_xl_novograd_fp16": ["experiment=table6/novograd_12b", "model.dropout=0.0", "trainer.precision=fp16",
                                     EXAMPLES],
}
RESUME_CASE = "resnet_novograd"  # BatchNorm buffers, a checkpoint's shards, NovoGrad's layer-wise state
RESUME = ["experiment=table1/novograd_100ep", EXAMPLES]
REDUCE_SCATTERS = "reduce_scatters.json"


def train(out: Path, overrides: list[str]) -> None:
    run(compose_config([*COMMON, *overrides, f"trainer.output_dir={out}"], out))


def count_reduce_scatters() -> dict[str, int]:
    """FSDP2's reduce-scatters (`dist.reduce_scatter_single`, looked up at each call) over three micro-batches of
    a model of two sharded blocks, accumulated into one optimizer step, and as three steps of one."""
    from novograd.engine import parallel
    from novograd.engine.accumulation import accumulate_gradients
    from novograd.engine.precision import Precision

    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    model.block_types = (nn.Linear,)  # type: ignore[assignment]
    parallel.shard_model(model, None)  # the root holds no parameter of its own: two reducing units
    batches = [torch.randn(2, 4) for _ in range(3)]
    counts = {}
    for per_step, name in ((3, "3 micro-batches x 1 step"), (1, "1 micro-batch x 3 steps")):
        with mock.patch.object(dist, "reduce_scatter_single", wraps=dist.reduce_scatter_single) as reduce:
            for start in range(0, len(batches), per_step):
                accumulate_gradients(model, lambda m, x: m(x).square().sum(), iter(batches[start:start + per_step]),
                                     per_step, 12.0, 2, Precision("fp32", torch.device("cpu")))
        counts[name] = reduce.call_count
    return counts


def main(root: Path) -> None:
    counts = count_reduce_scatters()
    if dist.get_rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        (root / REDUCE_SCATTERS).write_text(json.dumps(counts))
    for case, overrides in {**CASES, **MIXED_PRECISION_CASES}.items():
        for layout in ("ddp", "fsdp"):
            train(root / case / layout, [*overrides, f"trainer.parallelism={layout}"])
    sharded = [*RESUME, "trainer.parallelism=fsdp"]
    train(root / RESUME_CASE / "fsdp", sharded)
    train(root / RESUME_CASE / "resumed", [*sharded, "trainer.stop_at_step=2"])
    train(root / RESUME_CASE / "resumed", sharded)  # the same command resumes
    train(root / RESUME_CASE / "one_rank", [*sharded, "trainer.stop_at_step=2"])  # the test resumes it alone


if __name__ == "__main__":
    dist.init_process_group("gloo")  # one group for every run (a run that makes its own destroys it at its end)
    main(Path(sys.argv[1]))  # a failure ends this process, and torchrun the others
    dist.barrier()
    dist.destroy_process_group()
