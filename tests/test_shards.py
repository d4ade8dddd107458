import numpy as np
import pytest

from mimprobe.config import validate_config
from mimprobe.errors import DataError
from mimprobe.shardfile import read_shard
from mimprobe.shards import prepare_shards, stratified_validation


def digits_entry(**extra):
    config = validate_config({"datasets": {"digits": {"kind": "digits", "shard_size": 100, **extra}},
                              "backbones": {"p": {"model": "pixels"}}})
    return config["datasets"]["digits"]


def test_shards_cover_the_limited_splits_with_hashes(tmp_path):
    meta = prepare_shards(digits_entry(limit={"train": 250, "test": 120}), tmp_path, seed=0)
    assert list(meta["shards"]) == ["train-0000", "train-0001", "train-0002", "test-0000", "test-0001"]
    assert meta["splits"]["train"]["count"] == 250 and meta["splits"]["test"]["count"] == 120
    last = read_shard(tmp_path / "train-0002.npz", meta["shards"]["train-0002"]["sha256"])
    assert last["images"].shape == (50, 32, 32, 3) and last["index"].tolist() == list(range(200, 250))
    assert (tmp_path / "meta.json").is_file()


def test_validation_split_is_stratified_seeded_and_inside_train(tmp_path):
    meta = prepare_shards(digits_entry(val_fraction=0.2), tmp_path, seed=3)
    held = np.asarray(meta["validation"]["train_positions"])
    labels = np.concatenate([read_shard(tmp_path / f"train-{i:04d}.npz")["labels"] for i in range(13)])
    per_class = np.bincount(labels[held], minlength=10) / np.bincount(labels, minlength=10)
    assert np.allclose(per_class, 0.2, atol=0.02)
    assert held.max() < 1297 and len(np.unique(held)) == len(held)
    assert np.array_equal(held, stratified_validation(labels, 0.2, seed=3))
    assert not np.array_equal(held, stratified_validation(labels, 0.2, seed=4))


def test_truncated_shard_is_refused_naming_the_file(tmp_path):
    meta = prepare_shards(digits_entry(limit={"train": 100, "test": 100}), tmp_path, seed=0)
    shard = tmp_path / "train-0000.npz"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(DataError, match="train-0000.npz.*meta.json"):
        read_shard(shard, meta["shards"]["train-0000"]["sha256"])
