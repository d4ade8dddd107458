import copy
import math
import re

import pytest
import yaml
from conftest import REPO, tiny_config

from mimprobe.config import load_config, validate_config
from mimprobe.errors import ConfigError
from mimprobe.plan import shard_names


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


def _documented_value(text: str):
    """A default as config/README.md writes it: `yaml`, a number, or a range in words."""
    text = text.strip().strip("`")
    if text == "—":
        return "required"
    if match := re.fullmatch(r"decades (\S+) … (\S+)", text):
        low, high = (round(math.log10(float(v))) for v in match.groups())
        return ("decades", low, high)
    if match := re.fullmatch(r"(\d+) rates, (\S+) … (\S+)", text):
        return ("rates", int(match[1]), float(match[2]), float(match[3]))
    value = yaml.safe_load(text)
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def _schema_value(default):
    """The schema's default in the documented form (a long numeric list as a range in words)."""
    if isinstance(default, list) and len(default) > 4 and all(isinstance(v, float) for v in default):
        exponents = [math.log10(v) for v in default]
        if all(e == round(e) for e in exponents) and exponents == list(range(round(exponents[0]),
                                                                              round(exponents[-1]) + 1)):
            return ("decades", round(exponents[0]), round(exponents[-1]))
        return ("rates", len(default), default[0], default[-1])
    return default


def _schema_defaults(node: dict, prefix: str) -> dict:
    """Every leaf key of the schema with its default ("required" where it has none)."""
    found = {}
    if "properties" in node:
        for name, child in node["properties"].items():
            found |= _schema_defaults(child, f"{prefix}.{name}" if prefix else name)
        if "default" in node and all(value == "required" for value in found.values()):
            return {prefix: node["default"]}  # an override section (backbones.<name>.features): one row
    elif isinstance(node.get("additionalProperties"), dict) and "properties" in node["additionalProperties"]:
        found |= _schema_defaults(node["additionalProperties"], f"{prefix}.<name>")
    else:
        found[prefix] = node.get("default", "required")
    return found


def _documented_defaults() -> dict:
    """Rows of config/README.md's table; `a.b.c` / `d` / `e` rows name siblings of c."""
    found = {}
    for line in (REPO / "config/README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        keys, values = cells[0].split(" / "), cells[1].split(" / ")
        first = keys[0].strip("`")
        parent = first.rsplit(".", 1)[0]
        names = [first] + [f"{parent}.{k.strip('`').lstrip('.')}" for k in keys[1:]]
        values = values if len(values) == len(names) else values * len(names)
        found |= dict(zip(names, map(_documented_value, values), strict=True))
    return found


def test_config_readme_table_matches_every_schema_default():
    from mimprobe.config import load_schema

    schema = {key: _schema_value(value) for key, value in _schema_defaults(load_schema(), "").items()}
    documented = _documented_defaults()
    assert set(documented) == set(schema), (set(schema) - set(documented), set(documented) - set(schema))
    mismatched = {key: (documented[key], schema[key]) for key in schema if documented[key] != schema[key]}
    assert not mismatched, mismatched
