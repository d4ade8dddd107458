"""Config loading and validation: JSON schema (with defaults) plus checks the schema cannot express."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import yaml
from jsonschema import Draft7Validator, validators

from .datasets import BUILTIN_SPLIT_SIZES
from .errors import ConfigError
from .layout import NAME_PATTERN, shard_count

SCHEMA_PATH = Path(__file__).resolve().parent / "config.schema.yaml"
MAX_SHARDS_PER_SPLIT = 10_000  # one Snakemake job each: beyond this the DAG itself becomes the bottleneck


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


DefaultingValidator = _with_defaults(Draft7Validator)


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _key_path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _check_names(config: dict) -> None:
    """Dataset and backbone names become folder names and command-line words: a safe alphabet only."""
    for section in ("datasets", "backbones"):
        for name in config.get(section) or {}:
            if not isinstance(name, str) or not re.match(NAME_PATTERN, name):
                raise ConfigError(f"config key {section}.{name}: use letters, digits, '_', '.' and '-' in names, "
                                  "not starting with '.' (names become folder names and command-line words).")


def validate_config(config: dict) -> dict:
    """Fill defaults in place and reject bad values with a message naming the key."""
    if not isinstance(config, dict):
        raise ConfigError(f"the config is a {type(config).__name__}, not a mapping of keys to values.")
    _check_names(config)
    validator = DefaultingValidator(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        raise ConfigError(f"config key {_key_path(first)}: {first.message}")
    _check_semantics(config)
    return config


def _check_semantics(config: dict) -> None:
    from .backbones import check_model_spec, parse_spec

    for name, dataset in config["datasets"].items():
        if dataset["kind"] == "imagefolder" and not dataset.get("root"):
            raise ConfigError(f"config key datasets.{name}.root: kind imagefolder needs a root folder.")
        if dataset["kind"] not in ("cifar100", "cifar10") and dataset.get("archive"):
            raise ConfigError(f"config key datasets.{name}.archive: only cifar100/cifar10 read archives.")
        if dataset["kind"] != "imagefolder" and dataset["allow_outside_links"]:
            raise ConfigError(f"config key datasets.{name}.allow_outside_links: only imagefolder reads links.")
        _check_shard_size(name, dataset)
    for name, backbone in config["backbones"].items():
        try:
            check_model_spec(backbone["model"])
        except ConfigError as err:
            raise ConfigError(f"config key backbones.{name}.model: {err}") from None
        batch = backbone.get("batch_size", "auto")
        if isinstance(batch, str) and batch != "auto" or isinstance(batch, int) and batch < 1:
            raise ConfigError(f"config key backbones.{name}.batch_size: use a positive integer or 'auto'.")
    for name, backbone in config["backbones"].items():
        key = f"backbones.{name}.features.blocks" if "blocks" in backbone["features"] else "features.blocks"
        blocks = backbone_features(config, name)["blocks"]
        if isinstance(blocks, str) and blocks != "all":
            raise ConfigError(f"config key {key}: use 'all' or a list of block indices.")
        if parse_spec(backbone["model"])[0] == "pixels":
            _check_pixels_blocks(name, backbone["features"].get("blocks", "all"))
        else:
            _check_blocks_exist(key, name, backbone["model"], blocks)


def backbone_features(config: dict, name: str) -> dict:
    """The top-level features settings with this backbone's own overrides applied."""
    return config["features"] | config["backbones"][name].get("features", {})


def _check_shard_size(name: str, dataset: dict) -> None:
    """Shards are jobs and Zarr chunks: an integer count of images, and not absurdly many."""
    key = f"config key datasets.{name}.shard_size"
    size = dataset["shard_size"]
    if type(size) is not int:  # JSON schema accepts 64.0 as an integer
        raise ConfigError(f"{key}: {size!r} is not a whole number of images; write it without a decimal point.")
    if dataset["kind"] not in BUILTIN_SPLIT_SIZES:
        return  # image folders are counted when the DAG is built
    limit = dataset.get("limit") or {}
    sizes = {s: min(n, limit.get(s) or n) for s, n in BUILTIN_SPLIT_SIZES[dataset["kind"]].items()}
    for split, count in sizes.items():
        if shard_count(count, size) > MAX_SHARDS_PER_SPLIT:
            raise ConfigError(
                f"{key}: {size} gives {shard_count(count, size)} shards (jobs) for the {count} {split} images; "
                f"use at least {math.ceil(count / MAX_SHARDS_PER_SPLIT)}."
            )


def static_backbone(model_spec: str):
    """The backbone's block layout without weights or memory: timm models built on the meta device.

    Returns None for kinds whose architecture is only known once loaded (checked when the job runs).
    """
    from .backbones import parse_spec

    kind, arg = parse_spec(model_spec)
    arch = {"effnet_lite0": "tf_efficientnet_lite0", "random": arg, "synthetic": arg, "timm": arg}.get(kind)
    if arch is None:
        return None
    import timm
    import torch

    from .backbones.timm_models import wrap_timm_model

    try:
        with torch.device("meta"):
            return wrap_timm_model(timm.create_model(arch, pretrained=False))
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta is checked when it runs
        return None


def _check_blocks_exist(key: str, name: str, model_spec: str, blocks) -> None:
    backbone = static_backbone(model_spec)
    if backbone is None or blocks == "all":
        return
    try:
        backbone.resolve_blocks(blocks)
    except IndexError as err:
        raise ConfigError(f"config key {key}: backbones.{name} ({model_spec}): {err}.") from None


def _check_pixels_blocks(name: str, blocks) -> None:
    """Raw pixels are one block: the top-level blocks do not apply, and its own may only name it."""
    if blocks not in ("all", [0], [-1]):
        raise ConfigError(f"config key backbones.{name}.features.blocks: {blocks!r}, but the pixels baseline has "
                          "one block; use [0], [-1] or all, or remove the key.")


def load_config(path: str | Path) -> dict:
    """Read and validate a config file; a missing or malformed file is one line naming it."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror}). Check the path.") from None
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"{path}: not valid YAML{line} ({getattr(err, 'problem', None) or err}).") from None
    try:
        return validate_config(config)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
