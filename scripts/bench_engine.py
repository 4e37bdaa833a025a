"""Engine overhead: optimizer steps per second through `novograd.engine` against a bare PyTorch loop.

Both do the same work on the CPU: the ResNet smoke model (resnet_v2_tiny), the synthetic ImageNet twin read through
the real decode and transform path, global batch 8 as 2 accumulated micro-batches of 4, NovoGrad, the cosine
schedule. The engine adds its sampler, per-sample seeding, the per-step count all-reduce, logging and the
preemption check; evaluation and checkpoints are outside the timed windows. Runs are interleaved, and which of the
two goes first alternates between repeats, so that machine noise and whatever one run leaves behind (allocator,
caches) hit both alike; the ratio of medians is printed (target: >= 0.95).

    python scripts/bench_engine.py [--steps 40] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from novograd.engine import run
from novograd.engine.compose import compose_config

OVERRIDES = ["experiment=table1/novograd_100ep", "debug=smoke", "logger=none", "trainer.eval_every_steps=null"]


def engine_steps_per_second(steps: int, output_dir: Path, overrides: list[str] = OVERRIDES) -> float:
    """Steps/s of the engine over `steps` steps after a first window of `steps` steps (warm-up, discarded)."""
    cfg = compose_config(
        [*overrides, f"trainer.max_steps={2 * steps}", f"trainer.log_every_steps={steps}"], output_dir
    )
    run(cfg)
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if "train/throughput" in r][-1]  # the second window
    return timed["train/throughput"] / cfg.trainer.batch_size


def bare_steps_per_second(steps: int, overrides: list[str] = OVERRIDES) -> float:
    """The same model, data, batch, accumulation, optimizer and schedule in a plain PyTorch loop, on the device
    `overrides` name (trainer.device; the CPU by default)."""
    from hydra.utils import instantiate

    from data.imagenet import normalize_images
    from novograd.optim.factory import build_optimizer
    from novograd.optim.schedules import build_scheduler

    cfg = compose_config(overrides, "unused")
    device = torch.device("cpu" if cfg.trainer.device == "auto" else cfg.trainer.device)
    torch.manual_seed(cfg.seed)
    workload = instantiate(cfg.workload, model=cfg.model, data=cfg.data, _recursive_=False)
    model = workload.build_model().to(device)
    train_set, _ = workload.build_datasets()
    optimizer = build_optimizer(cfg.optimizer, model)
    scheduler = build_scheduler(cfg.scheduler, optimizer, 2 * steps)
    micro, accumulation = cfg.trainer.micro_batch_size, cfg.trainer.batch_size // cfg.trainer.micro_batch_size
    loader = torch.utils.data.DataLoader(train_set, batch_size=micro, shuffle=True, drop_last=True)

    def batches():
        while True:
            yield from loader

    stream = batches()
    model.train()
    start = 0.0
    for step in range(2 * steps):
        if step == steps:  # the first `steps` steps are warm-up, as for the engine
            synchronize(device)
            start = time.perf_counter()
        for _ in range(accumulation):
            batch = next(stream)  # data.imagenet.LabelledImage of tensors
            images, labels = (tensor.to(device, non_blocking=True) for tensor in (batch.image, batch.label))
            images = normalize_images(images)  # the loader's uint8 images as the model's input, as on_device does
            loss = torch.nn.functional.cross_entropy(model(images), labels, reduction="sum") / cfg.trainer.batch_size
            loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return steps / (time.perf_counter() - start)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps per run (after as many warm-up)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved runs of each")
    args = parser.parse_args()

    engine, bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            if repeat % 2:  # odd repeats run the bare loop first
                bare.append(bare_steps_per_second(args.steps))
            engine.append(engine_steps_per_second(args.steps, Path(tmp) / f"run{repeat}"))
            if not repeat % 2:
                bare.append(bare_steps_per_second(args.steps))
            print(f"repeat {repeat}: engine {engine[-1]:.2f} steps/s, bare loop {bare[-1]:.2f} steps/s", flush=True)
    ratio = statistics.median(engine) / statistics.median(bare)
    print(
        f"median: engine {statistics.median(engine):.2f} steps/s, bare loop {statistics.median(bare):.2f} steps/s, "
        f"engine/bare = {ratio:.3f} (target >= 0.95)"
    )


if __name__ == "__main__":
    main()
