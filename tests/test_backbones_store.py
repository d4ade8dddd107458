import numpy as np
import pytest
import torch

from mimprobe.backbones import create_backbone
from mimprobe.config import validate_config
from mimprobe.errors import MimprobeError
from mimprobe.extract import embed_chunk, init_store
from mimprobe.shards import prepare_shards, read_shard
from mimprobe.store import open_store, read_features, verify_store


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
    a, b = create_backbone("random:vit_tiny_patch16_224", seed=1), create_backbone("random:vit_tiny_patch16_224", seed=1)
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


@pytest.mark.parametrize("model", ["random:vit_tiny_patch16_224", "mim_refiner:debug"])
def test_store_holds_exactly_the_directly_computed_features(tmp_path, model):
    config = validate_config({
        "datasets": {"digits": {"kind": "digits", "shard_size": 16, "limit": {"train": 32, "test": 16}}},
        "backbones": {"vit": {"model": model, "batch_size": 5}},
        "features": {"blocks": [1, -1], "pooling": ["cls", "mean"]},
    })
    meta = prepare_shards(config["datasets"]["digits"], tmp_path / "shards", "resources", 0)
    store = tmp_path / "vit.zarr"
    backbone_cfg, features = config["backbones"]["vit"], config["features"]
    init_store(store, tmp_path / "shards/meta.json", backbone_cfg, features, 0)
    flags = []
    for name in meta["shards"]:
        flags.append(tmp_path / f"{name}.json")
        embed_chunk(store, tmp_path / f"shards/{name}.npz", tmp_path / "shards/meta.json", flags[-1],
                    backbone_cfg, features, 0)
    assert verify_store(store, flags)["chunks"] == 3
    root = open_store(store)
    images = read_shard(tmp_path / "shards/train-0001.npz")["images"]
    backbone = create_backbone(model, seed=0)
    last = len(backbone.block_names) - 1
    direct = backbone.forward_blocks(backbone.preprocess(torch.from_numpy(images)), [1, last], ["cls", "mean"])
    for (block, pooling), values in direct.items():
        stored = read_features(root, "train", pooling, block)[16:32]
        assert np.array_equal(stored, values.numpy().astype(np.float16).astype(np.float32))
    assert root["train/labels"][:].tolist() == np.concatenate(
        [read_shard(tmp_path / f"shards/train-000{i}.npz")["labels"] for i in range(2)]).tolist()


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

    meta = prepare_shards(config["datasets"]["digits"], tmp_path / "shards", "resources", 0)
    features = backbone_features(config, "vit")
    init_store(tmp_path / "vit.zarr", tmp_path / "shards/meta.json", config["backbones"]["vit"], features, 0)
    record = embed_chunk(tmp_path / "vit.zarr", tmp_path / "shards/train-0000.npz", tmp_path / "shards/meta.json",
                         tmp_path / "flag.json", config["backbones"]["vit"], features, 0)
    assert record["dtype"] == "bfloat16" and list(meta["shards"])[0] == "train-0000"
    root = open_store(tmp_path / "vit.zarr", mode="r+")
    backbone = create_backbone("random:vit_tiny_patch16_224", seed=0)
    images = torch.from_numpy(read_shard(tmp_path / "shards/train-0000.npz")["images"])
    exact = backbone.forward_blocks(backbone.preprocess(images), [5, 11], ["cls", "mean"])
    for (block, pooling), expected in exact.items():
        stored = torch.from_numpy(read_features(root, "train", pooling, block)[:16])
        assert not torch.equal(stored, expected.half().float())  # really computed in bfloat16
        assert torch.nn.functional.cosine_similarity(stored, expected, dim=1).min() > 0.99, (block, pooling)
