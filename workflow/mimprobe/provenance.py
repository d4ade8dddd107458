"""What made an output: library versions, the git commit, and a fingerprint of the code a rule runs.

A rule's fingerprint hashes the package version and the source of every mimprobe module its entry
modules import, directly or not (found by reading the import statements, lazy ones included), so a
change to a module reruns exactly the jobs whose code includes it.
"""

from __future__ import annotations

import ast
import hashlib
import platform
import subprocess
from functools import cache, lru_cache
from pathlib import Path

from . import __version__

PACKAGE_DIR = Path(__file__).resolve().parent
LIBRARIES = ("torch", "timm", "zarr", "numpy", "scikit-learn", "torchvision", "pandas", "snakemake")


def _module_path(name: str) -> Path | None:
    parts = name.split(".")[1:]
    if not parts:
        return PACKAGE_DIR / "__init__.py"
    relative = Path(*parts)
    for candidate in (PACKAGE_DIR / relative.with_suffix(".py"), PACKAGE_DIR / relative / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(name: str, path: Path) -> set[str]:
    """mimprobe modules imported anywhere in one module (relative or absolute, at any depth)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "mimprobe"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            elif (node.module or "").split(".")[0] == "mimprobe":
                module = node.module
            else:
                continue
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # `from . import report`
    return {m for m in found if _module_path(m) is not None}


@cache
def module_closure(*entries: str) -> tuple[str, ...]:
    """Every mimprobe module reachable from `entries` through imports, sorted."""
    seen, todo = set(), [e if e.startswith("mimprobe") else f"mimprobe.{e}" for e in entries]
    while todo:
        name = todo.pop()
        path = _module_path(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        todo.extend(_imports(name, path) - seen)
        parent = name.rpartition(".")[0]
        if parent and parent not in seen:
            todo.append(parent)  # a package's __init__ runs before its modules
    return tuple(sorted(seen))


def code_fingerprint(*entries: str) -> str:
    """The package version plus a hash of the source of every module `entries` reach."""
    digest = hashlib.sha256(__version__.encode())
    for name in module_closure(*entries):
        digest.update(name.encode() + b"\0" + _module_path(name).read_bytes())
    return f"{__version__}+{digest.hexdigest()[:16]}"


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The checkout's commit (with '+dirty' for uncommitted changes), or None outside a git checkout."""
    try:
        def git(*args):
            return subprocess.run(["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()

        commit = git("rev-parse", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    """Versions of mimprobe, Python and the libraries that shape results, and the git commit."""
    return {"mimprobe": __version__, "python": platform.python_version(),
            **{name: _version(name) for name in LIBRARIES}, "git_commit": git_commit()}
