"""Shared fixtures: the repo paths, a runner for the real Snakemake CLI, tiny configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))  # this checkout's package, even beside an editable install
BIN = Path(sys.executable).parent


def workflow_env() -> dict:
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "workflow"), env.get("PYTHONPATH", "")])
    env["PATH"] = os.pathsep.join([str(BIN), env["PATH"]])
    return env


def run_snakemake(workdir: Path, config: dict | Path, *args: str, check: bool = True):
    """Run the real workflow CLI in `workdir` with `config` (a dict is written to config.yaml)."""
    if isinstance(config, dict):
        path = workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        config = path
    command = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--configfile", str(config), "--cores", "2", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=workflow_env(), cwd=workdir)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


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
