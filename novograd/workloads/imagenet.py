"""ResNet-50 v2 on ImageNet (Tables 1-3): the model, the datasets, the cross-entropy loss and top-1/top-5 accuracy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from novograd.workload import Workload

if TYPE_CHECKING:
    from data.imagenet import LabelledImage


class ImageNetWorkload(Workload):
    """Image classification on ImageNet, or on its synthetic twin when `data.synthetic` is set.

    Built by the engine as `instantiate(cfg.workload, model=cfg.model, data=cfg.data, _recursive_=False)`.

    Args:
        model: the model config; instantiated with hydra (its `_target_`), with `num_classes` taken from `data`.
        data: the data config (configs/data/imagenet.yaml documents every key read here).

    The loader's batches are `LabelledImage`s of uint8 images (N, 3, H, W), or under `data.decode=gpu` an `EncodedBatch`
    of the JPEGs' bytes that `on_device` decodes first; `on_device` turns them, on the model's device, into the
    normalised float images the loss and evaluation see. Batches hold int64 labels and the
    bool `skipped` flags of unreadable files (`data.skip_corrupt=true`, data/corrupt.py). Training uses the images
    that stand in for them and counts them (`pop_train_stats`); evaluation scores only the others and counts the
    flagged ones, so each readable example is scored exactly once.
    """

    metric_goals = {"top1": "max", "top5": "max"}
    primary_metric = "top1"
    count_unit = "images"
    #: A convnet: on CUDA the engine stores the model and the image batches channels-last (faster convolutions).
    channels_last = True

    def __init__(self, model: Mapping[str, Any], data: Mapping[str, Any]) -> None:
        self.model_cfg = model
        self.data_cfg = data
        self._substituted: torch.Tensor | float = 0.0  # added up lazily as a tensor: no device sync per step

    def build_model(self) -> nn.Module:
        from hydra.utils import instantiate

        # The classifier's width comes from the data config alone, so model configs work on any class count.
        return instantiate(self.model_cfg, num_classes=self.data_cfg["num_classes"])

    @classmethod
    def check_data(cls, data: Mapping[str, Any]) -> None:
        if not data.get("synthetic"):
            from data.imagenet import check_layout

            check_layout(data["root"])

    def build_datasets(self) -> tuple[Dataset, dict[str, Dataset]]:
        from data.imagenet import build_imagenet_datasets

        data = self.data_cfg
        root = data["root"]
        if data.get("synthetic"):
            from data.synthetic_imagenet import make_synthetic_imagefolder

            root = make_synthetic_imagefolder(num_classes=data["num_classes"], **data["synthetic"])
        train, val = build_imagenet_datasets(
            root,
            num_classes=data["num_classes"],
            image_size=data["image_size"],
            eval_resize=data["eval_resize"],
            crop_scale=tuple(data["crop_scale"]),
            skip_corrupt=data["skip_corrupt"],
            decode=data["decode"],
        )
        return train, {"val": val}

    def collate(self, samples: list[LabelledImage]) -> LabelledImage:
        from data.imagenet import collate_images

        return collate_images(samples)

    def on_device(self, batch: LabelledImage) -> LabelledImage:
        from data.imagenet import EncodedBatch, decode_on_device, normalize_images

        images = batch.image
        if isinstance(images, EncodedBatch):  # data.decode=gpu: JPEG bytes, decoded here on the batch's device
            device = batch.label.device
            images = decode_on_device(images, device, self.data_cfg["image_size"], self.data_cfg["eval_resize"])
            if device.type == "cuda":  # as the engine's copy stores image batches for a channels-last convnet
                images = images.contiguous(memory_format=torch.channels_last)
        return batch._replace(image=normalize_images(images))

    def loss(self, model: nn.Module, batch: LabelledImage) -> torch.Tensor:
        self._substituted = self._substituted + batch.skipped.sum()
        # float(): under autocast the logits may be bf16/fp16; the summed loss is accumulated in fp32.
        return F.cross_entropy(model(batch.image).float(), batch.label, reduction="sum")

    def pop_train_stats(self) -> dict[str, float]:
        stats = {"skipped": float(self._substituted)}
        self._substituted = 0.0
        return stats

    def eval_step(self, model: nn.Module, batch: LabelledImage) -> dict[str, torch.Tensor]:
        return top_k_correct(model(batch.image), batch.label, scored=~batch.skipped) | {"skipped": batch.skipped.sum()}

    def eval_metrics(self, totals: dict[str, float], eval_set: str) -> dict[str, float]:
        count = totals["count"]
        if count <= 0:
            raise ValueError("top-1/top-5 need at least one evaluated image; the evaluation set was empty")
        return {"top1": 100.0 * totals["correct_top1"] / count, "top5": 100.0 * totals["correct_top5"] / count}


def top_k_correct(
    logits: torch.Tensor, labels: torch.Tensor, scored: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Sums for top-1/top-5 accuracy: how many labels are the highest logit, how many are among the 5 highest, of
    how many examples (those where the bool mask `scored` is true; default: all).

    With fewer than 5 classes (the synthetic twin) top-5 is every class, hence always correct.
    """
    if scored is None:
        scored = torch.ones_like(labels, dtype=torch.bool)
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    # A mask rather than indexing by it: boolean indexing would wait for the device to count the rows.
    hits = (top == labels.unsqueeze(1)) & scored.unsqueeze(1)
    return {"correct_top1": hits[:, 0].sum(), "correct_top5": hits.any(dim=1).sum(), "count": scored.sum()}
