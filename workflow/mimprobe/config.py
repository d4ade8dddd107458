"""Config loading and validation: JSON schema (with defaults) plus checks the schema cannot express."""

from __future__ import annotations

import copy
import functools
import math
import re
from pathlib import Path

import yaml
from jsonschema import Draft7Validator, validators

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


@functools.cache
def _schema_file() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def load_schema() -> dict:
    """The schema file, with the dataset kinds and each kind's own keys from the kind registry."""
    from .datasets import KINDS, schema_keys

    schema = copy.deepcopy(_schema_file())
    entry = schema["properties"]["datasets"]["additionalProperties"]["properties"]
    entry["kind"]["enum"] = list(KINDS)
    entry |= {key: owned["schema"] for key, owned in schema_keys().items()}
    return schema


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


def probe_params(family: str, params: dict) -> dict:
    """A probe family's settings with the schema's defaults filled in: families keep no defaults of
    their own, so a direct `fit` call and the workflow read the same values."""
    schema = _schema_file()["properties"]["probes"]["properties"][family]
    filled = copy.deepcopy(params)
    errors = sorted(DefaultingValidator(schema).iter_errors(filled), key=lambda e: list(e.absolute_path))
    if errors:
        where = ".".join(["probes", family, *map(str, errors[0].absolute_path)])
        raise ConfigError(f"config key {where}: {errors[0].message}")
    filled.pop("enabled", None)
    return filled


def _check_semantics(config: dict) -> None:
    from .backbones import check_model_spec

    for name, dataset in config["datasets"].items():
        _check_kind_keys(name, dataset)
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
        _check_blocks_exist(key, name, backbone["model"], blocks)


def _check_kind_keys(name: str, dataset: dict) -> None:
    """A kind's own keys are set only for that kind; required ones (a null default) are set."""
    from .datasets import schema_keys

    for key, owned in schema_keys().items():
        default = owned["schema"].get("default")
        if dataset["kind"] not in owned["kinds"] and dataset.get(key) != default:
            raise ConfigError(f"config key datasets.{name}.{key}: only kind {' or '.join(owned['kinds'])} reads it; "
                              "remove it.")
        if dataset["kind"] in owned["kinds"] and owned["schema"].get("x-needed") and dataset.get(key) is None:
            raise ConfigError(f"config key datasets.{name}.{key}: kind {dataset['kind']} needs it.")


def backbone_features(config: dict, name: str) -> dict:
    """The top-level features settings with this backbone's own overrides applied (a one-block
    baseline such as pixels takes only its own `blocks`, else all of its one block)."""
    from .backbones import source_of

    own = config["backbones"][name].get("features", {})
    features = config["features"] | own
    if "blocks" not in own and source_of(config["backbones"][name]["model"])[0].own_blocks_only:
        features["blocks"] = "all"
    return features


def _check_shard_size(name: str, dataset: dict) -> None:
    """Shards are jobs and Zarr chunks: an integer count of images, and not absurdly many."""
    key = f"config key datasets.{name}.shard_size"
    size = dataset["shard_size"]
    if type(size) is not int:  # JSON schema accepts 64.0 as an integer
        raise ConfigError(f"{key}: {size!r} is not a whole number of images; write it without a decimal point.")
    from .datasets import kind_of
    from .plan import limited

    official = kind_of(dataset).official_sizes
    if official is None:
        return  # image folders and custom archives are counted when the DAG is built
    for split, count in limited(official, dataset).items():
        if shard_count(count, size) > MAX_SHARDS_PER_SPLIT:
            raise ConfigError(
                f"{key}: {size} gives {shard_count(count, size)} shards (jobs) for the {count} {split} images; "
                f"use at least {math.ceil(count / MAX_SHARDS_PER_SPLIT)}."
            )


def _check_blocks_exist(key: str, name: str, model_spec: str, blocks) -> None:
    """Block indices against the architecture, where the registry knows it before any weights load."""
    from .backbones import block_layout

    backbone = block_layout(model_spec)
    if backbone is None or blocks == "all":
        return
    try:
        backbone.resolve_blocks(blocks)
    except IndexError as err:
        raise ConfigError(f"config key {key}: {blocks!r} for backbones.{name} ({model_spec}): {err}; use indices "
                          f"in {-len(backbone.block_names)}..{len(backbone.block_names) - 1} or all.") from None


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
