"""Throughput of the LibriSpeech data path alone: FLAC decode, speed perturbation, log-mel features and collate.

Reads the learnable synthetic twin (short utterances of ~1 s; LibriSpeech's average ~12 s, so audio-seconds/s is
the figure that carries over, utterances/s less so) as a training set, through a DataLoader with each worker count
given, and prints utterances/s and audio-seconds/s (seconds of original audio, before speed perturbation). The
first batch of each pass (worker start-up) is not timed. With `--manifests`, it also prints the share of padded
frames in table4's micro-batches (256 utterances a step, 32 a micro-batch), with each step sorted by duration as
the Jasper workload does and without.

    python scripts/bench_speech_data.py [--workers 0 2] [--passes 2] [--batch-size 16] [--manifests M.json ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from data.librispeech import LibriSpeechDataset, LogMelFeatures, collate, read_manifest
from data.synthetic_librispeech import make_synthetic_librispeech
from novograd.engine.plans import CountPlan


def throughput(dataset: LibriSpeechDataset, workers: int, batch_size: int, passes: int) -> tuple[float, float]:
    """(utterances/s, audio-seconds/s) over `passes` shuffled passes of the dataset, the first batch of each
    excluded."""
    utterances, audio_seconds, elapsed = 0, 0.0, 0.0
    for _ in range(passes):
        order = torch.randperm(len(dataset)).tolist()
        loader = DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=workers, collate_fn=collate)
        iterator = iter(loader)
        next(iterator)  # worker start-up and the first batch: not timed
        start = time.perf_counter()
        for _batch in iterator:
            pass
        elapsed += time.perf_counter() - start
        utterances += len(order) - batch_size
        audio_seconds += float(dataset.durations[order[batch_size:]].sum())
    return utterances / elapsed, audio_seconds / elapsed


def padding_fraction(
    durations: np.ndarray, batch_size: int, micro_batch_size: int, sort: bool, steps: int
) -> float:
    """The share of padded frames in the micro-batches of the first `steps` steps of Jasper's batch plan (each
    micro-batch padded to its longest utterance), with each step sorted by duration (`sort`) or not."""
    plan = CountPlan(len(durations), batch_size, micro_batch_size, seed=0, lengths=durations if sort else None)
    padded = valid = 0.0
    for step in plan.epoch_steps(0)[:steps]:
        for micro in plan.micro_batches(step, world_size=1):
            padded += len(micro) * durations[micro].max()
            valid += durations[micro].sum()
    return 1.0 - valid / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to time")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--passes", type=int, default=2, help="passes over the 512 training utterances")
    parser.add_argument("--directory", type=Path, default=Path(tempfile.gettempdir()) / "novograd-bench-speech")
    parser.add_argument("--manifests", type=Path, nargs="*", default=[],
                        help="real manifests (e.g. the three training splits) for the padding of table4's batches")
    args = parser.parse_args()

    torch.set_num_threads(1)  # as in a DataLoader worker, so 0 workers is one core's worth
    manifests = make_synthetic_librispeech(args.directory, kind="learnable", num_train=512, num_eval=1, seed=0)
    dataset = LibriSpeechDataset(
        [manifests["train-clean-100"]], LogMelFeatures(), train=True, speed_perturb=[0.9, 1.0, 1.1]
    )
    print(f"{len(dataset)} utterances, mean {dataset.durations.mean():.2f} s, speed perturbation on")
    print(f"{'workers':>8} {'utterances/s':>14} {'audio s/s':>10}")
    results = {}
    for workers in args.workers:
        per_second, audio_per_second = throughput(dataset, workers, args.batch_size, args.passes)
        results[workers] = {"utterances_per_s": round(per_second, 1), "audio_seconds_per_s": round(audio_per_second)}
        print(f"{workers:>8} {per_second:>14.1f} {audio_per_second:>10.0f}")
    if args.manifests:  # table4's batches: 256 utterances, micro-batches of 32
        durations = np.concatenate([np.asarray(read_manifest(m)[1]) for m in args.manifests])
        durations = durations[durations <= 16.7]
        results["padding"] = {
            name: round(float(padding_fraction(durations, 256, 32, sort, steps=200)), 4)
            for name, sort in (("sorted_steps", True), ("random_micro_batches", False))
        }
        print(f"padding of 200 steps of 256 in micro-batches of 32: {results['padding']}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
