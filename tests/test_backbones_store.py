import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from mimprobe import extract
from mimprobe.backbones import create_backbone
from mimprobe.config import validate_config
from mimprobe.errors import DataError, MimprobeError
from mimprobe.extract import embed_shards, init_store
from mimprobe.plan import store_layout
from mimprobe.shardfile import read_shard
from mimprobe.shards import prepare_shards
from mimprobe.store import open_store, read_features, region_arrays, verify_store
from mimprobe.writer import RegionWriter


def test_effnet_lite0_loads_the_packaged_imagenet_weights():
    backbone = create_backbone("effnet_lite0")
    assert backbone.block_names[-1] == "pre_logits" and backbone.mean == (0.5, 0.5, 0.5)
    x = backbone.preprocess(torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8))
    features = backbone.forward_blocks(x, [len(backbone.block_names) - 1], ["mean"])
    model = backbone.model
    reference = model.forward_head(model.forward_features(x), pre_logits=True)
    assert torch.equal(next(iter(features.values())), reference)
    # trained BatchNorm statistics, not the fresh-model defaults
    assert not torch.allclose(model.bn1.running_var, torch.ones_like(model.bn1.running_var))


def test_random_backbone_is_the_same_for_the_same_seed():
    a, b = (create_backbone("random:vit_tiny_patch16_224", seed=1) for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_stopping_after_the_last_requested_block_matches_the_full_pass():
    backbone = create_backbone("random:vit_tiny_patch16_224", seed=0)
    x = backbone.preprocess(torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8))
    early = backbone.forward_blocks(x, [3], ["cls", "mean"])
    full = backbone.forward_blocks(x, [3, 11], ["cls", "mean"])
    assert torch.allclose(early[(3, "cls")], full[(3, "cls")]) and torch.allclose(early[(3, "mean")], full[(3, "mean")])


def test_mim_refiner_without_local_weights_file_fails_clearly(tmp_path):
    with pytest.raises(MimprobeError, match="does not exist. Set `weights:` of this backbone"):
        create_backbone("mim_refiner:mae_refined_l16", weights=str(tmp_path / "maerefined_l16.th"))


def small_store(tmp_path, model: str, batch_size: int, **features):
    """Digits in shards of 16 (train 0-1, test 0) and a store chunked every 4 rows; returns it and
    a function that embeds one shard (and returns its flag path)."""
    config = validate_config({
        "datasets": {"digits": {"kind": "digits", "shard_size": 16, "limit": {"train": 32, "test": 16}}},
        "backbones": {"b": {"model": model, "batch_size": batch_size}},
        "features": {"chunk_rows": 4} | features,
    })
    prepare_shards(config["datasets"]["digits"], tmp_path / "shards", 0)
    store = tmp_path / "b.zarr"
    backbone_cfg, features = config["backbones"]["b"], config["features"]
    init_store(store, store_layout(config["datasets"]["digits"]), backbone_cfg, features, 0)

    def embed(*names: str) -> Path:
        """Embed shards in one job; its flag sits where the workflow keeps flags (b.chunks/)."""
        flag = tmp_path / "b.chunks" / f"{names[0]}.json"
        embed_shards(store, [tmp_path / f"shards/{name}.npz" for name in names], flag, backbone_cfg, features, 0)
        return flag

    return store, embed


SHARDS = ["train-0000", "train-0001", "test-0000"]


@pytest.mark.parametrize("model", ["random:vit_tiny_patch16_224", "mim_refiner:debug"])
def test_store_holds_exactly_the_directly_computed_features(tmp_path, model):
    # batches of 5 rows straddle the 4-row chunks, 4 chunks per shard
    store, embed = small_store(tmp_path, model, 5, blocks=[1, -1], pooling=["cls", "mean"])
    flags = [embed(name) for name in SHARDS]
    assert verify_store(store, flags)["chunks"] == 3
    root = open_store(store)
    assert root.attrs["chunk_rows"] == 4 and root["train/cls/b001"].chunks[0] == 4
    assert len(list((store / "train/cls/b001/c").iterdir())) == 8  # 32 rows: every chunk has its file
    images = read_shard(tmp_path / "shards/train-0001.npz")["images"]
    backbone = create_backbone(model, seed=0)
    last = len(backbone.block_names) - 1
    direct = backbone.forward_blocks(backbone.preprocess(torch.from_numpy(images)), [1, last], ["cls", "mean"])
    for (block, pooling), values in direct.items():
        stored = read_features(root, "train", pooling, block)[16:32]
        assert np.array_equal(stored, values.numpy().astype(np.float16).astype(np.float32))
    assert root["train/labels"][:].tolist() == np.concatenate(
        [read_shard(tmp_path / f"shards/train-000{i}.npz")["labels"] for i in range(2)]).tolist()


def record_forwards(monkeypatch, on_call):
    """Every later embed_shards uses one pixels backbone whose forward runs `on_call(index)` after it."""
    backbone = create_backbone("pixels")
    forward, calls = backbone.forward_blocks, []

    def recorded(*args):
        outputs = forward(*args)
        calls.append(None)
        return on_call(len(calls) - 1, outputs)

    monkeypatch.setattr(backbone, "forward_blocks", recorded)
    monkeypatch.setattr(extract, "build", lambda *args: backbone)


def test_chunks_are_written_while_later_batches_compute(tmp_path, monkeypatch):
    store, embed = small_store(tmp_path, "pixels", 2)  # 8 batches, 4 chunks
    events, write_started = [], threading.Event()
    write_chunk = RegionWriter._write_chunk

    def recorded_write(self, name, lo, hi):
        events.append(("write", lo, threading.current_thread().name))
        write_started.set()
        write_chunk(self, name, lo, hi)

    def last_forward_waits_for_a_write(index, outputs):
        if index == 7:  # no timing: an overlapping writer starts a write meanwhile, a serial one never
            write_started.wait(timeout=60)
        events.append(("forward done", index, threading.current_thread().name))
        return outputs

    monkeypatch.setattr(RegionWriter, "_write_chunk", recorded_write)
    record_forwards(monkeypatch, last_forward_waits_for_a_write)
    flag = embed("train-0000")
    kinds = [kind for kind, *_ in events]
    assert kinds.index("write") < len(kinds) - 1 - kinds[::-1].index("forward done")
    assert {thread for kind, _, thread in events if kind == "write"} <= {f"mimprobe-writer_{i}" for i in range(4)}
    assert sorted({lo for kind, lo, _ in events if kind == "write"}) == [0, 4, 8, 12]
    assert set(json.loads(flag.read_text())["shards"][0]["checksums"]) == {"labels", "coarse_labels", "flat/b000"}
    images = torch.from_numpy(read_shard(tmp_path / "shards/train-0000.npz")["images"])
    pixels = create_backbone("pixels")
    direct = pixels.forward_blocks(pixels.preprocess(images), [0], ["flat"])[(0, "flat")].half().numpy()
    assert np.array_equal(zarr.open_group(str(store), mode="r")["train/flat/b000"][:16], direct)


def test_non_finite_features_fail_the_job_without_a_flag(tmp_path, monkeypatch):
    store, embed = small_store(tmp_path, "pixels", 2)

    def nan_from_the_fourth_batch(index, outputs):
        return {key: value.fill_(float("nan")) if index >= 3 else value for key, value in outputs.items()}

    record_forwards(monkeypatch, nan_from_the_fourth_batch)
    expected = "NaN/Inf features in block 0 \\(flat\\) in float32; the shard was not marked done"
    with pytest.raises(MimprobeError, match=expected):
        embed("train-0000")
    assert not (tmp_path / "b.chunks/train-0000.json").exists()
    root = zarr.open_group(str(store), mode="r")
    assert np.isfinite(root["train/flat/b000"][:16]).all()  # rows 6:8 held NaN: their chunk was never written


def test_a_missing_chunk_inside_a_shard_region_names_the_job_flag_that_holds_it(tmp_path):
    store, embed = small_store(tmp_path, "pixels", 8)
    lane = embed("train-0000", "train-0001")  # one job, two shards, two regions
    embed("test-0000")
    assert [r["shard"] for r in json.loads(lane.read_text())["shards"]] == ["train-0000", "train-0001"]
    open_store(store)
    (store / "train/flat/b000/c/5/0").unlink()  # rows 20:24, the second chunk of shard train-0001
    with pytest.raises(DataError, match="c/5/0: store chunk file missing") as caught:
        open_store(store, "r")
    assert f"Delete {lane} and" in str(caught.value) and "re-embed shard train-0001" in str(caught.value)


def test_a_region_off_chunk_boundaries_is_refused(tmp_path):
    store, _ = small_store(tmp_path, "pixels", 8)
    root = open_store(store, "r+")
    with pytest.raises(DataError, match="every 4 rows but shard rows 2:18 do not fall on chunk boundaries"):
        region_arrays(root, "train", 2, 18, ["labels", "flat/b000"])
    assert set(region_arrays(root, "train", 16, 32, ["labels", "flat/b000"])) == {"labels", "flat/b000"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_bf16_features_are_close_to_fp32_cpu(tmp_path):
    backbone = create_backbone("random:vit_tiny_patch16_224", seed=0)
    images = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
    cpu = backbone.forward_blocks(backbone.preprocess(images), [5, 11], ["cls", "mean"])
    gpu_backbone = backbone.to("cuda", torch.bfloat16)
    with torch.inference_mode():
        gpu = gpu_backbone.forward_blocks(gpu_backbone.preprocess(images.cuda()).bfloat16(), [5, 11], ["cls", "mean"])
    for key, expected in cpu.items():
        cosine = torch.nn.functional.cosine_similarity(gpu[key].float().cpu(), expected, dim=1)
        assert cosine.min() > 0.99, key


def test_cpu_bfloat16_opt_in_stores_features_close_to_float32(tmp_path):
    config = validate_config({
        "datasets": {"digits": {"kind": "digits", "shard_size": 16, "limit": {"train": 16, "test": 16}}},
        "backbones": {"vit": {"model": "random:vit_tiny_patch16_224", "features": {"precision": "bfloat16"}}},
        "features": {"blocks": [5, -1], "pooling": ["cls", "mean"], "device": "cpu"},
    })
    from mimprobe.config import backbone_features

    meta = prepare_shards(config["datasets"]["digits"], tmp_path / "shards", 0)
    features = backbone_features(config, "vit")
    init_store(tmp_path / "vit.zarr", store_layout(config["datasets"]["digits"]), config["backbones"]["vit"],
               features, 0)
    record = embed_shards(tmp_path / "vit.zarr", [tmp_path / "shards/train-0000.npz"], tmp_path / "flag.json",
                          config["backbones"]["vit"], features, 0)
    assert record["dtype"] == "bfloat16" and list(meta["shards"])[0] == "train-0000"
    root = open_store(tmp_path / "vit.zarr", mode="r+")
    backbone = create_backbone("random:vit_tiny_patch16_224", seed=0)
    images = torch.from_numpy(read_shard(tmp_path / "shards/train-0000.npz")["images"])
    exact = backbone.forward_blocks(backbone.preprocess(images), [5, 11], ["cls", "mean"])
    for (block, pooling), expected in exact.items():
        stored = torch.from_numpy(read_features(root, "train", pooling, block)[:16])
        assert not torch.equal(stored, expected.half().float())  # really computed in bfloat16
        assert torch.nn.functional.cosine_similarity(stored, expected, dim=1).min() > 0.99, (block, pooling)
