"""Which device a job computes on, and taking turns on a GPU that several jobs share.

Snakemake assigns no device ids locally, and jobs that share a GPU should load their models while
another job's forward runs, then compute one at a time. So a job holds its GPU through an exclusive
`flock` on `gpu{i}.lock` in a shared lock folder only while it computes: with several GPUs it takes
the free one with the most free memory, and waits while all are taken. The kernel drops the lock when
the process ends, however it ends, so a killed job never leaves a device reserved.
"""

from __future__ import annotations

import fcntl
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from .errors import ConfigError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def default_lock_dir() -> Path:
    default = Path(tempfile.gettempdir()) / f"mimprobe-gpu-locks-{os.getuid()}"
    return Path(os.environ.get("MIMPROBE_GPU_LOCK_DIR") or default)


def _lock(lock_dir: Path, index: int, blocking: bool) -> IO | None:
    handle = open(lock_dir / f"gpu{index}.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def claim_gpu(count: int, lock_dir: str | Path | None = None,
              free_memory: Callable[[int], int] = lambda i: 0,
              poll_seconds: float = 0.05, timeout_seconds: float | None = None) -> tuple[int, IO]:
    """Lock and return (device index, open lock file); keep the file open while using the device."""
    lock_dir = Path(lock_dir or default_lock_dir())
    lock_dir.mkdir(parents=True, exist_ok=True)
    if count == 1 and timeout_seconds is None:
        return 0, _lock(lock_dir, 0, blocking=True)  # wakes the moment the holder lets go
    waited, announced = 0.0, False
    while True:
        for index in sorted(range(count), key=lambda i: (-free_memory(i), i)):
            handle = _lock(lock_dir, index, blocking=False)
            if handle is not None:
                return index, handle
        if timeout_seconds is not None and waited >= timeout_seconds:
            raise TimeoutError(f"all {count} GPUs stayed locked (lock folder {lock_dir})")
        if not announced:
            print(f"all {count} GPUs are in use by other jobs; waiting (locks in {lock_dir})", file=sys.stderr)
            announced = True
        time.sleep(poll_seconds)
        waited += poll_seconds


def device_kind(requested: str, key: str = "features.device") -> str:
    """'cuda' or 'cpu': what `requested` resolves to on this machine, checked before any model is built."""
    import torch

    if not DEVICE_PATTERN.match(requested):
        raise ConfigError(f"config key {key}: {requested!r} is not a device; use auto, cpu, cuda or cuda:N.")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return "cpu"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(requested.split(":")[1]) if ":" in requested else 0
    if index >= count:
        found = f"{count} GPU(s): cuda:0..cuda:{count - 1}" if count else "no GPU"
        raise ConfigError(f"config key {key}: {requested} is not on this machine ({found}). "
                          "Use auto, cpu, or one of those.")
    return "cuda"


@contextmanager
def hold_device(requested: str = "auto", key: str = "features.device", lock_dir: str | Path | None = None):
    """Yield the torch device to compute on; a GPU is held (locked) until the block ends."""
    import torch

    if device_kind(requested, key) == "cpu":
        yield torch.device("cpu")
        return
    if ":" in requested:
        index, handle = int(requested.split(":")[1]), None
        folder = Path(lock_dir or default_lock_dir())
        folder.mkdir(parents=True, exist_ok=True)
        handle = _lock(folder, index, blocking=True)
    else:
        index, handle = claim_gpu(torch.cuda.device_count(), lock_dir,
                                  free_memory=lambda i: torch.cuda.mem_get_info(i)[0])
    try:
        yield torch.device(f"cuda:{index}")
    finally:
        handle.close()
