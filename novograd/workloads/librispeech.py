"""Jasper 10x5 DR on LibriSpeech (Tables 4-5, Figure 3): CTC training, greedy decoding, corpus WER on four sets.

Batches: a step is `trainer.batch_size` utterances drawn uniformly (the paper's batch of 256), sorted by duration
before it is cut into micro-batches, so each micro-batch holds utterances of similar length and little padding
(`data.micro_batches=random` cuts the step in its random order instead, as the authors' runs did).
Loss: CTC summed over time per utterance (not divided by its length) and summed over the micro-batch; the engine
divides by the step's utterance count, which averages over the batch as the authors' runs did. A transcript that
cannot be aligned to its frames (longer than them, repeats counted twice) gives an infinite CTC loss: it is zeroed,
contributes no gradient, and is counted (`train/ctc_infeasible`).
Unreadable audio (`data.skip_corrupt=true`): a training utterance that cannot be read is replaced by the next
readable one (the step keeps its count) and counted (`skipped_train`); an evaluation utterance that cannot be
read is not scored, and counted (`skipped_<set>`, e.g. `skipped_dev_clean`).
Metrics: corpus word error rate (total word edits / total reference words, in percent) per evaluation set, under
the paper's column names `wer_dev_clean`, `wer_dev_other`, `wer_test_clean`, `wer_test_other`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from data.librispeech import (BLANK, NUM_OUTPUTS, build_librispeech_datasets, check_prepared, decode,
                             word_error_counts)
from data.librispeech import collate as collate_utterances
from novograd.engine.plans import BatchPlan, CountPlan
from novograd.workload import Workload

Batch = dict[str, torch.Tensor]
#: `data.micro_batches`: cut a step into micro-batches after sorting it by duration, or in its random order.
MICRO_BATCHES = ("by_length", "random")


class LibriSpeechWorkload(Workload):
    """Speech recognition with CTC on LibriSpeech, or on its synthetic twin when `data.synthetic` is set.

    Args:
        model: the model config (configs/model/jasper*.yaml), instantiated with hydra.
        data: the data config (configs/data/librispeech.yaml documents every key).
    """

    name = "librispeech"
    metric_goals = {
        "wer_dev_clean": "min", "wer_dev_other": "min", "wer_test_clean": "min", "wer_test_other": "min",
    }
    primary_metric = "wer_dev_clean"
    count_unit = "utterances"

    def __init__(self, model: Mapping[str, Any], data: Mapping[str, Any]) -> None:
        self.model_cfg = model
        self.data_cfg = data
        if data["micro_batches"] not in MICRO_BATCHES:
            raise ValueError(f"data.micro_batches must be one of {MICRO_BATCHES}, got {data['micro_batches']!r}")
        self._stats = {"ctc_infeasible": 0.0, "skipped": 0.0, "padded_frames": 0.0, "frames": 0.0}

    def build_model(self) -> nn.Module:
        from hydra.utils import instantiate

        return instantiate(self.model_cfg, in_features=self.data_cfg["features"]["num_mels"], num_classes=NUM_OUTPUTS)

    @classmethod
    def check_data(cls, data: Mapping[str, Any]) -> None:
        if not data.get("synthetic"):
            check_prepared(data["root"], [*data["train_manifests"], *data["eval_manifests"].values()])

    def build_datasets(self) -> tuple[Dataset, dict[str, Dataset]]:
        data = self.data_cfg
        root = data["root"]
        if data.get("synthetic"):
            from data.synthetic_librispeech import make_synthetic_librispeech

            made = make_synthetic_librispeech(**data["synthetic"])
            root = next(iter(made.values())).parent  # all its manifests lie in one folder
        keys = ("train_manifests", "eval_manifests", "features", "speed_perturb", "max_duration", "skip_corrupt")
        return build_librispeech_datasets(root, **{key: data[key] for key in keys})

    def batch_plan(self, train_set: Dataset, batch_size: int, micro_batch_size: int, seed: int) -> BatchPlan:
        durations = np.asarray(train_set.durations)  # type: ignore[attr-defined]
        # Without lengths the plan cuts each step in its (random) order.
        lengths = durations if self.data_cfg["micro_batches"] == "by_length" else None
        return CountPlan(len(durations), batch_size, micro_batch_size, seed, lengths=lengths)

    def collate(self, samples: list[Any]) -> Batch:
        return collate_utterances(samples, pad_to=self.data_cfg["pad_to"])

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        logits, frames = model(batch["features"], batch["feature_lengths"])
        losses, infeasible = ctc_losses(logits, frames, batch["tokens"], batch["token_lengths"])
        # Host-side statistics without a device sync: added up lazily as tensors.
        self._stats["ctc_infeasible"] += infeasible.sum()
        self._stats["skipped"] += batch["skipped"].sum()
        self._stats["padded_frames"] += batch["features"].shape[0] * batch["features"].shape[-1]
        self._stats["frames"] += batch["feature_lengths"].sum()
        return losses.sum()

    def pop_train_stats(self) -> dict[str, float]:
        stats = {name: float(value) for name, value in self._stats.items()}
        self._stats = dict.fromkeys(self._stats, 0.0)
        return stats

    def train_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        padded = sums.pop("padded_frames")
        frames = sums.pop("frames")
        return sums | {"padding_fraction": 1.0 - frames / padded if padded else 0.0}

    def eval_step(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        logits, frames = model(batch["features"], batch["feature_lengths"])
        scored = (~batch["skipped"]).tolist()  # a stand-in for an unreadable utterance is not scored
        hypotheses = [decode(ids) for ids, keep in zip(greedy_ctc_decode(logits, frames), scored) if keep]
        references = [
            decode(tokens[:length].tolist())
            for tokens, length, keep in zip(batch["tokens"], batch["token_lengths"], scored) if keep
        ]
        edits, words = word_error_counts(hypotheses, references)
        return {
            "word_edits": torch.tensor(float(edits)),
            "reference_words": torch.tensor(float(words)),
            "utterances": torch.tensor(float(len(references))),
            "skipped": torch.tensor(float(len(scored) - len(references))),
        }

    def eval_metrics(self, totals: dict[str, float], eval_set: str) -> dict[str, float]:
        if totals["reference_words"] <= 0:
            raise ValueError(f"The evaluation set {eval_set} has no reference words: is its manifest empty?")
        return {f"wer_{eval_set}": 100.0 * totals["word_edits"] / totals["reference_words"]}


def ctc_losses(
    logits: torch.Tensor, frames: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-utterance CTC losses summed over time (fp32), and which utterances cannot be aligned (loss zeroed).

    `logits` (B, T, C) with the blank last (C - 1), `frames` (B,) the valid output frames, `targets` (B, L) padded.
    An alignment needs one frame per label plus one blank between each pair of equal neighbours.
    """
    log_probs = logits.float().log_softmax(dim=-1).transpose(0, 1)  # (T, B, C), as ctc_loss wants
    losses = F.ctc_loss(log_probs, targets, frames, target_lengths, blank=BLANK, reduction="none",
                        zero_infinity=True)
    positions = torch.arange(targets.shape[1], device=targets.device)
    repeats = ((targets[:, 1:] == targets[:, :-1]) & (positions[1:] < target_lengths[:, None])).sum(dim=1)
    infeasible = target_lengths + repeats > frames
    return losses, infeasible


def greedy_ctc_decode(logits: torch.Tensor, frames: torch.Tensor) -> list[list[int]]:
    """The most likely label per frame, repeats merged, blanks dropped: label ids per utterance."""
    best = logits.argmax(dim=-1)  # (B, T)
    keep = torch.ones_like(best, dtype=torch.bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    keep &= best != BLANK
    keep &= torch.arange(best.shape[1], device=best.device) < frames[:, None]
    best, keep = best.cpu(), keep.cpu()  # one transfer per batch
    return [row[mask].tolist() for row, mask in zip(best, keep)]
