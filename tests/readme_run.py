"""Run the README's commands as a user types them: in a copy of the checkout, from its root, with a
clean environment (`env -i HOME=$HOME PATH=/usr/bin:/bin ...`), so no PATH or PYTHONPATH edit of the
test runner can make a broken command pass."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from conftest import REPO

CLEAN_ENV = {"HOME": os.environ.get("HOME", "/root"), "PATH": "/usr/bin:/bin"}


def checkout_copy(target: Path) -> Path:
    """The checkout's files (tracked and untracked-not-ignored, modification times kept) plus a link
    to its `.venv`, so `make` finds the environment up to date and installs nothing."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / ".venv").symlink_to(REPO / ".venv")
    return target


def run_as_user(checkout: Path, command: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    """`command` through a login-free shell in the checkout, with nothing but HOME and a system PATH."""
    return subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in CLEAN_ENV.items()), "bash", "-c", command],
                          cwd=checkout, capture_output=True, text=True, timeout=timeout)
