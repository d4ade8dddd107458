"""What every dataset kind produces (uint8 NHWC images, labels) and what the registry knows of a kind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class SplitArrays:
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64 fine labels
    coarse_labels: np.ndarray | None = None


@dataclass
class RawDataset:
    train: SplitArrays
    test: SplitArrays
    class_names: list[str]
    coarse_class_names: list[str] | None = None


def _builtin(entry: dict) -> str:
    return entry["kind"]


def _thirty_two(entry: dict) -> int:
    return 32


@dataclass(frozen=True)
class Kind:
    """One kind of dataset (`datasets.<name>.kind`).

    load(entry) -> RawDataset: every image, decoded (a CIFAR entry's `archive` is already resolved);
    sizes(entry) -> images per split before `limit`, known before any job runs;
    identity(entry) -> what the images are made of, for a digest that reruns embedding when it changes;
    items(entry) -> per split, one token per image (e.g. file, size, time) when a source changes image by
        image (an image folder), so that only the shards whose images changed count as changed;
    schema: the config keys only this kind reads, as JSON-schema properties with defaults;
    image_side(entry): the side of its square images; archive: a downloadable archive (url, md5,
    filename) that a download rule fetches when `archive` is not set; official_sizes: sizes that hold
    whatever the config says (checked against shard_size before anything is read).
    """

    load: Callable[[dict], RawDataset]
    sizes: Callable[[dict], dict[str, int]]
    identity: Callable[[dict], str] = _builtin
    items: Callable[[dict], dict[str, list]] | None = None
    schema: dict = field(default_factory=dict)
    image_side: Callable[[dict], int] = _thirty_two
    archive: dict | None = None
    official_sizes: dict[str, int] | None = None
