"""`cifar100` and `cifar10`: the "python version" archives, read straight from the .tar.gz through an
unpickler that builds only numpy arrays and plain containers, with every label checked."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import DataError
from .base import Kind, RawDataset, SplitArrays

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

OFFICIAL_SIZES = {"train": 50_000, "test": 10_000}


def _text(value) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# Everything a CIFAR pickle names: numpy arrays (protocol 2 rebuilds them through `_reconstruct`,
# under numpy 1's module name or numpy 2's); the rest is dicts, lists, ints and strings.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers, and refuses every other global.

    A plain `pickle.loads` calls whatever a member names (`posix.system`, `builtins.eval`...), so
    an archive that is not the official one could run code; this one never imports anything.
    """

    def __init__(self, blob: bytes, member: str, archive: Path):
        super().__init__(io.BytesIO(blob), encoding="bytes")
        self.member, self.archive = member, archive

    def find_class(self, module: str, name: str):
        allowed = _CIFAR_GLOBALS.get((module, name))
        if allowed is None:
            raise DataError(
                f"{self.archive}: member {self.member!r} refused: it would call {module}.{name} when "
                "unpickled (a CIFAR pickle holds only numpy arrays, lists, numbers and strings). "
                "This is not an official archive; use the official one."
            )
        return allowed()

    def persistent_load(self, pid):
        raise DataError(f"{self.archive}: member {self.member!r} refused: it uses persistent ids, "
                        "which no CIFAR pickle holds. Use the official archive.")


def _unpickle_py2(blob: bytes, member: str, archive: Path) -> dict:
    """Load a CIFAR pickle written by Python 2 and return it with str keys."""
    try:
        raw = CifarUnpickler(blob, member, archive).load()
    except DataError:
        raise
    except Exception as err:
        raise DataError(
            f"{archive}: member {member!r} is not a readable CIFAR pickle ({type(err).__name__}: "
            f"{_first_line(err)}). Delete the archive and download it again."
        ) from None
    if not isinstance(raw, dict):
        raise DataError(f"{archive}: member {member!r} holds {type(raw).__name__}, expected a dict.")
    return {_text(key): value for key, value in raw.items()}


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else "no message"


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


def _labels(batch: dict, key: str, member: str, archive: Path) -> np.ndarray:
    if key not in batch:
        raise DataError(f"{archive}: member {member!r} has no {key!r} key. Is this a CIFAR 'python version' archive?")
    try:
        labels = np.asarray(batch[key])
    except (ValueError, TypeError):
        labels = None
    if labels is None or labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise DataError(f"{archive}: member {member!r} {key!r} is not a list of integer labels.")
    return labels.astype(np.int64)


def _batch_to_arrays(batch: dict, member: str, archive: Path, kind: str):
    try:
        data = np.asarray(batch.get("data"))
    except (ValueError, TypeError):
        data = np.zeros(0)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{archive}: member {member!r} 'data' has shape {data.shape}, expected (N, 3072).")
    if data.dtype != np.uint8 and (data.dtype.kind not in "iu" or data.size and (data.min() < 0 or data.max() > 255)):
        raise DataError(f"{archive}: member {member!r} 'data' is not 8-bit pixels (0..255, dtype {data.dtype}).")
    # Rows are channel-major: 1,024 R, then G, then B, each a row-major 32x32 plane.
    images = data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    fine = _labels(batch, "fine_labels" if kind == "cifar100" else "labels", member, archive)
    coarse = _labels(batch, "coarse_labels", member, archive) if kind == "cifar100" else None
    for labels in (fine, coarse):
        if labels is not None and len(labels) != len(images):
            raise DataError(f"{archive}: member {member!r} has {len(images)} images but {len(labels)} labels.")
    return images, fine, coarse


def _names(meta: dict, key: str, member: str, archive: Path) -> list[str]:
    if key not in meta:
        raise DataError(f"{archive}: member {member!r} has no {key!r} key. Is this a CIFAR 'python version' archive?")
    names = meta[key]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"{archive}: member {member!r} {key!r} is not a list of class names.")
    return [_text(n) for n in names]


def _check_labels(labels: np.ndarray, names: list[str], key: str, member: str, meta: str, archive: Path) -> None:
    """Every label indexes a class name: out-of-range labels would fail only later, in the probes."""
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        bad = int(labels.min()) if labels.min() < 0 else int(labels.max())
        raise DataError(
            f"{archive}: member {member!r} has {key} label {bad}, but member {meta!r} names {len(names)} "
            f"{key}es (labels 0..{len(names) - 1}). The archive is inconsistent; use the official one."
        )


def _check_superclasses(parts: list, member_names: list[str], archive: Path) -> None:
    """Each CIFAR-100 class belongs to one superclass in every batch."""
    superclass = {}
    for member, (_, fine, coarse) in zip(member_names, parts):
        pairs = np.unique(fine << 32 | coarse)  # labels are checked non-negative and small by now
        for f, c in zip((pairs >> 32).tolist(), (pairs & 0xFFFFFFFF).tolist()):
            if superclass.setdefault(f, (c, member))[0] != c:
                raise DataError(
                    f"{archive}: member {member!r} puts class {f} in superclass {c}, but member "
                    f"{superclass[f][1]!r} puts it in superclass {superclass[f][0]}. "
                    "The archive is inconsistent; use the official one."
                )


def read_cifar_archive(archive: str | Path, kind: str) -> RawDataset:
    """Read a CIFAR-10/100 python-version .tar.gz directly, without extracting it to disk."""
    spec = CIFAR_ARCHIVES[kind]
    archive = Path(archive)
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{archive}: not a readable tar archive ({err}). Download it again.") from err
    with tar:
        try:
            refuse_escaping_members(tar, archive)
            parts = {}  # members in archive order: reading them in turn never seeks back in the gzip stream
            for member in spec["train"] + spec["test"]:
                blob = _safe_member(tar, f"{spec['folder']}/{member}", archive)
                parts[member] = _batch_to_arrays(_unpickle_py2(blob, member, archive), member, archive, kind)
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
        names = _names(meta, "fine_label_names", spec["meta"], archive)
        coarse_names = _names(meta, "coarse_label_names", spec["meta"], archive)
    else:
        names, coarse_names = _names(meta, "label_names", spec["meta"], archive), None
    for member, (_, fine, coarse) in parts.items():
        _check_labels(fine, names, "class", member, spec["meta"], archive)
        if coarse is not None:
            _check_labels(coarse, coarse_names, "superclass", member, spec["meta"], archive)
    if kind == "cifar100":
        _check_superclasses(list(parts.values()), list(parts), archive)
    splits = {}
    for split in ("train", "test"):
        chosen = [parts[m] for m in spec[split]]
        coarse = None if kind != "cifar100" else np.concatenate([p[2] for p in chosen])
        splits[split] = SplitArrays(np.concatenate([p[0] for p in chosen]), np.concatenate([p[1] for p in chosen]),
                                    coarse)
    return RawDataset(splits["train"], splits["test"], names, coarse_names)


def fetch_cifar_archive(kind: str, resources_dir: str | Path, archive: str | None, verify_md5: bool) -> Path:
    """Return the archive path: the configured local file, or torchvision's md5-checked download."""
    from torchvision.datasets.utils import check_integrity

    spec = CIFAR_ARCHIVES[kind]
    if archive:
        path = Path(archive)
        if not path.is_file():
            raise DataError(
                f"{path}: archive not found (config datasets.<name>.archive). "
                "Fix the path, or remove the key to download it."
            )
    else:
        path = download_archive(spec, Path(resources_dir) / spec["filename"])
    if verify_md5 and not check_integrity(str(path), spec["md5"]):
        raise DataError(
            f"{path}: md5 differs from the official {kind} archive ({spec['md5']}). Delete it and "
            "download again, or set verify_md5: false for a custom subset in the same format."
        )
    return path


def download_archive(spec: dict, path: str | Path) -> Path:
    """The archive of `spec` (url, md5) at `path`, downloaded unless it is already there."""
    path = Path(path)
    if not path.is_file():
        _download(spec["url"], path, spec["md5"])
    return path


def _download(url: str, path: Path, md5: str) -> None:
    """torchvision's downloader into a temporary name, renamed only once complete; one line on failure."""
    from torchvision.datasets.utils import download_url

    with atomic_path(path) as tmp:
        try:
            download_url(url, str(tmp.parent), tmp.name, md5)
        except Exception as err:
            raise DataError(
                f"could not download {url} ({type(err).__name__}: {_first_line(err)}). Without internet, "
                f"download it on another machine and set datasets.<name>.archive to the copied file "
                f"(or place it at {path})."
            ) from None


def archive_sizes(entry: dict) -> dict[str, int]:
    """Images per split: the official sizes, or a custom archive's own (`verify_md5: false`), read once."""
    if entry.get("archive") and not entry.get("verify_md5", True):
        from ..plan import archive_counts

        return archive_counts(entry["archive"], entry["kind"])
    return dict(OFFICIAL_SIZES)


def load_archive(entry: dict) -> RawDataset:
    """The entry's archive (its `archive` is the local file, or the download rule's), checked and read."""
    path = fetch_cifar_archive(entry["kind"], ".", entry.get("archive"), entry.get("verify_md5", True))
    return read_cifar_archive(path, entry["kind"])


def archive_identity(entry: dict) -> str:
    """A custom archive is identified by its file (path, size, modification time); an official one by its md5."""
    path = Path(entry["archive"]) if entry.get("archive") else None
    if path is not None and path.is_file() and not entry.get("verify_md5", True):
        from ..plan import file_key

        return file_key(path)
    return CIFAR_ARCHIVES[entry["kind"]]["md5"]


SCHEMA = {
    "archive": {"type": ["string", "null"], "default": None,
                "description": "Local CIFAR archive; null downloads it (md5-checked) into resources_dir."},
    "verify_md5": {"type": "boolean", "default": True,
                   "description": "Check a local CIFAR archive against the official md5; false for custom subsets "
                                  "in the same format."},
}


def _kind(name: str) -> Kind:
    return Kind(load=load_archive, sizes=archive_sizes, identity=archive_identity, schema=SCHEMA,
                archive=CIFAR_ARCHIVES[name], official_sizes=OFFICIAL_SIZES)


CIFAR100, CIFAR10 = _kind("cifar100"), _kind("cifar10")
