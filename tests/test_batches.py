"""Feeding the model: `to_device`, `device_batches` (the one-batch-ahead prefetcher) on the CPU (their CUDA stream
path is in test_gpu.py), and `DataWait`, the time the loop spends blocked on its loader."""

from __future__ import annotations

import logging
import time

import torch

from novograd.engine.batches import DataWait, device_batches, to_device

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


def test_data_wait_counts_the_time_blocked_on_the_loader_and_not_the_computation():
    def slow_source(delay_s: float):
        for i in range(5):
            time.sleep(delay_s)
            yield torch.tensor(i)

    for data_s, compute_s in ((0.02, 0.0), (0.0, 0.02)):  # a slow loader; a slow computation (negative control)
        wait = DataWait()
        started = time.perf_counter()
        for _ in device_batches(slow_source(data_s), CPU, wait=wait):
            time.sleep(compute_s)
        share = wait.share(time.perf_counter() - started)
        assert (share > 0.8) if data_s else (share < 0.2), (data_s, compute_s, share)
        assert wait.seconds == 0.0  # the next interval starts


def test_data_wait_warns_once_after_three_slow_intervals_in_a_row(caplog):
    wait = DataWait()
    with caplog.at_level(logging.WARNING, logger="novograd"):
        for _ in range(4):  # a run of a few seconds (a debug run logging every step) is not warned
            wait.seconds = 0.5
            wait.share(1.0)
        assert not caplog.records
    wait = DataWait()
    wait.MIN_SECONDS = 3.0
    with caplog.at_level(logging.WARNING, logger="novograd"):
        for waited in (0.5, 0.5, 0.05, 0.5, 0.5):  # a fast interval restarts the count
            wait.seconds = waited
            wait.share(1.0)
        assert not caplog.records
        for _ in range(3):
            wait.seconds = 0.5
            wait.share(1.0)
    (warning,) = caplog.records
    assert "waited for data more than 10% of each of the last 3 log intervals (50% of the last)" in warning.message
    assert "data.num_workers" in warning.message and "make bench-data" in warning.message
