import io
import pickle
import tarfile

import numpy as np
import pytest

from mimprobe.datasets.cifar import read_cifar_archive
from mimprobe.datasets.digits import load_digits_rgb
from mimprobe.errors import DataError
from mimprobe.py2pickle import dumps_py2


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _images(count: int, offset: int) -> np.ndarray:
    rng = np.random.default_rng(offset)
    return rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)


def make_cifar100_archive(path, train=12, test=6):
    with tarfile.open(path, "w:gz") as tar:
        for split, count in (("train", train), ("test", test)):
            batch = {"data": _images(count, count), "fine_labels": [i % 5 for i in range(count)],
                     "coarse_labels": [i % 5 // 3 for i in range(count)],
                     "filenames": [f"img_{i}.png" for i in range(count)], "batch_label": split}
            _add(tar, f"cifar-100-python/{split}", dumps_py2(batch))
        meta = {"fine_label_names": [f"fine{i}" for i in range(5)], "coarse_label_names": ["low", "high"]}
        _add(tar, "cifar-100-python/meta", dumps_py2(meta))


def make_cifar10_archive(path, per_batch=4):
    with tarfile.open(path, "w:gz") as tar:
        for i in range(1, 6):
            batch = {"data": _images(per_batch, i), "labels": [j % 3 for j in range(per_batch)],
                     "filenames": [f"b{i}_{j}.png" for j in range(per_batch)]}
            _add(tar, f"cifar-10-batches-py/data_batch_{i}", dumps_py2(batch))
        _add(tar, "cifar-10-batches-py/test_batch",
             dumps_py2({"data": _images(3, 9), "labels": [0, 1, 2], "filenames": ["t0", "t1", "t2"]}))
        _add(tar, "cifar-10-batches-py/batches.meta", dumps_py2({"label_names": ["cat", "dog", "owl"]}))


def test_py2_fixture_behaves_like_the_real_cifar_pickles():
    blob = dumps_py2({"data": np.zeros((1, 3072), np.uint8), "fine_labels": [1]})
    assert b"data" in pickle.loads(blob, encoding="bytes")
    assert "data" in pickle.loads(blob, encoding="latin1")
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(dumps_py2({"data": bytes(range(200, 256))}))


def test_cifar100_archive_reads_channel_major_rows(tmp_path):
    archive = tmp_path / "cifar-100-python.tar.gz"
    make_cifar100_archive(archive)
    dataset = read_cifar_archive(archive, "cifar100")
    assert dataset.train.images.shape == (12, 32, 32, 3) and dataset.test.images.shape == (6, 32, 32, 3)
    row = _images(12, 12)[3]
    # pixel (r, c) of channel k sits at k*1024 + r*32 + c
    assert dataset.train.images[3, 2, 5, 1] == row[1 * 1024 + 2 * 32 + 5]
    assert dataset.train.labels.tolist() == [i % 5 for i in range(12)]
    assert dataset.train.coarse_labels.tolist() == [i % 5 // 3 for i in range(12)]
    assert dataset.class_names == [f"fine{i}" for i in range(5)]
    assert dataset.coarse_class_names == ["low", "high"]


def test_cifar10_archive_concatenates_five_batches(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    make_cifar10_archive(archive)
    dataset = read_cifar_archive(archive, "cifar10")
    assert len(dataset.train.labels) == 20 and len(dataset.test.labels) == 3
    assert dataset.class_names == ["cat", "dog", "owl"] and dataset.coarse_class_names is None


def test_truncated_archive_names_the_file(tmp_path):
    archive = tmp_path / "cifar-100-python.tar.gz"
    make_cifar100_archive(archive, train=200)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="cifar-100-python.tar.gz"):
        read_cifar_archive(archive, "cifar100")


def test_digits_are_rendered_32x32_rgb_with_a_fixed_split():
    first, second = load_digits_rgb(), load_digits_rgb()
    assert first.train.images.shape == (1297, 32, 32, 3) and first.test.images.shape == (500, 32, 32, 3)
    assert first.train.images.dtype == np.uint8
    assert np.array_equal(first.train.images, second.train.images)
    assert np.bincount(first.test.labels).min() >= 45  # stratified: ~50 per class
