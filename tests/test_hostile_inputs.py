"""Hostile inputs through the real workflow: names that would be shell code or escape the folder, paths
that need quoting, a flipped byte in a verified store, a failed probe followed by a plain rerun, and a
Snakemake killed on its own. Nothing runs code, nothing escapes, and every printed fix works."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
import zarr

from conftest import BIN, REPO, run_snakemake, tiny_config, workflow_env
from mimprobe.faults import PAUSE_ENV
from mimprobe.synthetic import synthetic_cifar100, write_cifar100_archive

pytestmark = pytest.mark.slow


def pixels_only(**overrides) -> dict:
    """Pixels on 128 + 32 digits in shards of 32, one shard per job, kNN and linear probes."""
    config = tiny_config(datasets={"digits": {"kind": "digits", "shard_size": 32, "limit": {"train": 128, "test": 32}}},
                         backbones={"pixels": {"model": "pixels", "batch_size": 8}})
    config["features"] |= {"chunk_rows": 8, "shards_per_job": 1}
    return config | overrides


@pytest.mark.parametrize("section, name", [
    ("backbones", "a`touch MARKER`"), ("datasets", "d;touch MARKER;e"), ("backbones", "my pixels"),
    ("datasets", "../../../ESCAPED"), ("backbones", ".hidden"), ("datasets", "$(touch MARKER)"),
])
def test_names_that_are_shell_code_or_paths_are_refused_before_any_job(tmp_path, section, name):
    config = pixels_only()
    entry = next(iter(config[section].values()))
    config[section] = {name: entry}
    result = run_snakemake(tmp_path, config, check=False)
    text = result.stdout + result.stderr
    assert result.returncode != 0 and f"config key {section}.{name}: use letters, digits" in text
    assert not (tmp_path / "MARKER").exists() and not list(tmp_path.parent.rglob("ESCAPED"))
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


def test_paths_with_spaces_and_shell_characters_are_quoted(tmp_path):
    """A user's archive at a path full of shell syntax runs like any other, and runs nothing."""
    folder = tmp_path / "my data; touch MARKER $(touch MARKER2) `touch MARKER3`"
    folder.mkdir()
    archive = folder / "cifar 100 'subset'.tar.gz"
    write_cifar100_archive(archive, synthetic_cifar100(train=200, test=100))
    config = pixels_only()
    config["datasets"] = {"mine": {"kind": "cifar100", "archive": str(archive), "verify_md5": False,
                                   "shard_size": 100}}
    run_snakemake(tmp_path, config)
    assert not list(tmp_path.rglob("MARKER*"))
    table = pd.read_csv(tmp_path / "results/report/metrics.csv")
    assert set(table.dataset) == {"mine"} and (table[table.split == "test"].metric == "top1").any()


def test_a_flipped_byte_in_a_verified_store_stops_the_probe_naming_the_fix(tmp_path):
    config = pixels_only()
    run_snakemake(tmp_path, config, "results/embeddings/pixels/digits.ok.json")
    chunk = tmp_path / "results/embeddings/pixels/digits.zarr/train/flat/b000/c/9/0"  # rows 72:80, shard train-0002
    data = bytearray(chunk.read_bytes())
    data[101] ^= 0x01  # an fp16 mantissa bit: the value stays finite
    chunk.write_bytes(bytes(data))
    failed = run_snakemake(tmp_path, config, check=False)
    assert failed.returncode != 0
    log = (tmp_path / "logs/probe_knn/pixels/digits.log").read_text()
    assert "train/flat/b000: rows 64:96 changed since check_store verified them" in log
    fix = "Delete results/embeddings/pixels/digits.chunks/lane-002.json and results/embeddings/pixels/digits.ok.json"
    assert fix in log
    (tmp_path / "results/embeddings/pixels/digits.chunks/lane-002.json").unlink()
    (tmp_path / "results/embeddings/pixels/digits.ok.json").unlink()
    run_snakemake(tmp_path, config)
    root = zarr.open_group(str(tmp_path / "results/embeddings/pixels/digits.zarr"), mode="r")
    assert root["train/flat/b000"].shape == (128, 3072) and (tmp_path / "results/report/metrics.csv").is_file()


def test_a_failed_probe_is_never_followed_by_a_stale_success(tmp_path):
    """Delete a store chunk and change a kNN parameter: the probe fails; a plain rerun fails the same way
    (never "Nothing to be done" over the old report); the printed fix then brings the new k values."""
    config = pixels_only()
    run_snakemake(tmp_path, config)
    (tmp_path / "results/embeddings/pixels/digits.zarr/train/flat/b000/c/9/0").unlink()
    config["probes"]["knn"]["k"] = [3, 7]
    for _ in range(2):  # the run, then the plain rerun
        result = run_snakemake(tmp_path, config, check=False)
        assert result.returncode != 0 and "Nothing to be done" not in result.stdout + result.stderr
        log = (tmp_path / "logs/probe_knn/pixels/digits.log").read_text()
        assert "store chunk file missing" in log
    flag = "results/embeddings/pixels/digits.chunks/lane-002.json"
    assert f"Delete {flag} and results/embeddings/pixels/digits.ok.json" in log
    (tmp_path / flag).unlink()
    (tmp_path / "results/embeddings/pixels/digits.ok.json").unlink()
    run_snakemake(tmp_path, config)
    table = pd.read_csv(tmp_path / "results/report/metrics.csv")
    assert set(table[(table.probe == "knn") & (table.split == "val")].setting) == {"k=3", "k=7"}


def test_killing_only_snakemake_is_recovered_by_unlock_then_rerun_incomplete(tmp_path):
    """The login session drops Snakemake but not its job: the README's recovery (`--unlock`, then
    `--rerun-incomplete`, which Snakemake itself asks for) gives a complete, verified store."""
    config = pixels_only()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    pause = tmp_path / "pause"
    pause.mkdir()
    command = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--configfile",
               str(tmp_path / "config.yaml"), "--cores", "1"]
    process = subprocess.Popen(command, cwd=tmp_path, env=workflow_env() | {PAUSE_ENV: str(pause)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while not list(pause.glob("*.paused")) and time.monotonic() < deadline:
        time.sleep(0.1)
    [paused] = pause.glob("*.paused")
    os.kill(process.pid, signal.SIGKILL)  # Snakemake alone; its job lives on
    process.wait()
    (pause / "release").touch()
    job = int(paused.stem)
    while Path(f"/proc/{job}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    locked = run_snakemake(tmp_path, config, check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    run_snakemake(tmp_path, config, "--unlock")
    incomplete = run_snakemake(tmp_path, config, check=False)
    assert incomplete.returncode != 0 and "--rerun-incomplete" in incomplete.stdout + incomplete.stderr
    run_snakemake(tmp_path, config, "--rerun-incomplete")
    summary = yaml.safe_load((tmp_path / "results/embeddings/pixels/digits.ok.json").read_text())
    assert summary["chunks"] == 5 and (tmp_path / "results/report/metrics.csv").is_file()
