"""Cut a dataset into uint8 shards plus meta.json (class names, counts, validation split, hashes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import sha256_file, write_json
from .datasets import RawDataset, SplitArrays, kind_of
from .errors import DataError
from .layout import SPLITS, shard_count, shard_name
from .shardfile import write_shard


def load_raw_dataset(dataset: dict) -> RawDataset:
    return kind_of(dataset).load(dataset)


def _limit(arrays: SplitArrays, limit: int | None) -> SplitArrays:
    if not limit:
        return arrays
    coarse = None if arrays.coarse_labels is None else arrays.coarse_labels[:limit]
    return SplitArrays(arrays.images[:limit], arrays.labels[:limit], coarse)


def stratified_validation(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted train positions held out for validation: `fraction` of each class, at least one."""
    rng = np.random.default_rng(seed)
    held = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < 2:
            continue  # a class with one image stays in train
        take = min(len(members) - 1, max(1, round(fraction * len(members))))
        held.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)


def prepare_shards(dataset: dict, out_dir: str | Path, seed: int,
                   expect: dict[str, int] | None = None) -> dict:
    """Write every shard of a dataset and then meta.json (written last: it marks completion).

    `expect` is what the workflow planned (images per split): the shards written must be those."""
    out_dir = Path(out_dir)
    raw = load_raw_dataset(dataset)
    limits = dataset.get("limit") or {}
    splits = {"train": _limit(raw.train, limits.get("train")), "test": _limit(raw.test, limits.get("test"))}
    counts = {split: len(arrays.labels) for split, arrays in splits.items()}
    if expect is not None and counts != expect:
        raise DataError(f"the dataset now holds {counts} images per split, but the workflow planned {expect} "
                        "(its source changed after planning). Rerun snakemake: it plans from the source again.")
    shard_size = dataset["shard_size"]
    meta = {
        "kind": dataset["kind"],
        "class_names": raw.class_names,
        "coarse_class_names": raw.coarse_class_names,
        "shard_size": shard_size,
        "image_shape": list(splits["train"].images.shape[1:]),
        "splits": {},
        "shards": {},
    }
    for split in SPLITS:
        arrays = splits[split]
        count = len(arrays.labels)
        meta["splits"][split] = {
            "count": count,
            "class_counts": np.bincount(arrays.labels, minlength=len(raw.class_names)).tolist(),
        }
        for i in range(shard_count(count, shard_size)):
            lo, hi = i * shard_size, min((i + 1) * shard_size, count)
            name = shard_name(split, i)
            path = out_dir / f"{name}.npz"
            coarse = None if arrays.coarse_labels is None else arrays.coarse_labels[lo:hi]
            write_shard(path, arrays.images[lo:hi], arrays.labels[lo:hi], coarse, np.arange(lo, hi))
            meta["shards"][name] = {"start": lo, "stop": hi, "sha256": sha256_file(path)}
    if raw.coarse_class_names is not None:
        fine, coarse = raw.train.labels, raw.train.coarse_labels  # full train: every class present
        mapping = np.zeros(len(raw.class_names), dtype=np.int64)
        mapping[fine] = coarse
        meta["fine_to_coarse"] = mapping.tolist()
    val = stratified_validation(splits["train"].labels, dataset["val_fraction"], seed)
    meta["validation"] = {"fraction": dataset["val_fraction"], "seed": seed, "train_positions": val.tolist()}
    write_json(out_dir / "meta.json", meta)
    return meta


