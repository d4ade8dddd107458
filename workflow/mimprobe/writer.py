"""One shard's features on their way into its store region, overlapped with the forward passes.

While the main thread runs the next batch's forward, a host thread moves each finished batch into
host fp16 buffers (a separate CUDA copy stream on a GPU; fp32 -> fp16 on the CPU) and checks it for
NaN/Inf, and a few write threads write every Zarr chunk whose rows are all in to each array.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .layout import feature_column
from .store import region_arrays

BATCHES_IN_FLIGHT = 2  # device and host memory held by batches not yet in the host buffers
CHUNKS_IN_FLIGHT = 2  # chunks queued for writing before the host thread (and so the forward) waits


class RegionWriter:
    """Use as a context manager: leaving it early (an error) cancels the queued work."""

    def __init__(self, root, split: str, start: int, stop: int, labels: dict[str, np.ndarray], keys,
                 device: torch.device, after_each=None):
        self.start, self.count, self.after_each = start, stop - start, after_each
        self.chunk_rows = root.attrs["chunk_rows"]
        self.columns = {key: feature_column(*key) for key in keys}
        self.arrays = region_arrays(root, split, start, stop, [*labels, *self.columns.values()])
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.buffers = {name: torch.empty((self.count, *self.arrays[name].shape[1:]), dtype=torch.float16,
                                          pin_memory=self.stream is not None)
                        for name in self.columns.values()}
        self.host = dict(labels) | {name: buffer.numpy() for name, buffer in self.buffers.items()}
        self.non_finite: set[tuple[int, str]] = set()
        self.batches, self.chunks, self.queued_rows = deque(), deque(), 0
        self.host_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mimprobe-host")
        self.write_pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                             thread_name_prefix="mimprobe-writer")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        for pool in (self.write_pool, self.host_pool):
            pool.shutdown(cancel_futures=True)

    def submit(self, start: int, stop: int, pooled: dict) -> None:
        """Hand over rows start:stop of the shard (batches in order); waits while too many are in flight."""
        copied = self._copy_to_host(start, stop, pooled) if self.stream is not None else None
        self.batches.append(self.host_pool.submit(self._finish_batch, start, stop, pooled, copied))
        if len(self.batches) > BATCHES_IN_FLIGHT:
            self.batches.popleft().result()

    def _copy_to_host(self, start, stop, pooled) -> torch.cuda.Event:
        computed = torch.cuda.Event()
        computed.record()
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(computed)
            for key, value in pooled.items():
                half = value.to(torch.float16)
                self.buffers[self.columns[key]][start:stop].copy_(half, non_blocking=True)
                half.record_stream(self.stream)
        copied = torch.cuda.Event()
        copied.record(self.stream)
        return copied

    def _finish_batch(self, start, stop, pooled, copied) -> None:
        for key, value in pooled.items():
            rows = self.buffers[self.columns[key]][start:stop]
            if copied is None:
                rows.copy_(value)  # fp32 -> fp16 on the CPU
            else:
                copied.synchronize()
            if not torch.isfinite(rows).all():
                self.non_finite.add(key)
        if not self.non_finite:  # a failing job writes no more; its missing flag gets it redone
            self._queue_chunks(ready=stop)

    def _queue_chunks(self, ready: int) -> None:
        """Queue every chunk whose rows are all in: batches finish in order on the one host thread."""
        while self.queued_rows < self.count and min(self.queued_rows + self.chunk_rows, self.count) <= ready:
            lo, hi = self.queued_rows, min(self.queued_rows + self.chunk_rows, self.count)
            self.chunks.append([self.write_pool.submit(self._write_chunk, name, lo, hi) for name in self.arrays])
            self.queued_rows = hi
        while len(self.chunks) > CHUNKS_IN_FLIGHT:
            for future in self.chunks.popleft():
                future.result()

    def _write_chunk(self, name: str, lo: int, hi: int) -> None:
        self.arrays[name][self.start + lo:self.start + hi] = self.host[name][lo:hi]
        if self.after_each is not None:
            self.after_each(name)  # the fault tests pause a job here

    def finish(self) -> dict[str, np.ndarray]:
        """Wait for every batch and chunk write (raising the first error); the rows written, by column."""
        while self.batches:
            self.batches.popleft().result()
        while self.chunks:
            for future in self.chunks.popleft():
                future.result()
        return self.host
