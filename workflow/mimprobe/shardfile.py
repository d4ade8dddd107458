"""The shard file: a split's images start:stop as uint8 (N, H, W, 3) with labels, coarse labels and
global index, in one `.npz` (no pickled objects), checked against meta.json's sha256 when read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_path, sha256_file
from .errors import DataError


def write_shard(path: Path, images, labels, coarse, global_index) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                images=images,
                labels=labels,
                coarse_labels=coarse if coarse is not None else np.full(len(labels), -1, np.int64),
                index=global_index,
            )


def read_shard(path: str | Path, expected_sha256: str | None = None) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: shard missing. Rerun snakemake: it rebuilds missing shards.")
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise DataError(
            f"{path}: checksum differs from {path.parent / 'meta.json'} (truncated or modified shard). "
            f"Delete {path} and rerun snakemake to rebuild it."
        )
    try:  # reading a member whole checks its CRC: a damaged byte fails here
        with np.load(path) as data:
            return {key: data[key] for key in ("images", "labels", "coarse_labels", "index")}
    except Exception as err:
        raise DataError(f"{path}: unreadable shard ({err}). Delete {path} and rerun snakemake to rebuild it.") from err
