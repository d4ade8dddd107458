"""How probes run: the same bits on any CPU thread count, GPU and CPU within the stated tolerance,
timing in the probe JSON, progress lines with an ETA in the log."""

import io
import json
import subprocess

import numpy as np
import pytest
import torch
from conftest import BIN, REPO, workflow_env
from test_probes import FAST, blobs

from mimprobe.probes import attentive, family_module, fewshot, kmeans, knn, linear, logreg, mlp, ops, svm
from mimprobe.probes.common import Splits, cpu_threads, run_family
from mimprobe.probes.progress import Progress

FAMILIES = [knn, linear, logreg, mlp, svm, fewshot, kmeans, attentive]


def name(module) -> str:
    return module.__name__.split(".")[-1]


def same(a, b) -> bool:
    """Bit-for-bit equality of nested records (tensors, arrays, dicts, lists, numbers)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def records(family, splits, threads: int, device="cpu") -> list[dict]:
    torch.manual_seed(0)
    with cpu_threads(threads):
        outcomes = family.fit(splits, FAST.get(family, {}), 0, torch.device(device))
    return [vars(o) for o in (outcomes if isinstance(outcomes, list) else [outcomes])]


def large_blobs(family) -> Splits:
    """Big enough that torch splits reductions and products across threads (> 32,768 elements per
    reduction), with 10 classes (a logit width that is not a multiple of 16)."""
    return blobs(classes=10, per_class=450, dim=24, spread=2.0, tokens=4 if family is attentive else 0)


@pytest.mark.parametrize("family", FAMILIES, ids=name)
def test_every_family_gives_the_same_records_on_1_and_3_threads(family):
    splits = large_blobs(family)
    one, three = records(family, splits, 1), records(family, splits, 3)
    assert same(one, three)
    assert all(len(r["validation"]) or family is kmeans for r in one)


def test_products_and_sums_are_the_same_on_every_thread_count():
    generator = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for rows in (1, 5, 7, 10, 11, 64, 1000):
            for inner, columns in ((16, 17), (300, 100), (300, 10), (64, 128)):
                a = torch.randn(rows, inner, generator=generator).to(dtype)
                b = torch.randn(inner, columns, generator=generator).to(dtype)
                results = []
                for threads in (1, 3, 4, 8):
                    with cpu_threads(threads):
                        results.append(ops.matmul(a, b))
                assert all(torch.equal(results[0], r) for r in results[1:]), (dtype, rows, inner, columns)
                assert torch.allclose(results[0].float(), (a.double() @ b.double()).float(), rtol=0.02, atol=0.1)
    x = torch.randn(1_000_003, generator=generator)
    sums = []
    for threads in (1, 3, 4, 8):
        with cpu_threads(threads):
            sums.append(ops.total(x))
    assert all(torch.equal(sums[0], s) for s in sums[1:])
    assert float(sums[0]) == pytest.approx(float(x.double().sum()), abs=1e-2)


def test_thread_count_is_restored_after_a_run():
    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.fixture(scope="module")
def pixel_store(tmp_path_factory):
    """A real store: digits as raw pixels (one 3,072-d `flat` array), 256 train / 128 test images."""
    from mimprobe.config import validate_config
    from mimprobe.extract import embed_shards, init_store
    from mimprobe.plan import store_layout
    from mimprobe.shards import prepare_shards

    tmp = tmp_path_factory.mktemp("pixel_store")
    config = validate_config({
        "datasets": {"digits": {"kind": "digits", "shard_size": 64, "limit": {"train": 256, "test": 128}}},
        "backbones": {"b": {"model": "pixels"}},
    })
    prepare_shards(config["datasets"]["digits"], tmp / "shards", 0)
    store, meta = tmp / "b.zarr", tmp / "shards/meta.json"
    init_store(store, store_layout(config["datasets"]["digits"]), config["backbones"]["b"], config["features"], 0)
    embed_shards(store, sorted((tmp / "shards").glob("*.npz")), tmp / "b.chunks/lane-000.json",
                 config["backbones"]["b"], config["features"], 0)
    return store, meta


@pytest.mark.parametrize("family", ["knn", "linear", "logreg", "svm", "fewshot", "kmeans"])
def test_probe_json_and_predictions_are_identical_on_1_and_3_threads(pixel_store, tmp_path, family):
    store, meta = pixel_store
    params = FAST.get(family_module(family), {}) if family != "kmeans" else {"n_init": 2}
    outputs = []
    for threads in (1, 3):
        out = tmp_path / f"{threads}/{family}.json"
        payload = run_family(family, family_module(family), store, meta, out, params, 0, 50,
                             {"backbone": "b", "dataset": "digits"}, device="cpu", threads=threads)
        assert set(payload["timing"]) == {"load_s", "fit_s", "bootstrap_s"}
        assert all(v >= 0 for v in payload["timing"].values()) and payload["timing"]["fit_s"] > 0
        assert payload["compute"] == {"device": "cpu", "threads": threads}
        outputs.append((payload["results"], out.with_suffix(".predictions.npz").read_bytes()))
    assert outputs[0][0] == outputs[1][0]
    assert outputs[0][1] == outputs[1][1]


def test_probe_command_logs_progress_and_writes_timing(pixel_store, tmp_path):
    store, meta = pixel_store
    out = tmp_path / "logreg.json"
    command = [str(BIN / "python"), "-m", "mimprobe.cli", "probe", "logreg", "--store", str(store), "--meta", str(meta),
               "--out", str(out), "--params", json.dumps(FAST[logreg]), "--bootstrap", "20", "--backbone", "b",
               "--dataset", "digits", "--device", "cpu", "--threads", "2"]
    result = subprocess.run(command, capture_output=True, text=True, env=workflow_env(), cwd=REPO, check=False)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    assert "logreg block 0 flat, starting: 0% after 0s, ETA unknown" in result.stderr.splitlines()
    payload = json.loads(out.read_text())
    assert payload["timing"]["fit_s"] > 0 and payload["compute"] == {"device": "cpu", "threads": 2}


def test_progress_lines_are_rate_limited_and_carry_an_eta():
    now = [0.0]
    stream = io.StringIO()
    progress = Progress("linear", units=2, every=5.0, stream=stream, clock=lambda: now[0])
    progress.start("block 23 cls")  # printed: the first line
    for second in range(1, 30):
        now[0] = float(second)
        progress.update(second / 40, f"epoch {second}")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 + 29 // 5  # one every 5 s at most
    assert lines[1] == "linear [1/2] block 23 cls, epoch 5: 6% after 5s, ETA 1m15s"
    progress.finish_unit()
    now[0] = 100.0
    progress.start("block 23 mean")
    assert stream.getvalue().splitlines()[-1] == "linear [2/2] block 23 mean, starting: 50% after 1m40s, ETA 1m40s"


def test_a_device_that_is_not_there_is_named_in_one_line(pixel_store, tmp_path):
    store, meta = pixel_store
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    command = [str(BIN / "python"), "-m", "mimprobe.cli", "probe", "knn", "--store", str(store), "--meta", str(meta),
               "--out", str(tmp_path / "knn.json"), "--backbone", "b", "--dataset", "digits", "--device", "cuda:7"]
    result = subprocess.run(command, capture_output=True, text=True, env=workflow_env(), cwd=REPO, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "mimprobe probe: error: config key probes.device: cuda:7 is not on this machine" in result.stderr
    assert not (tmp_path / "knn.json").exists()


CUDA = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason="no CUDA device here: the GPU/CPU agreement test needs one")


@CUDA
@pytest.mark.parametrize("family", FAMILIES, ids=name)
def test_gpu_and_cpu_agree_within_the_stated_tolerance(family):
    """README, "Probe speed": every validation score and the test top-1 (k-means: clustering
    accuracy) within 0.02; kNN probabilities within 1e-4 where the same k is chosen."""
    splits = large_blobs(family)
    cpu, gpu = records(family, splits, 0, "cpu"), records(family, splits, 0, "cuda")
    assert len(cpu) == len(gpu)
    for c, g in zip(cpu, gpu):
        assert c["validation"].keys() == g["validation"].keys()
        for key in c["validation"]:
            assert abs(c["validation"][key] - g["validation"][key]) <= 0.02, key
        if family is kmeans:
            from mimprobe.metrics import cluster_metrics_with_ci

            acc = [cluster_metrics_with_ci(splits.test.y, r["test_clusters"], 0)[0]["acc"]["value"] for r in (c, g)]
            assert abs(acc[0] - acc[1]) <= 0.02
            continue
        top1 = [float((r["test_probs"].argmax(1) == splits.test.y).mean()) for r in (c, g)]
        assert abs(top1[0] - top1[1]) <= 0.02
        if family is knn and c["setting"] == g["setting"]:
            np.testing.assert_allclose(g["test_probs"], c["test_probs"], atol=1e-4)
