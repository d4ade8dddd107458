import copy

import pytest
import yaml

from conftest import REPO, tiny_config
from mimprobe.config import load_config, validate_config
from mimprobe.plan import shard_names
from mimprobe.errors import ConfigError


@pytest.mark.parametrize("name", ["config.yaml", "demo.yaml"])
def test_shipped_configs_are_valid(name):
    config = load_config(REPO / "config" / name)
    assert config["features"]["compressor"] == "none"


def test_defaults_are_filled_in():
    config = validate_config({"datasets": {"d": {"kind": "digits"}}, "backbones": {"p": {"model": "pixels"}}})
    assert config["datasets"]["d"]["shard_size"] == 1000
    assert config["probes"]["knn"]["temperature"] == 0.07
    assert config["features"]["pooling"] == ["cls", "mean"]


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c["datasets"]["digits"].update(shard_size=0), "datasets.digits.shard_size"),
        (lambda c: c["datasets"]["digits"].update(colour="red"), "datasets.digits"),
        (lambda c: c.update(seeds=1), "<top level>"),
        (lambda c: c["backbones"]["pixels"].update(model="keras:resnet"), "backbones.pixels.model"),
        (lambda c: c["backbones"]["random_vit"].update(model="random:no_such_net"), "backbones.random_vit.model"),
        (lambda c: c["probes"]["knn"].update(k=[]), "probes.knn.k"),
        (lambda c: c["features"].update(pooling=["max"]), "features.pooling.0"),
        (lambda c: c["datasets"]["digits"].update(val_fraction=0.9), "datasets.digits.val_fraction"),
        (lambda c: c["backbones"]["random_vit"].update(features={"blok": [1]}), "backbones.random_vit.features"),
        (lambda c: c["backbones"]["random_vit"].update(features={"blocks": [40]}),
         "backbones.random_vit.features.blocks"),
        (lambda c: c["features"].update(precision="fp8"), "features.precision"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(mutate, key):
    config = copy.deepcopy(tiny_config())
    mutate(config)
    with pytest.raises(ConfigError, match=f"config key {key}[:. ]"):
        validate_config(config)


def test_limit_sets_the_shards_before_any_job_runs():
    config = validate_config(tiny_config())
    assert shard_names(config["datasets"]["digits"]) == [
        "train-0000", "train-0001", "train-0002", "train-0003", "test-0000", "test-0001"]


def test_demo_config_fans_out_to_at_least_four_chunks_per_split():
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    names = shard_names(validate_config(config)["datasets"]["digits"])
    assert sum(n.startswith("train") for n in names) >= 4 and sum(n.startswith("test") for n in names) >= 4


def test_a_backbone_overrides_only_the_features_keys_it_names():
    from mimprobe.config import backbone_features

    config = tiny_config()
    config["backbones"]["random_vit"]["features"] = {"blocks": "all", "precision": "bfloat16", "chunk_rows": 16}
    config = validate_config(config)
    assert backbone_features(config, "random_vit") == config["features"] | {"blocks": "all", "precision": "bfloat16",
                                                                            "chunk_rows": 16}
    # raw pixels have one block: the top-level blocks do not apply to them
    assert backbone_features(config, "pixels") == config["features"] | {"blocks": "all"}
