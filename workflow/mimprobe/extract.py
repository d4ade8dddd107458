"""The batched device path: uint8 shard -> device -> preprocess -> one forward -> pooled fp16 -> a
background writer to the Zarr region, overlapped with the next batch."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from .atomic import write_json
from .backbones import Backbone, create_backbone
from .errors import MimprobeError
from .faults import pause_mid_write
from .shards import read_meta, read_shard
from .store import create_store, feature_keys, open_store, region_checksums
from .writer import RegionWriter

TOKENS = "tokens"


def pick_device(requested: str = "auto", lock_dir: str | Path | None = None):
    """The device to run on, and (with several local GPUs) a held lock that reserves it for this job."""
    if requested != "auto":
        return torch.device(requested), None
    if not torch.cuda.is_available():
        return torch.device("cpu"), None
    count = torch.cuda.device_count()
    if count == 1:
        return torch.device("cuda:0"), None
    from .devices import claim_gpu

    index, lock = claim_gpu(count, lock_dir, free_memory=lambda i: torch.cuda.mem_get_info(i)[0])
    return torch.device(f"cuda:{index}"), lock


def forward_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Pure bf16 weights on a GPU (faster than autocast, as the paper's bf16 runs); fp32 on the CPU
    unless bf16 is asked for (an opt-in: it changes the features slightly)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
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


def init_store(store_path, meta_path, backbone_cfg: dict, features: dict, seed: int) -> None:
    """Create the empty store with every array sized from one dummy forward pass."""
    meta = read_meta(meta_path)
    backbone = build(backbone_cfg, features, seed)
    blocks, poolings = storage_plan(backbone, features)
    dummy = torch.zeros((1, *meta["image_shape"]), dtype=torch.uint8)
    with torch.inference_mode():
        outputs = backbone.forward_blocks(backbone.preprocess(dummy), blocks, poolings)
    last = max(blocks)
    # Token grids are large: keep them for the last stored block only (the attentive probe's input).
    shapes = {(b, p): tuple(v.shape[1:]) for (b, p), v in outputs.items() if p != TOKENS or b == last}
    attrs = {
        "model": backbone_cfg["model"],
        "blocks": blocks,
        "block_names": [backbone.block_names[b] for b in blocks],
        "block_count": len(backbone.block_names),
        "poolings": poolings,
        "final_norm": features["final_norm"],
        "precision": features["precision"],
        "input_size": backbone.input_size,
    }
    counts = {split: info["count"] for split, info in meta["splits"].items()}
    create_store(store_path, attrs, counts, meta["shard_size"], shapes, features["compressor"],
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


def embed_chunk(store_path, shard_path, meta_path, flag_path, backbone_cfg: dict, features: dict,
                seed: int, threads: int | None = None) -> dict:
    """Embed one shard into its chunk-aligned region of the store, check it, then write the flag file.

    Each chunk is written as soon as its rows are computed, while later batches run; a failed job
    may leave part of its region written but never a flag, so Snakemake embeds the shard again.
    """
    if threads:
        torch.set_num_threads(threads)  # the job's share of the cores, as Snakemake granted them
    meta = read_meta(meta_path)
    shard_name = Path(shard_path).stem
    split = shard_name.split("-")[0]
    info = meta["shards"][shard_name]
    shard = read_shard(shard_path, info["sha256"])
    root = open_store(store_path, mode="r+")
    keys = feature_keys(root)
    device, device_lock = pick_device(features["device"])
    try:
        dtype = forward_dtype(features["precision"], device)
        backbone = build(backbone_cfg, features, seed).to(device=device, dtype=dtype)
        batch = backbone_cfg.get("batch_size", "auto")
        batch = (256 if device.type == "cuda" else 64) if batch == "auto" else int(batch)
        labels = {"labels": shard["labels"], "coarse_labels": shard["coarse_labels"]}
        began = time.perf_counter()
        with RegionWriter(root, split, info["start"], info["stop"], labels, keys, device,
                          after_each=pause_mid_write) as writer:
            _forward_all(backbone, shard["images"], keys, device, dtype, batch, shard_name, writer)
            columns = writer.finish()
        seconds = time.perf_counter() - began  # forward passes and store writes, overlapped
    finally:
        if device_lock is not None:
            device_lock.close()
    if writer.non_finite:
        block, pooling = sorted(writer.non_finite)[0]
        weights = backbone_cfg.get("weights") or "its default weights"
        raise MimprobeError(
            f"{shard_path}: backbone {backbone_cfg['model']} ({weights}) produced NaN/Inf features in "
            f"block {block} ({pooling}) in {str(dtype).removeprefix('torch.')}; the shard was not marked done. "
            "Check the weights file, or compute in float32 (features.precision: float32)."
        )
    checksums = region_checksums(root, split, info["start"], info["stop"], columns)
    record = {
        "shard": shard_name, "split": split, "start": info["start"], "stop": info["stop"],
        "device": str(device), "dtype": str(dtype).removeprefix("torch."), "seconds": round(seconds, 3),
        "images_per_second": round(len(shard["labels"]) / max(seconds, 1e-9), 1), "checksums": checksums,
    }
    write_json(flag_path, record)
    return record
