"""One GPU per embedding job on a machine with several: Snakemake assigns no device ids locally.

Each job takes an exclusive `flock` on `gpu{i}.lock` in a shared lock folder, trying the devices
with the most free memory first, and waits while all are taken. The kernel drops the lock when the
job's process ends, however it ends, so a killed job never leaves a device reserved.
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, IO


def default_lock_dir() -> Path:
    return Path(os.environ.get("MIMPROBE_GPU_LOCK_DIR") or Path(tempfile.gettempdir()) / f"mimprobe-gpu-locks-{os.getuid()}")


def claim_gpu(count: int, lock_dir: str | Path | None = None,
              free_memory: Callable[[int], int] = lambda i: 0,
              poll_seconds: float = 2.0, timeout_seconds: float | None = None) -> tuple[int, IO]:
    """Lock and return (device index, open lock file); keep the file open while using the device."""
    lock_dir = Path(lock_dir or default_lock_dir())
    lock_dir.mkdir(parents=True, exist_ok=True)
    waited, announced = 0.0, False
    while True:
        for index in sorted(range(count), key=lambda i: (-free_memory(i), i)):
            handle = open(lock_dir / f"gpu{index}.lock", "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}\n")
            handle.flush()
            return index, handle
        if timeout_seconds is not None and waited >= timeout_seconds:
            raise TimeoutError(f"all {count} GPUs stayed locked (lock folder {lock_dir})")
        if not announced:
            print(f"all {count} GPUs are in use by other jobs; waiting (locks in {lock_dir})", file=sys.stderr)
            announced = True
        time.sleep(poll_seconds)
        waited += poll_seconds
