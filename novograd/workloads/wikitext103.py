"""Transformer-XL on WikiText-103 (Table 6, Figure 4): ordered streams, memory carried across steps, perplexity.

Training: the train token array is cut into `trainer.batch_size` contiguous streams (the authors' layout); step `s`
takes window `s` (`model.tgt_len` tokens, plus the next one as target) of every stream (`StreamPlan`), each stream
rotated by a random offset per epoch with `data.roll` (DeepLearningExamples). Each
micro-batch is a fixed group of streams whose memory (the inputs of every layer at the last `model.mem_len`
positions) carries over to the next step, is reset at each epoch, and is saved in checkpoints per stream, so a
resumed run continues bit-for-bit and a run resumed on another number of ranks re-groups the streams' memories.
The loss is summed over tokens; the engine divides by all target tokens of the step.

Evaluation (`data.eval`): the authors' settings by default, `tgt_len` 64, `mem_len` 640, `clamp_len` 400,
`same_length`, 10 streams; each set is cut into streams that overlap by one token, so every token but the first
is scored exactly once. `val_ppl` and `test_ppl` are exp(summed token loss / tokens). `data.eval.warm_up` reads
the memory's worth of text before each stream first (DeepLearningExamples) instead of scoring the first tokens
of each stream with less context (kimiyoung, the default).
The training perplexity of Figure 4 is exp(`train/loss`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from data.wikitext103 import load_corpus, read_metadata, roll_offsets, streams
from novograd.engine.plans import BatchPlan, StreamPlan
from novograd.workload import Workload

Batch = dict[str, Any]
# The paper's column for each evaluation set of data.eval_sets.
_METRIC_OF_SET = {"valid": "val_ppl", "test": "test_ppl"}


class TrainStreams(Dataset):
    """Windows of `tgt_len` tokens (+1 target) of `num_streams` contiguous streams; example `w * B + b` is window
    `w` of stream `b`. The number of streams is the batch size, set by `cut`.

    With `roll` (DeepLearningExamples' `roll: true`), each epoch rotates every stream by its own offset from
    `roll_offsets(seed, epoch)`: window `w` of stream `b` starts `offset_b + w * tgt_len` tokens into the stream,
    wrapping around its end, so each epoch cuts the text at other places. The engine's loader calls `set_epoch`
    in every process that loads, so the windows depend on (seed, epoch) only: the same on every rank, and after
    a resume. Without it every epoch reads the same windows (kimiyoung's and cybertronai's code).
    """

    def __init__(self, tokens: np.ndarray, tgt_len: int, roll: bool = False) -> None:
        self.tokens = tokens
        self.tgt_len = tgt_len
        self.roll = roll
        self.rows = tokens[None, :]  # (streams, tokens per stream): a view of `tokens`, set by `cut`
        self.num_windows = 0
        self.seed = 0
        self.offsets: np.ndarray | None = None  # each stream's rotation this epoch, with `roll`

    @property
    def num_streams(self) -> int:
        return self.rows.shape[0]

    def cut(self, num_streams: int, seed: int = 0) -> None:
        self.rows = streams(self.tokens, num_streams)
        self.num_windows = (self.rows.shape[1] - 1) // self.tgt_len
        if self.num_windows < 1:
            raise ValueError(
                f"{len(self.tokens)} training tokens in {num_streams} streams leave no window of model.tgt_len="
                f"{self.tgt_len} (+1) tokens per stream: use fewer streams (trainer.batch_size) or a larger corpus."
            )
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if self.roll:
            self.offsets = roll_offsets(self.seed, epoch, self.num_streams, self.rows.shape[1])

    def __len__(self) -> int:
        return self.num_windows * self.num_streams

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        window, stream = divmod(index, self.num_streams)
        start = window * self.tgt_len
        if self.offsets is None:
            segment = np.array(self.rows[stream, start : start + self.tgt_len + 1], dtype=np.int64)
        else:
            positions = (self.offsets[stream] + start + np.arange(self.tgt_len + 1)) % self.rows.shape[1]
            segment = self.rows[stream].take(positions).astype(np.int64)
        segment = torch.from_numpy(segment)
        return stream, segment[:-1], segment[1:]


class EvalStreams(Dataset):
    """An evaluation set as `num_streams` streams overlapping by one token: stream `b` predicts targets
    `[b*L + 1, (b+1)*L + 1)` of the whole set (the last one fewer), so every token but the first is scored once.

    `warm_up` > 0 (DeepLearningExamples' evaluation) puts the `warm_up` tokens before each stream's first input in
    front of it, with targets -1 (read, not scored), so that the memory is full when scoring starts; stream 0
    takes the last tokens of the set, as DeepLearningExamples does. Without it (kimiyoung's eval.py, the default)
    the first tokens of each stream are scored with less context than the rest.
    """

    def __init__(self, tokens: np.ndarray, num_streams: int, warm_up: int = 0) -> None:
        self.tokens = tokens
        self.warm_up = warm_up
        targets = len(tokens) - 1
        self.stream_len = math.ceil(targets / num_streams)
        self.num_streams = math.ceil(targets / self.stream_len)

    def __len__(self) -> int:
        return self.num_streams

    def __getitem__(self, stream: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        start = stream * self.stream_len
        end = min(start + self.stream_len, len(self.tokens) - 1)
        scored = np.array(self.tokens[start : end + 1], dtype=np.int64)
        context = np.take(self.tokens, np.arange(start - self.warm_up, start), mode="wrap").astype(np.int64)
        inputs = np.concatenate([context, scored[:-1]])
        targets = np.concatenate([np.full(self.warm_up, -1, dtype=np.int64), scored[1:]])
        return stream, torch.from_numpy(inputs), torch.from_numpy(targets)


def collate_streams(samples: list[tuple[int, torch.Tensor, torch.Tensor]]) -> Batch:
    """Stack windows; shorter ones (the last evaluation stream) padded with target -1. Stream ids stay a python
    tuple: they key the memory on the host without a device sync."""
    length = max(len(inputs) for _, inputs, _ in samples)
    inputs = torch.zeros(len(samples), length, dtype=torch.int64)
    targets = torch.full((len(samples), length), -1, dtype=torch.int64)
    for row, (_, source, target) in enumerate(samples):
        inputs[row, : len(source)] = source
        targets[row, : len(target)] = target
    return {"streams": tuple(stream for stream, _, _ in samples), "inputs": inputs, "targets": targets}


class WikiText103Workload(Workload):
    """Language modelling on WikiText-103, or on its synthetic twin when `data.synthetic` is set.

    Args:
        model: the model config (configs/model/transformer_xl*.yaml); `vocab_size` comes from the data.
        data: the data config (configs/data/wikitext103.yaml documents every key).
    """

    name = "wikitext103"
    metric_goals = {"val_ppl": "min", "test_ppl": "min"}
    primary_metric = "val_ppl"
    count_unit = "tokens"

    def __init__(self, model: Mapping[str, Any], data: Mapping[str, Any]) -> None:
        self.model_cfg = model
        self.data_cfg = data
        # The memory of each micro-batch's group of streams, and memories restored from a checkpoint per stream.
        self.memory: dict[tuple[int, ...], list[torch.Tensor]] = {}
        self.restored: dict[int, torch.Tensor] = {}

    def build_model(self) -> nn.Module:
        from hydra.utils import instantiate

        return instantiate(self.model_cfg, vocab_size=self.data_cfg["vocab_size"])

    @classmethod
    def check_data(cls, data: Mapping[str, Any]) -> None:
        if not data.get("synthetic"):
            read_metadata(data["root"])

    def build_datasets(self) -> tuple[Dataset, dict[str, Dataset]]:
        data = self.data_cfg
        root = data["root"]
        if data.get("synthetic"):
            from data.synthetic_wikitext103 import make_synthetic_wikitext103

            root = make_synthetic_wikitext103(vocab_size=data["vocab_size"], **data["synthetic"])
        corpus = load_corpus(root, vocab_size=data["vocab_size"])
        settings = data["eval"]
        # DeepLearningExamples' warm-up: whole evaluation windows covering the memory, read before scoring.
        windows = math.ceil(settings["mem_len"] / settings["tgt_len"]) if settings["warm_up"] else 0
        warm_up = windows * settings["tgt_len"]
        eval_sets = {name: EvalStreams(corpus.split(name), settings["num_streams"], warm_up)
                     for name in data["eval_sets"]}
        return TrainStreams(corpus.split("train"), self.model_cfg["tgt_len"], roll=data["roll"]), eval_sets

    def batch_plan(self, train_set: Dataset, batch_size: int, micro_batch_size: int, seed: int) -> BatchPlan:
        train_set.cut(batch_size, seed)  # type: ignore[attr-defined]
        return StreamPlan(train_set.num_windows, batch_size, micro_batch_size,  # type: ignore[attr-defined]
                          tokens_per_window=self.model_cfg["tgt_len"])

    def collate(self, samples: list[Any]) -> Batch:
        return collate_streams(samples)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        key = batch["streams"]
        nll, self.memory[key] = model(batch["inputs"], batch["targets"], self._memory_of(key, batch["inputs"].device))
        return nll.sum()

    def _memory_of(self, key: tuple[int, ...], device: torch.device) -> list[torch.Tensor] | None:
        """The memory of this group of streams: carried from its last step, regrouped from a checkpoint's
        per-stream memories after a resume, or none at the start of an epoch."""
        if key in self.memory:
            return self.memory[key]
        if key[0] in self.restored:
            per_stream = torch.stack([self.restored.pop(stream) for stream in key], dim=1)  # (n_layer, B, M, d)
            return list(per_stream.to(device).unbind(0))
        return None

    def start_epoch(self, epoch: int) -> None:
        self.memory.clear()
        self.restored.clear()

    def state_dict(self) -> dict[str, Any]:
        """This rank's streams' memories, (n_layer, mem_len, d_model) on the CPU, keyed by stream id (not by rank).

        Once this rank has trained a step it holds the memory of every stream it owns; until then (a checkpoint
        right after a resume) it passes on what it restored.
        """
        if not self.memory:
            return {"memory": dict(self.restored)}
        state = {}
        for key, layers in self.memory.items():
            stacked = torch.stack(layers).cpu()  # (n_layer, B, M, d)
            state |= {stream: stacked[:, row] for row, stream in enumerate(key)}
        return {"memory": state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory.clear()
        self.restored = dict(state.get("memory", {}))

    def eval_step(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        settings = self.data_cfg["eval"]
        train_settings = {key: self.model_cfg[key] for key in ("tgt_len", "mem_len", "clamp_len", "same_length")}
        model.reset_length(tgt_len=settings["tgt_len"], mem_len=settings["mem_len"],
                           clamp_len=settings["clamp_len"], same_length=settings["same_length"])
        try:
            inputs, targets = batch["inputs"], batch["targets"]
            memory, loss, tokens = None, torch.zeros((), device=inputs.device), torch.zeros((), device=inputs.device)
            for start in range(0, inputs.shape[1], settings["tgt_len"]):
                window = slice(start, start + settings["tgt_len"])
                valid = targets[:, window] >= 0
                nll, memory = model(inputs[:, window], targets[:, window].clamp(min=0), memory)
                loss += (nll * valid).sum()
                tokens += valid.sum()
        finally:
            model.reset_length(**train_settings)
        return {"nll": loss, "tokens": tokens}

    def eval_metrics(self, totals: dict[str, float], eval_set: str) -> dict[str, float]:
        if totals["tokens"] <= 0:
            raise ValueError(f"The evaluation set {eval_set} has no tokens to score.")
        metric = _METRIC_OF_SET.get(eval_set, f"{eval_set}_ppl")
        return {metric: math.exp(totals["nll"] / totals["tokens"])}
