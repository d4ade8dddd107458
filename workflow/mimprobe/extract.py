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
        "precision": features.get("precision", "auto"),
        "input_size": backbone.input_size,
    }
    counts = {split: info["count"] for split, info in meta["splits"].items()}
    create_store(store_path, attrs, counts, meta["shard_size"], shapes, features["compressor"],
                 features["chunk_rows"])


class _HostWriter:
    """Moves each batch's pooled features into host fp16 buffers on a background thread.

    The forward pass of the next batch is queued while this thread waits for the device-to-host
    copy (a separate CUDA stream) or, on the CPU, converts to fp16 and checks for NaN/Inf.
    """

    def __init__(self, count: int, device: torch.device):
        from concurrent.futures import ThreadPoolExecutor

        self.count, self.device = count, device
        self.buffers: dict[tuple[int, str], torch.Tensor] = {}
        self.non_finite: set[tuple[int, str]] = set()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mimprobe-writer")
        self.pending = []
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def submit(self, start: int, stop: int, pooled: dict) -> None:
        for key, value in pooled.items():
            if key not in self.buffers:
                self.buffers[key] = torch.empty((self.count, *value.shape[1:]), dtype=torch.float16,
                                                pin_memory=self.stream is not None)
        if self.stream is not None:
            done = torch.cuda.Event()
            done.record()
            with torch.cuda.stream(self.stream):
                self.stream.wait_event(done)
                for key, value in pooled.items():
                    half = value.to(torch.float16)
                    self.buffers[key][start:stop].copy_(half, non_blocking=True)
                    half.record_stream(self.stream)
            copied = torch.cuda.Event()
            copied.record(self.stream)
        else:
            copied = None
        self.pending.append(self.pool.submit(self._finish, start, stop, pooled, copied))
        if len(self.pending) > 2:  # bound the batches in flight (host memory, device memory)
            self.pending.pop(0).result()

    def _finish(self, start, stop, pooled, copied) -> None:
        for key, value in pooled.items():
            if copied is None:
                self.buffers[key][start:stop].copy_(value)  # fp32 -> fp16 on the CPU
            else:
                copied.synchronize()
            if not torch.isfinite(self.buffers[key][start:stop]).all():
                self.non_finite.add(key)

    def close(self) -> dict[tuple[int, str], np.ndarray]:
        for future in self.pending:
            future.result()
        self.pool.shutdown()
        return {key: buffer.numpy() for key, buffer in self.buffers.items()}


def _forward_all(backbone, images: np.ndarray, keys, device, dtype, batch_size: int, label: str):
    """Run every batch; on out-of-memory halve the batch and continue from where it failed."""
    from tqdm import tqdm

    blocks = sorted({b for b, _ in keys})
    poolings = sorted({p for _, p in keys})
    host = torch.from_numpy(images)
    if device.type == "cuda":
        host = host.pin_memory()  # one pinned copy of the shard: every batch upload is asynchronous
    writer = _HostWriter(len(images), device)
    start = 0
    bar = tqdm(total=len(images), desc=label, unit="img", file=sys.stderr, mininterval=5, ascii=True)
    while start < len(images):
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
    outputs = writer.close()
    bar.close()
    return outputs, writer.non_finite


def embed_chunk(store_path, shard_path, meta_path, flag_path, backbone_cfg: dict, features: dict,
                seed: int, threads: int | None = None) -> dict:
    """Embed one shard into its chunk-aligned region of the store, then write the flag file."""
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
        dtype = forward_dtype(features.get("precision", "auto"), device)
        backbone = build(backbone_cfg, features, seed).to(device=device, dtype=dtype)
        batch = backbone_cfg.get("batch_size", "auto")
        batch = (256 if device.type == "cuda" else 64) if batch == "auto" else int(batch)
        began = time.perf_counter()
        outputs, non_finite = _forward_all(backbone, shard["images"], keys, device, dtype, batch, shard_name)
        seconds = time.perf_counter() - began
    finally:
        if device_lock is not None:
            device_lock.close()
    if non_finite:
        block, pooling = sorted(non_finite)[0]
        weights = backbone_cfg.get("weights") or "its default weights"
        raise MimprobeError(
            f"{shard_path}: backbone {backbone_cfg['model']} ({weights}) produced NaN/Inf features in "
            f"block {block} ({pooling}) in {str(dtype).removeprefix('torch.')}; nothing was written. Check the "
            "weights file, or compute in float32 (features.precision: float32)."
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
