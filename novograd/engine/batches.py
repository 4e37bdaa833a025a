"""Moving batches (tensors nested in dicts, lists and tuples) to the training device, one batch ahead.

`device_batches` is how the engine feeds the model, in training and evaluation: each batch is copied to the device
and prepared there by the workload's `on_device` (e.g. uint8 images to normalised floats). On CUDA the copy and
the preparation of the next batch run on a side stream while the current batch computes, as NVIDIA
DeepLearningExamples' and timm's prefetchers do; on the CPU the same code runs without streams. `DataWait` adds up
the time the training loop spends blocked on the loader, which the log line reports as a share of each interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from typing import Any

import torch

log = logging.getLogger(__name__)


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """`batch` with every tensor on `device` (asynchronously from pinned memory); 4-D floating or uint8 tensors
    (images) in channels-last layout when `channels_last`, matching a channels-last convnet."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4 and (batch.is_floating_point() or batch.dtype == torch.uint8):
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {key: to_device(value, device, channels_last) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(value, device, channels_last) for value in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


def device_batches(
    batches: Iterable[Any],
    device: torch.device,
    channels_last: bool = False,
    on_device: Callable[[Any], Any] = lambda batch: batch,
    wait: DataWait | None = None,
) -> Iterator[Any]:
    """`on_device(to_device(batch))` of each of `batches`, in order; the next batch is moved and prepared before
    the current one is handed over, on a side CUDA stream when `device` is a GPU, so that its copy overlaps the
    current batch's kernels (the compute stream waits, per batch, only for that batch's own copy). `wait` adds up
    the host time spent blocked on `batches`."""
    side = torch.cuda.Stream(device) if device.type == "cuda" else None
    ahead: tuple[Any, torch.cuda.Event | None] | None = None
    for batch in _timed(batches, wait):
        with torch.cuda.stream(side) if side is not None else nullcontext():
            prepared = on_device(to_device(batch, device, channels_last))
        ready = side.record_event() if side is not None else None
        if ahead is not None:
            yield _handed_over(*ahead, device)
        ahead = (prepared, ready)
    if ahead is not None:
        yield _handed_over(*ahead, device)


def _handed_over(batch: Any, ready: torch.cuda.Event | None, device: torch.device) -> Any:
    """`batch`, made on the side stream, safe to use on the current stream: the current stream waits for it, and
    the caching allocator keeps its memory until the current stream's work on it is done."""
    if ready is not None:
        current = torch.cuda.current_stream(device)
        current.wait_event(ready)
        for tensor in tensors_in(batch):
            tensor.record_stream(current)
    return batch


def tensors_in(nested: Any) -> Iterator[torch.Tensor]:
    """Every tensor of `nested` (a batch, a state: tensors in dicts, lists and tuples)."""
    if isinstance(nested, torch.Tensor):
        yield nested
    elif isinstance(nested, dict):
        for value in nested.values():
            yield from tensors_in(value)
    elif isinstance(nested, (list, tuple)):
        for value in nested:
            yield from tensors_in(value)


class DataWait:
    """The host seconds a training loop spends blocked on its loader, and the one warning when that is a large
    share of training: more than `THRESHOLD` of `INTERVALS` log intervals in a row that hold at least `MIN_SECONDS`
    of training together (so that a debug run of a few seconds, logging every step, is not told to add workers).

    Host time, with no device sync: while the GPU is the bottleneck the host runs ahead and finds the next batch
    ready (a share near 0); while the loader is, the host waits for it here.
    """

    THRESHOLD = 0.10
    INTERVALS = 3
    MIN_SECONDS = 60.0

    def __init__(self) -> None:
        self.seconds = 0.0
        self._slow_intervals = 0
        self._slow_seconds = 0.0
        self._warned = False

    def share(self, elapsed: float) -> float:
        """The share of `elapsed` (an interval's training wall time) spent waiting since the last call; starts
        the next interval."""
        share = min(1.0, self.seconds / elapsed) if elapsed > 0 else 0.0
        self.seconds = 0.0
        slow = share > self.THRESHOLD
        self._slow_intervals = self._slow_intervals + 1 if slow else 0
        self._slow_seconds = self._slow_seconds + elapsed if slow else 0.0
        if self._slow_intervals >= self.INTERVALS and self._slow_seconds >= self.MIN_SECONDS and not self._warned:
            self._warned = True
            log.warning("The input pipeline is the bottleneck: training waited for data more than %.0f%% of each of "
                        "the last %d log intervals (%.0f%% of the last). Raise data.num_workers (loader processes per "
                        "rank); `make bench-data` shows what one worker delivers (docs/benchmarks.md).",
                        100 * self.THRESHOLD, self.INTERVALS, 100 * share)
        return share


def _timed(batches: Iterable[Any], wait: DataWait | None) -> Iterator[Any]:
    """`batches`, the time each `next` takes added to `wait`."""
    iterator = iter(batches)
    while True:
        started = time.perf_counter()
        batch = next(iterator, _END)
        if wait is not None:
            wait.seconds += time.perf_counter() - started
        if batch is _END:
            return
        yield batch


_END = object()
