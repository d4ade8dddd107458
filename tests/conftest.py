"""Shared fixtures: the repo paths, a runner for the real Snakemake CLI, tiny configs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))  # this checkout's package, even beside an editable install
BIN = Path(sys.executable).parent


def workflow_env() -> dict:
    """The environment of a workflow run: nothing on PATH or PYTHONPATH points at the venv or the package
    (the rules find both themselves, as they must for a user)."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
                                  if not p.startswith(str(BIN.parent)))
    return env


def run_snakemake(workdir: Path, config: dict | Path, *args: str, check: bool = True, repo: Path = REPO):
    """Run the real workflow CLI in `workdir` with `config` (a dict is written to config.yaml)."""
    if isinstance(config, dict):
        path = workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        config = path
    command = [str(BIN / "snakemake"), "-s", str(repo / "Snakefile"), "-d", str(workdir),
               "--configfile", str(config), "--cores", "2", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=workflow_env(), cwd=workdir)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                             f"{result.stderr[-6000:]}")
    return result


def planned_jobs(workdir: Path, config, repo: Path = REPO) -> dict[str, int]:
    """{rule: count} of what a dry run would execute ({} when nothing is to be done)."""
    out = run_snakemake(workdir, config, "-n", repo=repo).stdout
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1].split("Reasons:")[0] if "Reasons:" in out else out.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


def tiny_config(**overrides) -> dict:
    """Digits, two small splits, two cheap backbones: a real DAG that runs in seconds."""
    config = {
        "seed": 0,
        "datasets": {"digits": {"kind": "digits", "shard_size": 64, "limit": {"train": 256, "test": 128}}},
        "backbones": {"pixels": {"model": "pixels"},
                      "random_vit": {"model": "random:vit_tiny_patch16_224", "batch_size": 32}},
        "features": {"blocks": [-2, -1], "pooling": ["cls", "mean"]},
        "probes": {"knn": {"k": [5, 10]}, "linear": {"learning_rates": [0.01, 0.1], "epochs": 3}},
        "report": {"bootstrap": 20},
    }
    for key, value in overrides.items():
        config[key] = value
    return config


@pytest.fixture
def workdir(tmp_path) -> Path:
    return tmp_path
