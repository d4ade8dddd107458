"""One small finished study shared by the report, predict and image-folder tests (run once per session).

Digits plus an image folder the test writes, raw pixels plus a tiny random ViT, kNN and linear
probes, then `snakemake --report`: every output a user sees, in well under a minute of jobs.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from conftest import run_snakemake, tiny_config
from PIL import Image

IMAGE_FOLDER_CLASSES = {"cat": (200, 40, 40), "dog": (40, 200, 40), "frog": (40, 40, 200)}
_finished: dict = {}


def write_image_folder(root: Path, train: int = 10, test: int = 4, seed: int = 0) -> Path:
    """root/{train,test}/<class>/ with PNG and JPEG images of mixed sizes and modes; class = colour."""
    rng = np.random.default_rng(seed)
    modes = ["RGB", "RGBA", "L", "P"]
    for split, count in (("train", train), ("test", test)):
        for name, colour in IMAGE_FOLDER_CLASSES.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                height, width = rng.integers(20, 90, size=2)
                pixels = np.clip(np.array(colour) + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels)
                mode = modes[i % len(modes)]
                image = image.convert(mode) if mode != "P" else image.quantize(16)
                if i % 3 == 2 and mode in ("RGB", "L"):
                    image.save(folder / f"{name}_{i}.jpg", quality=90)
                else:
                    image.save(folder / f"{name}_{i}.png")
    return root


def write_huge_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A few hundred bytes whose header claims width x height pixels (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def study_config(image_root: Path) -> dict:
    return tiny_config(
        datasets={
            "digits": {"kind": "digits", "shard_size": 256, "limit": {"train": 200, "test": 100}},
            "pets": {"kind": "imagefolder", "root": str(image_root), "image_size": 32, "shard_size": 256,
                     "val_fraction": 0.2},
        },
        backbones={"pixels": {"model": "pixels"}, "tiny_vit": {"model": "random:test_vit", "batch_size": 64}},
        probes={"knn": {"k": [3, 5]}, "linear": {"learning_rates": [0.01, 0.1], "epochs": 4}},
    )


def finished_study(tmp_path_factory) -> Path:
    """The study's working directory after `snakemake` and `snakemake --report` (built once)."""
    if "workdir" not in _finished:
        workdir = tmp_path_factory.mktemp("study")
        config = study_config(write_image_folder(workdir / "pets"))
        _finished["first_run"] = run_snakemake(workdir, config)
        run_snakemake(workdir, config, "--report", "results/report/report.html")
        _finished["workdir"] = workdir
    return _finished["workdir"]


def first_run_output() -> str:
    """What the study's first `snakemake` run printed (stdout and stderr)."""
    result = _finished["first_run"]
    return result.stdout + result.stderr
