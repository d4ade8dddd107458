"""Extraction throughput: our shard -> Zarr path against timm's plain forward and the notebook's way.

    PYTHONPATH=workflow python workflow/bench/extract_throughput.py            # CPU: vit_tiny, 512 images
    PYTHONPATH=workflow python workflow/bench/extract_throughput.py --model random:vit_large_patch16_224 \\
        --images 8192 --batch-size 256                                         # GPU: ViT-L/16, bf16

Same images for every path (CIFAR-10 JPEG subset if present, else synthetic uint8), same model,
batch size and dtype (`--precision auto`: bf16 on GPU, fp32 on CPU; `bfloat16` is the CPU opt-in).
Writes results/bench/extract_throughput.json.
- ours_img_s: shard file in -> every requested block, pooled, fp16 -> Zarr region on disk, verified
  (mimprobe.extract.embed_shards, one job for every shard; the model is built once, outside the timing).
- timm_forward_img_s: model(x) on already-normalised device tensors, features discarded; measured
  before and after ours, the better of the two.
- seed_path_img_s: PIL per image, torchvision ToTensor/Resize/CenterCrop/Normalize, fp32, batch 1,
  forward_features(...).tolist() and a JSON dump (a small subset: it is slow).
- ceiling_img_s: a measured matmul rate in the forward's dtype / the model's FLOPs per image, and
  seed_path_ceiling_ratio = ceiling / seed path: the most any batched path could gain here.
- bf16_vs_fp32_min_cosine (bf16 runs): the worst per-image cosine of stored-block features against fp32.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mimprobe.backbones import create_backbone
from mimprobe.config import validate_config

JPEG_SUBSET = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-jpeg-subset.npz"  # ../shared


def load_images(count: int) -> tuple[np.ndarray, str]:
    if JPEG_SUBSET.is_file():
        with np.load(JPEG_SUBSET) as data:
            images = data["x_train"]
        reps = -(-count // len(images))
        return np.concatenate([images] * reps)[:count], str(JPEG_SUBSET)
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), "synthetic uint8"


def write_shards(folder: Path, images: np.ndarray, shard_size: int) -> Path:
    """Shards and meta.json in the workflow's own format (one 'train' split)."""
    from mimprobe.atomic import sha256_file, write_json
    from mimprobe.shardfile import write_shard

    meta = {"shard_size": shard_size, "image_shape": list(images.shape[1:]),
            "splits": {"train": {"count": len(images)}, "test": {"count": 0}}, "shards": {}}
    for i, lo in enumerate(range(0, len(images), shard_size)):
        hi = min(lo + shard_size, len(images))
        path = folder / f"train-{i:04d}.npz"
        write_shard(path, images[lo:hi], np.zeros(hi - lo, np.int64), None, np.arange(lo, hi))
        meta["shards"][path.stem] = {"start": lo, "stop": hi, "sha256": sha256_file(path)}
    write_json(folder / "meta.json", meta)
    return folder / "meta.json"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_ours(backbone, images, args, device) -> float:
    from mimprobe import extract

    config = validate_config({
        "datasets": {"bench": {"kind": "digits"}},
        "backbones": {"bench": {"model": args.model, "batch_size": args.batch_size}},
        "features": {"blocks": args.blocks, "pooling": args.pooling, "device": str(device),
                     "precision": args.precision, "chunk_rows": args.chunk_rows},
    })
    backbone_cfg, features = config["backbones"]["bench"], config["features"]
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        folder = Path(tmp)
        write_shards(folder, images, args.shard_size)
        store = folder / "bench.zarr"
        layout = {"sizes": {"train": len(images), "test": 0}, "shard_size": args.shard_size,
                  "image_shape": list(images.shape[1:])}
        extract.init_store(store, layout, backbone_cfg, features, 0)  # builds its own CPU copy
        extract.build = lambda *a, **k: backbone  # built once; embed_shards moves it to the device and dtype
        shards = sorted(folder.glob("train-*.npz"))
        extract.embed_shards(store, shards[:1], folder / "warm.json", backbone_cfg, features, 0,
                             args.threads)  # warm-up: kernels, allocator, page cache
        began = time.perf_counter()
        extract.embed_shards(store, shards, folder / "lane.json", backbone_cfg, features, 0, args.threads)
        seconds = time.perf_counter() - began
    return len(images) / seconds


@torch.inference_mode()
def bench_timm_forward(model, images, args, device, dtype, preprocess) -> float:
    batches = [preprocess(torch.from_numpy(images[i:i + args.batch_size]).to(device)).to(dtype).contiguous()
               for i in range(0, len(images), args.batch_size)]
    model(batches[0])
    sync(device)
    began = time.perf_counter()
    for x in batches:
        model(x)
    sync(device)
    return len(images) / (time.perf_counter() - began)


@torch.inference_mode()
def bench_seed_path(model, images, size: int, mean, std, tmp: Path) -> float:
    from PIL import Image
    from torchvision import transforms

    transform = transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(size), transforms.ToTensor(), transforms.Normalize(mean, std),
    ])
    model = model.float().cpu()
    getattr(model, "forward_features", model)(transform(Image.fromarray(images[0])).unsqueeze(0))  # warm-up
    began = time.perf_counter()
    rows = []
    for image in images:
        x = transform(Image.fromarray(image)).unsqueeze(0)
        rows.append(getattr(model, "forward_features", model)(x).flatten().tolist())
    (tmp / "seed_features.json").write_text(json.dumps(rows))
    return len(images) / (time.perf_counter() - began)


def bf16_agreement(model_spec: str, images, args, device) -> float:
    """Worst per-image cosine between bf16 and fp32 features over every stored block and pooling."""
    backbone = create_backbone(model_spec, seed=0).to(device)
    blocks = backbone.resolve_blocks(args.blocks)
    poolings = [p for p in args.pooling if p in backbone.poolings] or list(backbone.poolings[:1])
    with torch.inference_mode():
        x = backbone.preprocess(torch.from_numpy(images).to(device))
        exact = backbone.forward_blocks(x, blocks, poolings)
        backbone = backbone.to(dtype=torch.bfloat16)
        fast = backbone.forward_blocks(x.bfloat16(), blocks, poolings)
    cosines = [torch.nn.functional.cosine_similarity(fast[k].float(), exact[k].float(), dim=-1).min() for k in exact]
    return round(float(min(cosines)), 5)


def ceiling(model, size: int, device, dtype) -> dict:
    """A measured matmul rate (in the forward's dtype) divided by the model's FLOPs per image."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size, device=device, dtype=dtype))
    flops = counter.get_total_flops()
    side, reps = (8192, 20) if device.type == "cuda" else (2048, 10)
    a = torch.randn(side, side, device=device, dtype=dtype)
    a @ a
    sync(device)
    began = time.perf_counter()
    for _ in range(reps):
        a @ a
    sync(device)
    rate = reps * 2 * side**3 / (time.perf_counter() - began)
    return {"gflop_per_image": round(flops / 1e9, 2), "matmul_tflop_s": round(rate / 1e12, 1),
            "ceiling_img_s": round(rate / flops, 1)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:vit_tiny_patch16_224")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--seed-images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=None, help="default: all images in one shard if ≤ 2048")
    parser.add_argument("--blocks", default="all", help="'all' or comma-separated indices")
    parser.add_argument("--pooling", default="cls,mean")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--chunk-rows", type=int, default=256,
                        help="store chunk rows (at most); the shard size writes each shard once, after its last batch")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--tmp", default=None, help="where the shards and store are written (default: system temp)")
    parser.add_argument("--out", default="results/bench/extract_throughput.json")
    args = parser.parse_args(argv)
    args.blocks = "all" if args.blocks == "all" else [int(b) for b in args.blocks.split(",")]
    args.pooling = args.pooling.split(",")
    args.shard_size = args.shard_size or min(len(range(args.images)), 2048)
    if args.threads:
        torch.set_num_threads(args.threads)

    from mimprobe.devices import device_kind
    from mimprobe.extract import forward_dtype

    kind = device_kind(args.device)
    device = torch.device("cuda" if kind == "cuda" else "cpu")
    dtype = forward_dtype(args.precision, kind)
    images, source = load_images(args.images)
    backbone = create_backbone(args.model, seed=0)
    model = backbone.model.to(device=device, dtype=dtype)

    result = {"model": args.model, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
              else f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
              "dtype": str(dtype).removeprefix("torch."), "batch_size": args.batch_size, "images": len(images),
              "blocks": args.blocks, "pooling": args.pooling, "chunk_rows": args.chunk_rows, "image_source": source}
    # timm's forward runs before and after ours and keeps its better rate: no edge from running second
    timm_before = bench_timm_forward(model, images, args, device, dtype, backbone.preprocess)
    result["ours_img_s"] = round(bench_ours(backbone, images, args, device), 1)
    model = model.to(device=device, dtype=dtype)
    timm_after = bench_timm_forward(model, images, args, device, dtype, backbone.preprocess)
    result["timm_forward_img_s"] = round(max(timm_before, timm_after), 1)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        result["seed_path_img_s"] = round(bench_seed_path(model, images[: args.seed_images], backbone.input_size,
                                                          backbone.mean, backbone.std, Path(tmp)), 2)
        result["seed_path_images"] = args.seed_images
    model = model.to(device=device, dtype=dtype)
    result |= ceiling(model, backbone.input_size, device, dtype)
    result["seed_path_ceiling_ratio"] = round(result["ceiling_img_s"] / result["seed_path_img_s"], 1)
    if dtype == torch.bfloat16:
        result["bf16_vs_fp32_min_cosine"] = bf16_agreement(args.model, images[:64], args, device)
    result["ours_vs_timm_forward"] = round(result["ours_img_s"] / result["timm_forward_img_s"], 3)
    result["ours_vs_seed_path"] = round(result["ours_img_s"] / result["seed_path_img_s"], 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(f"wrote {out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
