"""A full-size CIFAR-100 stand-in for rehearsals and tests: the official archive layout, Python 2 pickles.

Images carry class structure: each of the 20 superclasses has a smooth colour pattern and each of its
5 classes adds its own; an image is its class pattern at a random shift, contrast and brightness,
plus noise. Raw pixels are therefore a weak baseline, and classes of one superclass are harder to
tell apart than classes of different ones. Everything is drawn from one seed.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .datasets import RawDataset, SplitArrays
from .datasets.cifar import CIFAR_ARCHIVES
from .py2pickle import dumps_py2

CLASSES, SUPERCLASSES, SIDE = 100, 20, 32


def _smooth_patterns(rng, count: int) -> np.ndarray:
    """(count, 32, 32, 3) zero-mean, unit-std fields: a random 4x4 colour grid, bilinearly upsampled."""
    from scipy.ndimage import zoom

    coarse = rng.normal(size=(count, 4, 4, 3))
    fields = zoom(coarse, (1, SIDE / 4, SIDE / 4, 1), order=1, mode="grid-wrap")
    fields -= fields.mean(axis=(1, 2, 3), keepdims=True)
    return fields / fields.std(axis=(1, 2, 3), keepdims=True)


def _balanced_labels(rng, count: int) -> np.ndarray:
    return rng.permutation(np.arange(count) % CLASSES)


def _draw_images(rng, patterns: np.ndarray, labels: np.ndarray, chunk: int = 8192) -> np.ndarray:
    images = np.empty((len(labels), SIDE, SIDE, 3), dtype=np.uint8)
    grid = np.arange(SIDE)
    for start in range(0, len(labels), chunk):
        part = labels[start:start + chunk]
        n = len(part)
        dy, dx = rng.integers(-10, 11, size=(2, n))
        rows, cols = (grid[None] - dy[:, None]) % SIDE, (grid[None] - dx[:, None]) % SIDE
        shifted = patterns[part[:, None, None], rows[:, :, None], cols[:, None, :]]
        contrast = rng.uniform(0.4, 1.6, size=(n, 1, 1, 1))
        brightness = rng.uniform(-30, 30, size=(n, 1, 1, 3))
        noise = rng.normal(0, 55, size=shifted.shape)
        pixels = 128 + 45 * contrast * shifted + brightness + noise
        images[start:start + n] = np.clip(pixels.round(), 0, 255).astype(np.uint8)
    return images


def synthetic_cifar100(train: int = 50_000, test: int = 10_000, seed: int = 0) -> RawDataset:
    rng = np.random.default_rng(seed)
    coarse_of = np.arange(CLASSES) // (CLASSES // SUPERCLASSES)
    patterns = 0.9 * _smooth_patterns(rng, SUPERCLASSES)[coarse_of] + 0.5 * _smooth_patterns(rng, CLASSES)
    splits = {}
    for split, count in (("train", train), ("test", test)):
        labels = _balanced_labels(rng, count)
        splits[split] = SplitArrays(_draw_images(rng, patterns, labels), labels, coarse_of[labels])
    return RawDataset(splits["train"], splits["test"], [f"class{k:02d}" for k in range(CLASSES)],
                      [f"super{s:02d}" for s in range(SUPERCLASSES)])


def _batch(arrays: SplitArrays, split: str) -> dict:
    """One pickled batch as the official files hold it: channel-major rows of 3,072 bytes."""
    return {
        "data": np.ascontiguousarray(arrays.images.transpose(0, 3, 1, 2)).reshape(len(arrays.labels), -1),
        "fine_labels": arrays.labels.tolist(),
        "coarse_labels": arrays.coarse_labels.tolist(),
        "filenames": [f"{split}_{i:05d}.png" for i in range(len(arrays.labels))],
        "batch_label": f"{split} batch",
    }


def write_cifar100_archive(path: str | Path, dataset: RawDataset) -> Path:
    """`cifar-100-python.tar.gz` with `train`, `test` and `meta` members; byte-identical for one dataset."""
    folder = CIFAR_ARCHIVES["cifar100"]["folder"]
    members = {
        "train": dumps_py2(_batch(dataset.train, "train")),
        "test": dumps_py2(_batch(dataset.test, "test")),
        "meta": dumps_py2({"fine_label_names": dataset.class_names,
                           "coarse_label_names": dataset.coarse_class_names}),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as zipped:
            with tarfile.open(fileobj=zipped, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for name, payload in members.items():
                    info = tarfile.TarInfo(f"{folder}/{name}")
                    info.size, info.mode = len(payload), 0o644
                    tar.addfile(info, io.BytesIO(payload))
    return path
