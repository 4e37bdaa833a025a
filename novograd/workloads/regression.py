"""A tiny synthetic regression task for the engine's own exactness tests and smoke runs.

An MLP without BatchNorm (whose per-micro-batch statistics would make accumulation inexact by design) fits
`y = tanh(x A) B + noise` on a fixed random dataset. Everything is built from `data.seed`, so every rank and every
run sees the same examples.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from novograd.workload import Workload

Batch = tuple[torch.Tensor, torch.Tensor]


class RegressionWorkload(Workload):
    """Mean-squared error regression with an MLP.

    Args:
        model: `hidden` (width), `depth` (hidden layers), `dropout` (probability; exercises the generator states).
        data: `in_features`, `out_features`, `train_size`, `eval_size`, `noise` (std of the target noise), `seed`.
    """

    name = "regression"
    metric_goals = {"mse": "min"}
    primary_metric = "mse"

    def __init__(self, model: Mapping[str, Any], data: Mapping[str, Any]) -> None:
        self.model_cfg = model
        self.data_cfg = data

    def build_model(self) -> nn.Module:
        layers: list[nn.Module] = []
        width = self.data_cfg["in_features"]
        for _ in range(self.model_cfg["depth"]):
            layers += [nn.Linear(width, self.model_cfg["hidden"]), nn.Tanh(), nn.Dropout(self.model_cfg["dropout"])]
            width = self.model_cfg["hidden"]
        layers.append(nn.Linear(width, self.data_cfg["out_features"]))
        return nn.Sequential(*layers)

    def build_datasets(self) -> tuple[Dataset, dict[str, Dataset]]:
        cfg = self.data_cfg
        generator = torch.Generator().manual_seed(cfg["seed"])
        mixing = torch.randn(cfg["in_features"], cfg["in_features"], generator=generator)
        readout = torch.randn(cfg["in_features"], cfg["out_features"], generator=generator)

        def make(size: int) -> TensorDataset:
            inputs = torch.randn(size, cfg["in_features"], generator=generator)
            noise = cfg["noise"] * torch.randn(size, cfg["out_features"], generator=generator)
            return TensorDataset(inputs, torch.tanh(inputs @ mixing) @ readout + noise)

        return make(cfg["train_size"]), {"eval": make(cfg["eval_size"])}

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        inputs, targets = batch
        # Per-example squared error averaged over outputs, summed over examples: one term per example.
        return (model(inputs).float() - targets).pow(2).mean(dim=1).sum()

    def eval_step(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        inputs, targets = batch
        squared_error = (model(inputs).float() - targets).pow(2).mean(dim=1).sum()
        return {"squared_error": squared_error, "count": torch.tensor(float(inputs.shape[0]))}

    def eval_metrics(self, totals: dict[str, float], eval_set: str) -> dict[str, float]:
        return {"mse": totals["squared_error"] / totals["count"]}
