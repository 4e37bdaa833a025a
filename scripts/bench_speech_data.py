"""Throughput of the LibriSpeech data path alone: FLAC decode, speed perturbation, log-mel features and collate.

Reads the learnable synthetic twin (short utterances of ~1 s; LibriSpeech's average ~12 s, so audio-seconds/s is
the figure that carries over, utterances/s less so) as a training set, through a DataLoader with each worker count
given, and prints utterances/s and audio-seconds/s (seconds of original audio, before speed perturbation). The
first batch of each pass (worker start-up) is not timed.

    python scripts/bench_speech_data.py [--workers 0 2] [--passes 2] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from data.librispeech import LibriSpeechDataset, LogMelFeatures, collate
from data.synthetic_librispeech import make_synthetic_librispeech


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to time")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--passes", type=int, default=2, help="passes over the 512 training utterances")
    parser.add_argument("--directory", type=Path, default=Path(tempfile.gettempdir()) / "novograd-bench-speech")
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
    print(json.dumps(results))


if __name__ == "__main__":
    main()
