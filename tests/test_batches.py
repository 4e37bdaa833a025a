"""Feeding the model: `to_device` and `device_batches` (the one-batch-ahead prefetcher) on the CPU; their CUDA
stream path is in test_gpu.py."""

from __future__ import annotations

import torch

from novograd.engine.batches import device_batches, to_device

CPU = torch.device("cpu")


def test_device_batches_prepares_every_batch_in_order_one_ahead():
    source = [{"x": torch.full((2,), float(i)), "label": i} for i in range(4)]
    produced: list[int] = []

    def counted():
        for batch in source:
            produced.append(batch["label"])
            yield batch

    def on_device(batch):
        return batch | {"x": batch["x"] * 10}

    handed = []
    for batch in device_batches(counted(), CPU, on_device=on_device):
        # The next batch is already moved and prepared while this one is used (but for the last).
        assert len(produced) == min(batch["label"] + 2, len(source))
        handed.append(batch)
    assert [b["label"] for b in handed] == [0, 1, 2, 3]
    assert all(torch.equal(b["x"], torch.full((2,), 10.0 * b["label"])) for b in handed)
    assert list(device_batches([], CPU)) == []


def test_to_device_makes_uint8_and_float_images_channels_last_only():
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    moved = to_device((images, images.float(), images.long(), torch.zeros(3, 4, 4)), CPU, channels_last=True)
    assert [t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() for t in moved[:3]] == [
        True, True, False]
    assert moved[3].is_contiguous()
    assert to_device(images, CPU).is_contiguous()  # negative control: without channels_last nothing changes
