"""The Zarr v3 feature store: one per backbone x dataset, chunked at a divisor of the shard size.

Layout: `{split}/labels`, `{split}/coarse_labels`, `{split}/{pooling}/b{block:03d}` (N, D) fp16,
and `{split}/tokens/b{block:03d}` (N, T, D) fp16. Root attributes describe blocks and dims.
Every shard region is whole chunks, so concurrent embedding jobs never share a chunk.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import zarr

from .atomic import sha256_bytes
from .errors import DataError
from .layout import array_name, checked_of_store, feature_column, flags_of_store, shard_name

FINITE_CHECK_ELEMENTS = 1 << 24  # elements checked for NaN/Inf at once: a 16 MB boolean temporary


def store_chunk_rows(shard_size: int, at_most: int) -> int:
    """The largest divisor of shard_size not above at_most; a shard size without a near one (a
    prime) keeps one chunk per shard rather than a flood of tiny chunk files."""
    limit = min(shard_size, at_most)
    rows = max(d for d in range(1, limit + 1) if shard_size % d == 0)
    return rows if 4 * rows >= limit else shard_size


def _compressors(name: str):
    if name == "none":
        return None
    from zarr.codecs import BloscCodec

    return [BloscCodec(cname=name, clevel=3 if name == "zstd" else 1, shuffle="bitshuffle")]


def create_store(path: str | Path, attrs: dict, split_counts: dict[str, int], shard_size: int,
                 feature_shapes: dict[tuple[int, str], tuple[int, ...]], compressor: str,
                 max_chunk_rows: int) -> None:
    """Create every array of the store in a temporary folder, then move it into place."""
    path = Path(path)
    rows = store_chunk_rows(shard_size, max_chunk_rows)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    for split, count in split_counts.items():
        for name in ("labels", "coarse_labels"):
            root.create_array(f"{split}/{name}", shape=(count,), chunks=(rows,), dtype="int64",
                              fill_value=-1, compressors=None)
        for (block, pooling), shape in feature_shapes.items():
            root.create_array(array_name(split, pooling, block), shape=(count, *shape),
                              chunks=(rows, *shape), dtype="float16", fill_value=0,
                              compressors=_compressors(compressor))
    root.attrs.update(attrs | {"split_counts": split_counts, "shard_size": shard_size, "chunk_rows": rows,
                               "arrays": {feature_column(b, p): list(s) for (b, p), s in feature_shapes.items()}})
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def open_store(path: str | Path, mode: str = "r"):
    """Open a store; read-only opens (check_store, probes) first require every chunk file to exist."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise DataError(f"{path}: no Zarr store here. Run the workflow to create it (rule init_store).")
    root = zarr.open_group(str(path), mode=mode, zarr_format=3)
    if mode == "r":
        require_chunk_files(root, path)
    return root


def require_chunk_files(root, path: Path) -> None:
    """A chunk file deleted by hand would silently read back as fill values: refuse instead."""
    shard_size = root.attrs["shard_size"]
    for split, count in root.attrs["split_counts"].items():
        for name in ["labels", "coarse_labels", *root.attrs["arrays"]]:
            array = root[f"{split}/{name}"]
            rows, others = array.chunks[0], (0,) * (array.ndim - 1)
            for index in range(-(-count // rows)):
                chunk = path / array.path / array.metadata.encode_chunk_key((index, *others))
                if not chunk.is_file():
                    shard = shard_name(split, index * rows // shard_size)
                    raise DataError(
                        f"{chunk}: store chunk file missing (deleted, or its job never finished). Delete "
                        f"{flag_of_shard(path, shard)} and {checked_of_store(path)}, then rerun snakemake "
                        f"to re-embed shard {shard}."
                    )


def flag_of_shard(store: Path, shard: str) -> Path:
    """The embedding job's flag that vouches for a shard (its lane), or where such flags live."""
    import json

    flags = flags_of_store(store)
    for flag in sorted(flags.glob("*.json")):
        try:
            if shard in {r.get("shard") for r in flag_regions(json.loads(flag.read_text()))}:
                return flag
        except (OSError, ValueError):
            continue
    return flags / "<the flag listing it>.json"


def feature_keys(root) -> list[tuple[int, str]]:
    """(block, pooling) pairs stored, in block order."""
    keys = []
    for name in root.attrs["arrays"]:
        pooling, block = name.split("/")
        keys.append((int(block[1:]), pooling))
    return sorted(keys)


def region_arrays(root, split: str, start: int, stop: int, names: list[str]) -> dict:
    """The named arrays of a split, ready to write rows start:stop, which must be whole chunks."""
    arrays = {}
    for name in names:
        # Every chunk gets a file, even one equal to the fill value (coarse labels of a dataset
        # without them), so that a missing file always means a deleted or unwritten chunk.
        array = root[f"{split}/{name}"].with_config({"write_empty_chunks": True})
        rows = array.chunks[0]
        if start % rows or (stop % rows and stop != array.shape[0]):
            # Concurrent chunk jobs are safe only because no two of them share a Zarr chunk.
            raise DataError(
                f"store array {split}/{name} is chunked every {rows} rows but shard rows {start}:{stop} "
                "do not fall on chunk boundaries. Delete the store and its .chunks/ flags and rerun."
            )
        arrays[name] = array
    return arrays


def rows_digest(values: np.ndarray) -> str:
    return sha256_bytes(np.ascontiguousarray(values).tobytes())


def region_checksums(root, split: str, start: int, stop: int, columns: dict[str, np.ndarray]) -> dict[str, str]:
    """Read rows start:stop of each named array back, require what was written, return their sha256."""
    from concurrent.futures import ThreadPoolExecutor

    def check_one(name: str) -> str:
        array = root[f"{split}/{name}"]
        stored = np.asarray(array[start:stop])
        if not np.array_equal(stored, columns[name].astype(array.dtype, copy=False), equal_nan=True):
            raise DataError(f"store array {split}/{name}: rows {start}:{stop} did not read back as written")
        return rows_digest(stored)

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # arrays are separate files
        return dict(zip(columns, pool.map(check_one, columns)))


def check_rows(root, split: str, name: str, values: np.ndarray, verified: dict) -> None:
    """Compare every shard region of a whole array, as just read, with the checksums check_store
    verified: a chunk file changed since then (a flipped byte, a copy gone wrong) stops the reader."""
    for region in verified["regions"]:
        expected = region["checksums"].get(name) if region["split"] == split else None
        if expected is not None and rows_digest(values[region["start"]:region["stop"]]) != expected:
            store = Path(root.store.root)
            raise DataError(
                f"{store / split / name}: rows {region['start']}:{region['stop']} changed since check_store "
                f"verified them (a store chunk file was modified). Delete {region['flag']} and "
                f"{checked_of_store(store)}, then rerun snakemake to re-embed them."
            )


def read_labels(root, split: str, verified: dict | None = None) -> np.ndarray:
    labels = np.asarray(root[f"{split}/labels"][:])
    if verified is not None:
        check_rows(root, split, "labels", labels, verified)
    return labels


def read_features(root, split: str, pooling: str, block: int, rows=None, dtype=np.float32,
                  verified: dict | None = None) -> np.ndarray:
    """One stored array (or some of its rows) as `dtype`; float16 returns the stored values uncopied.

    `verified` (check_store's summary) checks a whole array against the checksums of its regions.
    """
    array = root[array_name(split, pooling, block)]
    data = np.asarray(array[:] if rows is None else array.get_orthogonal_selection((rows,)))
    if verified is not None and rows is None:
        check_rows(root, split, feature_column(block, pooling), data, verified)
    data = data.astype(dtype, copy=False)
    step = max(1, FINITE_CHECK_ELEMENTS // max(data[:1].size, 1))
    if not all(np.isfinite(data[i:i + step]).all() for i in range(0, len(data), step)):
        # e.g. a store modified after check_store verified it
        raise DataError(
            f"{root.store.root / array.path}: features hold NaN/Inf. Delete the store and its .chunks/ "
            "and .ok.json files and rerun snakemake to re-embed."
        )
    return data


def flag_regions(flag: dict) -> list[dict]:
    """The shard regions one embedding flag vouches for (a job embedding several shards lists them)."""
    return flag.get("shards", [flag])


def verify_store(store_path, flag_paths: list[str | Path]) -> dict:
    """Re-read every region named by a chunk flag, compare checksums and scan for NaN/Inf.

    The summary lists every verified region with its checksums: probes check what they read
    against it."""
    import json

    root = open_store(store_path)
    problems, regions = [], []
    for flag_path in flag_paths:
        for region in flag_regions(json.loads(Path(flag_path).read_text())):
            split, start, stop = region["split"], region["start"], region["stop"]
            for name, expected in region["checksums"].items():
                values = np.asarray(root[f"{split}/{name}"][start:stop])
                if rows_digest(values) != expected:
                    problems.append(f"{split}/{name} rows {start}:{stop} (flag {flag_path})")
                elif values.dtype.kind == "f" and not np.isfinite(values).all():
                    problems.append(f"{split}/{name} rows {start}:{stop} holds NaN/Inf (flag {flag_path})")
            regions.append({"split": split, "start": start, "stop": stop, "flag": str(flag_path),
                            "checksums": region["checksums"]})
    if problems:
        raise DataError(
            f"{store_path}: {len(problems)} region(s) fail verification: {'; '.join(problems[:5])}. "
            "Delete the named chunk flags (or the store) and rerun to re-embed them."
        )
    return {"store": str(store_path), "regions_verified": sum(len(r["checksums"]) for r in regions),
            "chunks": len(flag_paths), "regions": regions}
