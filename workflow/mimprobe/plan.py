"""What the DAG needs before any job runs: split sizes, shard names, embedding lanes, source digests.

Counts come from the source itself wherever it can differ from the official sizes: an image folder is
listed, and a local CIFAR archive that is not the official one (`verify_md5: false`) is read once
(its counts are cached by path, size and modification time, since every Snakemake job re-plans the
DAG). The official archives have the official sizes.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from .atomic import write_json
from .datasets import kind_of
from .errors import DataError
from .layout import SPLITS, lane_name, shard_count, shard_name

MAX_AUTO_LANES = 4  # `shards_per_job: auto`: at most this many embedding jobs per backbone and dataset
COUNTS_CACHE = Path(".snakemake") / "mimprobe" / "archive-counts.json"


def file_key(path: Path) -> str:
    """A file's identity without reading it: absolute path, size, modification time."""
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def archive_counts(path: str | Path, kind: str, cache: Path = COUNTS_CACHE) -> dict[str, int]:
    """Images per split in a local CIFAR archive, read once and cached."""
    from .datasets.cifar import read_cifar_archive

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: archive not found. Check datasets.<name>.archive.")
    key = file_key(path)
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    if key not in known:
        raw = read_cifar_archive(path, kind)
        known[key] = {"train": len(raw.train.labels), "test": len(raw.test.labels)}
        write_json(cache, known)
    return known[key]


def source_sizes(dataset: dict) -> dict[str, int]:
    """Images per split of the dataset's source, before `limit`."""
    return kind_of(dataset).sizes(dataset)


def limited(sizes: dict[str, int], dataset: dict) -> dict[str, int]:
    """Images per split once the dataset's `limit` is applied to the source's `sizes`."""
    limit = dataset.get("limit") or {}
    return {s: min(sizes[s], limit.get(s) or sizes[s]) for s in SPLITS}


def split_sizes(dataset: dict) -> dict[str, int]:
    """Images per split after `limit`, known before any job runs."""
    return limited(source_sizes(dataset), dataset)


def image_shape(dataset: dict) -> list[int]:
    """(H, W, 3) of the dataset's shards."""
    side = kind_of(dataset).image_side(dataset)
    return [side, side, 3]


def store_layout(dataset: dict, sizes: dict[str, int] | None = None) -> dict:
    """The store's shape, as planned from the dataset entry: its splits, shards and image size."""
    return {"sizes": sizes or split_sizes(dataset), "shard_size": dataset["shard_size"],
            "image_shape": image_shape(dataset)}


def shard_names(dataset: dict, sizes: dict[str, int] | None = None) -> list[str]:
    """Shard ids like 'train-0003' for every split of a dataset, train first."""
    sizes = sizes or split_sizes(dataset)
    return [shard_name(split, i) for split in SPLITS for i in range(shard_count(sizes[split], dataset["shard_size"]))]


def lanes(shards: list[str], shards_per_job) -> dict[str, list[str]]:
    """Embedding jobs: consecutive shards, `shards_per_job` each (auto: at most MAX_AUTO_LANES jobs)."""
    per_job = math.ceil(len(shards) / MAX_AUTO_LANES) if shards_per_job == "auto" else int(shards_per_job)
    return {lane_name(i): shards[start:start + per_job]
            for i, start in enumerate(range(0, len(shards), per_job))}


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def shard_sources(dataset: dict, sizes: dict[str, int]) -> dict[str, str]:
    """A digest per shard of what its images are made from, so that embedding reruns exactly when its
    shards' content would change: the kind's source identity, and for sources that change image by
    image (an image folder) the images of that shard's slice."""
    kind = kind_of(dataset)
    settings = {k: v for k, v in dataset.items() if k != "val_fraction"}  # validation does not touch images
    identity, items = kind.identity(dataset), kind.items(dataset) if kind.items else None
    out, size = {}, dataset["shard_size"]
    for split in SPLITS:
        for i in range(shard_count(sizes[split], size)):
            members = items[split][i * size:(i + 1) * size] if items else None
            out[shard_name(split, i)] = _digest(settings, identity, shard_name(split, i), members)
    return out
