"""The batched device path: uint8 shard -> device -> preprocess -> one forward -> pooled fp16 -> store."""

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
from .store import create_store, feature_keys, open_store, write_region

TOKENS = "tokens"


def pick_device(requested: str = "auto") -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
        "input_size": backbone.input_size,
    }
    counts = {split: info["count"] for split, info in meta["splits"].items()}
    create_store(store_path, attrs, counts, meta["shard_size"], shapes, features["compressor"])


def _forward_all(backbone, images: np.ndarray, keys, device, dtype, batch_size: int, label: str):
    """Run every batch; on out-of-memory halve the batch and continue from where it failed."""
    from tqdm import tqdm

    outputs: dict[tuple[int, str], np.ndarray] = {}
    blocks = sorted({b for b, _ in keys})
    poolings = sorted({p for _, p in keys})
    start = 0
    bar = tqdm(total=len(images), desc=label, unit="img", file=sys.stderr, mininterval=5, ascii=True)
    while start < len(images):
        stop = min(start + batch_size, len(images))
        batch = torch.from_numpy(images[start:stop])
        if device.type == "cuda":
            batch = batch.pin_memory().to(device, non_blocking=True)
        try:
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                pooled = backbone.forward_blocks(backbone.preprocess(batch), blocks, poolings)
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
            torch.cuda.empty_cache()
            print(f"out of memory: batch size now {batch_size}", file=sys.stderr)
            continue
        for key in keys:
            value = pooled[key]
            if key not in outputs:
                outputs[key] = np.empty((len(images), *value.shape[1:]), dtype=np.float16)
            outputs[key][start:stop] = value.float().cpu().numpy()
        bar.update(stop - start)
        start = stop
    bar.close()
    return outputs


def embed_chunk(store_path, shard_path, meta_path, flag_path, backbone_cfg: dict, features: dict,
                seed: int) -> dict:
    """Embed one shard into its chunk-aligned region of the store, then write the flag file."""
    meta = read_meta(meta_path)
    shard_name = Path(shard_path).stem
    split = shard_name.split("-")[0]
    info = meta["shards"][shard_name]
    shard = read_shard(shard_path, info["sha256"])
    root = open_store(store_path, mode="r+")
    keys = feature_keys(root)
    device = pick_device(features["device"])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    backbone = build(backbone_cfg, features, seed).to(device)
    batch = backbone_cfg.get("batch_size", "auto")
    batch = (256 if device.type == "cuda" else 64) if batch == "auto" else int(batch)
    began = time.perf_counter()
    outputs = _forward_all(backbone, shard["images"], keys, device, dtype, batch, shard_name)
    seconds = time.perf_counter() - began
    for (block, pooling), values in outputs.items():
        if not np.isfinite(values).all():
            weights = backbone_cfg.get("weights") or "its default weights"
            raise MimprobeError(
                f"{shard_path}: backbone {backbone_cfg['model']} ({weights}) produced NaN/Inf features in "
                f"block {block} ({pooling}); nothing was written. Check the weights file, or try fp32 "
                "(features.device: cpu)."
            )
    columns = {"labels": shard["labels"], "coarse_labels": shard["coarse_labels"]}
    columns |= {f"{pooling}/b{block:03d}": values for (block, pooling), values in outputs.items()}
    checksums = write_region(root, split, info["start"], info["stop"], columns, after_each=pause_mid_write)
    record = {
        "shard": shard_name, "split": split, "start": info["start"], "stop": info["stop"],
        "device": str(device), "dtype": str(dtype).removeprefix("torch."), "seconds": round(seconds, 3),
        "images_per_second": round(len(shard["labels"]) / max(seconds, 1e-9), 1), "checksums": checksums,
    }
    write_json(flag_path, record)
    return record
