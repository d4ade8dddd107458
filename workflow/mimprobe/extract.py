"""The batched device path: uint8 shards -> device -> preprocess -> one forward -> pooled fp16 -> a
background writer to each shard's Zarr region, overlapped with the next batch.

One job embeds a lane of shards. It builds the model and loads the weights on the CPU first and only
then takes the device (`devices.hold_device`), so on a GPU that several lanes share, one lane's
start-up overlaps another's forward passes and the GPU waits only between forwards.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .atomic import write_json
from .backbones import Backbone, create_backbone
from .devices import device_kind, hold_device
from .errors import DataError, MimprobeError
from .faults import pause_mid_write
from .provenance import provenance
from .shardfile import read_shard
from .store import create_store, feature_keys, open_store, region_checksums
from .writer import RegionWriter

TOKENS = "tokens"


def forward_dtype(precision: str, kind: str) -> torch.dtype:
    """Pure bf16 weights on a GPU (faster than autocast, as the paper's bf16 runs); fp32 on the CPU
    unless bf16 is asked for (an opt-in: it changes the features slightly)."""
    if precision == "auto":
        return torch.bfloat16 if kind == "cuda" else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[precision]


def build(backbone_cfg: dict, features: dict, seed: int) -> Backbone:
    return create_backbone(backbone_cfg["model"], backbone_cfg.get("weights"), features["final_norm"], seed)


def storage_plan(backbone: Backbone, features: dict) -> tuple[list[int], list[str]]:
    """Blocks and poolings to store: the requested ones this backbone supports."""
    try:
        blocks = backbone.resolve_blocks(features["blocks"])
    except IndexError as err:
        raise MimprobeError(f"config key features.blocks: {err}") from None
    poolings = [p for p in features["pooling"] if p in backbone.poolings]
    if not poolings:  # e.g. pixels supports only its own 'flat' pooling
        poolings = list(backbone.poolings[:1])
    return blocks, poolings


def init_store(store_path, layout: dict, backbone_cfg: dict, features: dict, seed: int) -> None:
    """Create the empty store with every array sized from one dummy forward pass.

    `layout` is what the workflow planned: `sizes` (images per split), `shard_size`, `image_shape`."""
    backbone = build(backbone_cfg, features, seed)
    blocks, poolings = storage_plan(backbone, features)
    dummy = torch.zeros((1, *layout["image_shape"]), dtype=torch.uint8)
    with torch.inference_mode():
        outputs = backbone.forward_blocks(backbone.preprocess(dummy), blocks, poolings)
    last = max(blocks)
    # Token grids are large: keep them for the last stored block only (the attentive probe's input).
    shapes = {(b, p): tuple(v.shape[1:]) for (b, p), v in outputs.items() if p != TOKENS or b == last}
    attrs = {
        "model": backbone_cfg["model"],
        "backbone": {key: value for key, value in backbone_cfg.items() if key != "batch_size"},
        "blocks": blocks,
        "block_names": [backbone.block_names[b] for b in blocks],
        "block_count": len(backbone.block_names),
        "poolings": poolings,
        "final_norm": features["final_norm"],
        "precision": features["precision"],
        "input_size": backbone.input_size,
    }
    create_store(store_path, attrs, layout["sizes"], layout["shard_size"], shapes, features["compressor"],
                 features["chunk_rows"])


def _forward_all(backbone, images: np.ndarray, keys, device, dtype, batch_size: int, label: str,
                 writer: RegionWriter) -> None:
    """Run every batch into the writer; on out-of-memory halve the batch and continue from where it failed."""
    from tqdm import tqdm

    blocks = sorted({b for b, _ in keys})
    poolings = sorted({p for _, p in keys})
    host = torch.from_numpy(images)
    if device.type == "cuda":
        host = host.pin_memory()  # one pinned copy of the shard: every batch upload is asynchronous
    start = 0
    bar = tqdm(total=len(images), desc=label, unit="img", file=sys.stderr, mininterval=5, ascii=True)
    while start < len(images) and not writer.non_finite:  # the job fails anyway: stop early
        stop = min(start + batch_size, len(images))
        try:
            with torch.inference_mode():
                batch = host[start:stop].to(device, non_blocking=True)
                pooled = backbone.forward_blocks(backbone.preprocess(batch).to(dtype), blocks, poolings)
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
            torch.cuda.empty_cache()
            print(f"out of memory: batch size now {batch_size}", file=sys.stderr)
            continue
        writer.submit(start, stop, {key: pooled[key] for key in keys})
        bar.update(stop - start)
        start = stop
    bar.close()


def _embed_region(backbone, images, keys, device, dtype, batch, label, root, split, info, labels):
    """Forward one shard into its store region; returns (rows written by column, seconds, non-finite keys)."""
    began = time.perf_counter()
    with RegionWriter(root, split, info["start"], info["stop"], labels, keys, device,
                      after_each=pause_mid_write) as writer:
        _forward_all(backbone, images, keys, device, dtype, batch, label, writer)
        columns = writer.finish()
    return columns, time.perf_counter() - began, writer.non_finite


def shard_region(shard_path, shard: dict, root) -> tuple[str, dict]:
    """The split and rows (start, stop) a shard fills, from its own global index; checked against the store."""
    split, index = Path(shard_path).stem.split("-")[0], shard["index"]
    start, stop = (int(index[0]), int(index[-1]) + 1) if len(index) else (0, 0)
    count = root.attrs["split_counts"].get(split, 0)
    if not len(index) or not np.array_equal(index, np.arange(start, stop)) or stop > count:
        raise DataError(f"{shard_path}: its rows {start}:{stop} do not fit the store's {count} {split} rows "
                        "(the shards and the store come from different plans). Rerun snakemake.")
    return split, {"start": start, "stop": stop}


def embed_shards(store_path, shard_paths, flag_path, backbone_cfg: dict, features: dict, seed: int,
                 threads: int | None = None) -> dict:
    """Embed each shard into its chunk-aligned region of the store, check it, then write one flag.

    Each chunk is written as soon as its rows are computed, while later batches run; a failed job
    may leave part of its regions written but never a flag, so Snakemake embeds its shards again.
    """
    if threads:
        torch.set_num_threads(threads)  # the job's share of the cores, as Snakemake granted them
    root = open_store(store_path, mode="r+")
    keys = feature_keys(root)
    kind = device_kind(features["device"])
    dtype = forward_dtype(features["precision"], kind)
    backbone = build(backbone_cfg, features, seed).to(dtype=dtype)  # weights loaded before the device is taken
    batch = backbone_cfg.get("batch_size", "auto")
    batch = (256 if kind == "cuda" else 64) if batch == "auto" else int(batch)
    records, checks = [], []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mimprobe-verify") as verifier:
        with hold_device(features["device"]) as device:
            backbone = backbone.to(device=device)
            for path in map(Path, shard_paths):
                shard = read_shard(path)  # the file's own CRCs catch a damaged shard
                name, (split, info) = path.stem, shard_region(path, shard, root)
                labels = {"labels": shard["labels"], "coarse_labels": shard["coarse_labels"]}
                columns, seconds, non_finite = _embed_region(backbone, shard["images"], keys, device, dtype, batch,
                                                            name, root, split, info, labels)
                if non_finite:
                    _refuse_non_finite(path, backbone_cfg, dtype, non_finite)
                # the read-back check of this region runs while the next shard computes
                checks.append(verifier.submit(region_checksums, root, split, info["start"], info["stop"], columns))
                records.append({"shard": name, "split": split, "start": info["start"], "stop": info["stop"],
                                "seconds": round(seconds, 3),
                                "images_per_second": round((info["stop"] - info["start"]) / max(seconds, 1e-9), 1)})
        for record, check in zip(records, checks):
            record["checksums"] = check.result()
    lane = {"lane": Path(flag_path).stem, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
            "shards": records, "provenance": provenance()}
    write_json(flag_path, lane)
    return lane


def _refuse_non_finite(shard_path, backbone_cfg: dict, dtype, non_finite) -> None:
    block, pooling = sorted(non_finite)[0]
    weights = backbone_cfg.get("weights") or "its default weights"
    fix = "Check the weights file" + ("." if dtype == torch.float32 else
                                       ", or compute in float32 (features.precision: float32).")
    raise MimprobeError(
        f"{shard_path}: backbone {backbone_cfg['model']} ({weights}) produced NaN/Inf features in "
        f"block {block} ({pooling}) in {str(dtype).removeprefix('torch.')}; the shard was not marked done. {fix}"
    )
