"""Where everything lives: results paths, shard and lane names, store array names, record keys.

The rules, the CLI, the report and `predict` all build paths and keys here, so the layout is
written once. Path functions take names or Snakemake wildcard patterns alike
(`store_path("{backbone}", "{dataset}")`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

SPLITS = ("train", "test")
RESULTS = "results"
REPORT_DIR = f"{RESULTS}/report"
NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$"  # dataset and backbone names: safe as paths and shell words


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:04d}"


def shard_count(n_images: int, shard_size: int) -> int:
    return max(1, math.ceil(n_images / shard_size))


def lane_name(index: int) -> str:
    return f"lane-{index:03d}"


def shards_dir(dataset: str) -> str:
    return f"{RESULTS}/shards/{dataset}"


def shard_path(dataset: str, shard: str) -> str:
    return f"{shards_dir(dataset)}/{shard}.npz"


def meta_path(dataset: str, results: str | Path = RESULTS) -> str:
    return f"{results}/shards/{dataset}/meta.json"


EMBEDDINGS = f"{RESULTS}/embeddings"


def store_path(backbone: str, dataset: str, embeddings: str | Path = EMBEDDINGS) -> str:
    return f"{embeddings}/{backbone}/{dataset}.zarr"


def store_root_file(backbone: str, dataset: str) -> str:
    return f"{store_path(backbone, dataset)}/zarr.json"


def flags_dir(backbone: str, dataset: str) -> str:
    return f"{RESULTS}/embeddings/{backbone}/{dataset}.chunks"


def flag_path(backbone: str, dataset: str, lane: str) -> str:
    return f"{flags_dir(backbone, dataset)}/{lane}.json"


def checked_path(backbone: str, dataset: str) -> str:
    """check_store's summary: the store's verified regions and their checksums."""
    return f"{RESULTS}/embeddings/{backbone}/{dataset}.ok.json"


def probes_dir(results: str | Path = RESULTS) -> Path:
    return Path(results) / "probes"


def probe_json(backbone: str, dataset: str, family: str, results: str | Path = RESULTS) -> str:
    return f"{results}/probes/{backbone}/{dataset}/{family}.json"


def predictions_path(probe_json_path: str | Path) -> Path:
    return Path(probe_json_path).with_suffix(".predictions.npz")


def heads_path(probe_json_path: str | Path) -> Path:
    return Path(probe_json_path).with_suffix(".heads.pt")


def feature_column(block: int, pooling: str) -> str:
    """A stored feature array's name inside a split: `{pooling}/b{block:03d}`."""
    return f"{pooling}/b{block:03d}"


def array_name(split: str, pooling: str, block: int) -> str:
    return f"{split}/{feature_column(block, pooling)}"


def record_key(block: int, pooling: str, setting: str) -> str:
    """A probe result's key in `.heads.pt`."""
    return f"b{block:03d}/{pooling}/{setting}"


def prediction_key(block: int, pooling: str, setting: str) -> str:
    """A probe result's array name in `.predictions.npz` (npz names cannot hold '/')."""
    return record_key(block, pooling, setting).replace("/", "__")


def flags_of_store(store: str | Path) -> Path:
    return Path(str(store).removesuffix(".zarr") + ".chunks")


def checked_of_store(store: str | Path) -> Path:
    return Path(str(store).removesuffix(".zarr") + ".ok.json")


def read_meta(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
