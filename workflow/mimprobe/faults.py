"""A hook for the fault tests: pause an embedding job in the middle of writing its store region.

With MIMPROBE_TEST_PAUSE_DIR set, the first array a job writes is followed by `<dir>/<pid>.paused`
and a wait (at most 120 s) for `<dir>/release`. The tests kill the paused job there, or hold several
jobs mid-write at once to prove concurrent writers do not disturb each other. Unset, it does nothing.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

PAUSE_ENV = "MIMPROBE_TEST_PAUSE_DIR"
_pause_once = threading.Lock()  # arrays are written from several threads: pause only the first


def pause_mid_write(array_name: str) -> None:
    folder = os.environ.get(PAUSE_ENV)
    if not folder or not _pause_once.acquire(blocking=False):
        return
    Path(folder, f"{os.getpid()}.paused").write_text(array_name)
    release = Path(folder, "release")
    deadline = time.monotonic() + 120
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
