"""Dataset sources: CIFAR "python version" archives, the offline digits default, image folders.

Every loader returns a `RawDataset` of uint8 NHWC images; `shards.py` cuts it into shards.
"""

from __future__ import annotations

import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

CIFAR_ARCHIVES = {
    "cifar100": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "filename": "cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
    },
    "cifar10": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "filename": "cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
    },
}

# Images per split of each built-in dataset, so the DAG knows its shards before any job runs.
BUILTIN_SPLIT_SIZES = {
    "cifar100": {"train": 50_000, "test": 10_000},
    "cifar10": {"train": 50_000, "test": 10_000},
    "digits": {"train": 1_297, "test": 500},
}


@dataclass
class SplitArrays:
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64 fine labels
    coarse_labels: np.ndarray | None = None


@dataclass
class RawDataset:
    train: SplitArrays
    test: SplitArrays
    class_names: list[str]
    coarse_class_names: list[str] | None = None


def _text(value) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _unpickle_py2(blob: bytes, member: str, archive: Path) -> dict:
    """Load a CIFAR pickle written by Python 2 and return it with str keys."""
    try:
        raw = pickle.loads(blob, encoding="bytes")
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt member
        raise DataError(
            f"{archive}: member {member!r} is not a readable CIFAR pickle ({err}). "
            "Delete the archive and download it again."
        ) from err
    if not isinstance(raw, dict):
        raise DataError(f"{archive}: member {member!r} holds {type(raw).__name__}, expected a dict.")
    return {_text(key): value for key, value in raw.items()}


def refuse_escaping_members(tar: tarfile.TarFile, archive: Path) -> None:
    """Refuse an archive any of whose members would land outside a target folder if extracted:
    absolute paths, '..' components, links and special files (we read members, never extract,
    but such an archive is not an official one and nothing in it is trusted)."""
    for info in tar.getmembers():
        name = info.name.replace("\\", "/")
        if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in name.split("/"):
            raise DataError(
                f"{archive}: member {info.name!r} points outside the archive's folder (absolute path or "
                "'..'); refusing the archive. Download the official archive again."
            )
        if not (info.isfile() or info.isdir()):
            raise DataError(
                f"{archive}: member {info.name!r} is a link or special file; refusing the archive. "
                "Download the official archive again."
            )


def _safe_member(tar: tarfile.TarFile, name: str, archive: Path):
    try:
        info = tar.getmember(name)
    except KeyError:
        raise DataError(
            f"{archive}: member {name!r} is missing. Is this the right CIFAR 'python version' archive?"
        ) from None
    if not info.isfile():
        raise DataError(f"{archive}: member {name!r} is not a regular file (links are refused).")
    return tar.extractfile(info).read()


def _batch_to_arrays(batch: dict, member: str, archive: Path, fine_key: str):
    data = np.asarray(batch.get("data"))
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{archive}: {member!r} 'data' has shape {data.shape}, expected (N, 3072).")
    if fine_key not in batch:
        raise DataError(f"{archive}: {member!r} has no {fine_key!r} key.")
    # Rows are channel-major: 1,024 R, then G, then B, each a row-major 32x32 plane.
    images = data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    fine = np.asarray(batch[fine_key], dtype=np.int64)
    coarse = np.asarray(batch["coarse_labels"], dtype=np.int64) if "coarse_labels" in batch else None
    if len(fine) != len(images):
        raise DataError(f"{archive}: {member!r} has {len(images)} images but {len(fine)} labels.")
    return images, fine, coarse


def read_cifar_archive(archive: str | Path, kind: str) -> RawDataset:
    """Read a CIFAR-10/100 python-version .tar.gz directly, without extracting it to disk."""
    spec = CIFAR_ARCHIVES[kind]
    archive = Path(archive)
    fine_key = "fine_labels" if kind == "cifar100" else "labels"
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{archive}: not a readable tar archive ({err}). Download it again.") from err
    with tar:
        try:
            refuse_escaping_members(tar, archive)
            splits = {}
            for split in ("train", "test"):
                parts = [
                    _batch_to_arrays(
                        _unpickle_py2(_safe_member(tar, f"{spec['folder']}/{m}", archive), m, archive),
                        m, archive, fine_key,
                    )
                    for m in spec[split]
                ]
                coarse = None if parts[0][2] is None else np.concatenate([p[2] for p in parts])
                splits[split] = SplitArrays(
                    np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), coarse
                )
            meta = _unpickle_py2(
                _safe_member(tar, f"{spec['folder']}/{spec['meta']}", archive), spec["meta"], archive
            )
            # tarfile stops at the end-of-archive blocks and never reads the gzip trailer, so a
            # damaged image byte would pass unnoticed: read to the end to have the CRC checked.
            while tar.fileobj.read(1 << 20):
                pass
        except (tarfile.TarError, EOFError, OSError, __import__("zlib").error) as err:
            raise DataError(f"{archive}: truncated or corrupt archive ({err}). Download it again.") from err
    if kind == "cifar100":
        names = [_text(n) for n in meta["fine_label_names"]]
        coarse_names = [_text(n) for n in meta["coarse_label_names"]]
    else:
        names, coarse_names = [_text(n) for n in meta["label_names"]], None
    return RawDataset(splits["train"], splits["test"], names, coarse_names)


def fetch_cifar_archive(kind: str, resources_dir: str | Path, archive: str | None, verify_md5: bool) -> Path:
    """Return the archive path: the configured local file, or torchvision's md5-checked download."""
    from torchvision.datasets.utils import check_integrity, download_url

    spec = CIFAR_ARCHIVES[kind]
    if archive:
        path = Path(archive)
        if not path.is_file():
            raise DataError(
                f"{path}: archive not found (config datasets.<name>.archive). "
                "Fix the path, or remove the key to download it."
            )
    else:
        path = Path(resources_dir) / spec["filename"]
        if not path.is_file():
            download_url(spec["url"], str(path.parent), spec["filename"], spec["md5"])
    if verify_md5 and not check_integrity(str(path), spec["md5"]):
        raise DataError(
            f"{path}: md5 differs from the official {kind} archive ({spec['md5']}). Delete it and "
            "download again, or set verify_md5: false for a custom subset in the same format."
        )
    return path


def render_digit(digit_8x8: np.ndarray, rng: np.random.Generator, side: int = 32) -> np.ndarray:
    """One 8x8 digit (values 0..16) drawn at a random size, position and colour pair on side x side.

    Raw 8x8 digits are so aligned that raw pixels classify them almost perfectly; random
    placement and colours make the demo a test of features rather than of pixel alignment.
    """
    from PIL import Image

    size = int(rng.integers(side // 2, side - 3))
    glyph = Image.fromarray((digit_8x8 / 16.0 * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    alpha = np.zeros((side, side), dtype=np.float32)
    top, left = rng.integers(0, side - size + 1, size=2)
    alpha[top:top + size, left:left + size] = np.asarray(glyph, dtype=np.float32) / 255.0
    while True:
        background, foreground = rng.uniform(0, 255, size=(2, 3))
        if np.abs(background - foreground).mean() > 90:  # keep the digit visible
            break
    image = background * (1 - alpha[..., None]) + foreground * alpha[..., None]
    image += rng.normal(0, 6, size=image.shape)
    return np.clip(image.round(), 0, 255).astype(np.uint8)


def load_digits_rgb(test_size: int = BUILTIN_SPLIT_SIZES["digits"]["test"], seed: int = 0) -> RawDataset:
    """sklearn's 1,797 digits rendered as 32x32 RGB uint8 (see render_digit), fixed stratified split.

    The rendering and the split use their own fixed seed, so the dataset is the same for every
    config seed (the config seed drives only the validation split and the probes).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    rng = np.random.default_rng(seed)
    rgb = np.stack([render_digit(image, rng) for image in digits.images])
    train_idx, test_idx = train_test_split(
        np.arange(len(rgb)), test_size=test_size, stratify=digits.target, random_state=seed
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return RawDataset(
        SplitArrays(rgb[train_idx], digits.target[train_idx].astype(np.int64)),
        SplitArrays(rgb[test_idx], digits.target[test_idx].astype(np.int64)),
        [str(i) for i in range(10)],
    )
