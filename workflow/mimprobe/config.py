"""Config loading and validation: JSON schema (with defaults) plus checks the schema cannot express."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import yaml
from jsonschema import Draft7Validator, validators

from .datasets import BUILTIN_SPLIT_SIZES
from .errors import ConfigError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"
SPLITS = ("train", "test")


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


def validate_config(config: dict) -> dict:
    """Fill defaults in place and reject bad values with a message naming the key."""
    validator = DefaultingValidator(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        raise ConfigError(f"config key {_key_path(first)}: {first.message}")
    _check_semantics(config)
    return config


def _check_semantics(config: dict) -> None:
    from .backbones import check_model_spec

    for name, dataset in config["datasets"].items():
        if dataset["kind"] == "imagefolder" and not dataset.get("root"):
            raise ConfigError(f"config key datasets.{name}.root: kind imagefolder needs a root folder.")
        if dataset["kind"] not in ("cifar100", "cifar10") and dataset.get("archive"):
            raise ConfigError(f"config key datasets.{name}.archive: only cifar100/cifar10 read archives.")
    for name, backbone in config["backbones"].items():
        try:
            check_model_spec(backbone["model"])
        except ConfigError as err:
            raise ConfigError(f"config key backbones.{name}.model: {err}") from None
        batch = backbone.get("batch_size", "auto")
        if isinstance(batch, str) and batch != "auto" or isinstance(batch, int) and batch < 1:
            raise ConfigError(f"config key backbones.{name}.batch_size: use a positive integer or 'auto'.")
    blocks = config["features"]["blocks"]
    if isinstance(blocks, str) and blocks != "all":
        raise ConfigError("config key features.blocks: use 'all' or a list of block indices.")


def load_config(path: str | Path) -> dict:
    with open(path) as handle:
        return validate_config(yaml.safe_load(handle) or {})


def split_sizes(dataset: dict) -> dict[str, int]:
    """Images per split after `limit`, known before any job runs."""
    if dataset["kind"] == "imagefolder":
        from .imagefolder import count_images

        full = count_images(dataset["root"])
    else:
        full = BUILTIN_SPLIT_SIZES[dataset["kind"]]
    limit = dataset.get("limit") or {}
    return {s: min(full[s], limit.get(s) or full[s]) for s in SPLITS}


def shard_count(n_images: int, shard_size: int) -> int:
    return max(1, math.ceil(n_images / shard_size))


def shard_names(dataset: dict) -> list[str]:
    """Shard ids like 'train-0003' for every split of a dataset."""
    sizes = split_sizes(dataset)
    return [
        f"{split}-{i:04d}"
        for split in SPLITS
        for i in range(shard_count(sizes[split], dataset["shard_size"]))
    ]
