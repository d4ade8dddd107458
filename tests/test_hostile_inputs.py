"""Hostile and unusual inputs: archives that carry code or wrong labels, 16-bit/float/EXIF images, links
out of an image folder, weights that are not checkpoints, no network, impossible pixels blocks; and
through the real workflow: names that would be shell code or escape the folder, paths that need
quoting, a flipped byte in a verified store, a failed probe followed by a plain rerun, and a Snakemake
killed on its own (every printed fix is followed and works).

Every fixture is built in a temporary folder. Payloads that would run code only ever try to create a
marker file there; each test asserts that the marker never appears.
"""

from __future__ import annotations

import io
import os
import pickle
import signal
import struct
import subprocess
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
import zarr
from conftest import BIN, REPO, run_snakemake, tiny_config, workflow_env
from PIL import Image

from mimprobe.backbones import create_backbone
from mimprobe.backbones.weights import safe_load
from mimprobe.cli import main
from mimprobe.config import validate_config
from mimprobe.datasets.cifar import CIFAR_ARCHIVES, CifarUnpickler, fetch_cifar_archive, read_cifar_archive
from mimprobe.datasets.imagefolder import check_image_folder, list_image_folder, open_image, read_image_folder
from mimprobe.errors import ConfigError, DataError, MimprobeError
from mimprobe.faults import PAUSE_ENV
from mimprobe.plan import split_sizes
from mimprobe.py2pickle import dumps_py2
from mimprobe.shards import load_raw_dataset
from mimprobe.synthetic import synthetic_cifar100, write_cifar100_archive

# ---- fixtures --------------------------------------------------------------------------------------

class Payload:
    """Pickles as a call of `func(*args)`: what a hostile archive or checkpoint would carry."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker: Path) -> dict[str, Payload]:
    return {
        "posix.system": Payload(os.system, f"touch {marker}"),
        "eval": Payload(eval, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.Popen": Payload(subprocess.Popen, ["touch", str(marker)]),
    }


def cifar_members(kind: str, per_batch: int = 6, classes: int = 4, superclasses: int = 2) -> dict[str, dict]:
    """Every member of a small, consistent archive of `kind`, as the dicts the official pickles hold."""
    spec, rng = CIFAR_ARCHIVES[kind], np.random.default_rng(0)
    members = {}
    for member in spec["train"] + spec["test"]:
        fine = [i % classes for i in range(per_batch)]
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), "batch_label": member,
                 "filenames": [f"{member}_{i}.png" for i in range(per_batch)]}
        if kind == "cifar100":
            batch |= {"fine_labels": fine, "coarse_labels": [f % superclasses for f in fine]}
        else:
            batch["labels"] = fine
        members[member] = batch
    names = [f"class{i}" for i in range(classes)]
    members[spec["meta"]] = ({"fine_label_names": names,
                              "coarse_label_names": [f"super{i}" for i in range(superclasses)]}
                             if kind == "cifar100" else {"label_names": names})
    return members


def write_archive(path: Path, kind: str, members: dict[str, dict]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member, content in members.items():
            blob = dumps_py2(content)
            info = tarfile.TarInfo(f"{CIFAR_ARCHIVES[kind]['folder']}/{member}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ---- 1. CIFAR pickles never run code ------------------------------------------------------------

@pytest.mark.parametrize("kind, member, payload, key", [
    ("cifar10", "data_batch_3", "posix.system", "batch_label"),
    ("cifar10", "test_batch", "subprocess.Popen", "data"),
    ("cifar10", "batches.meta", "eval", "label_names"),
    ("cifar100", "train", "eval", "filenames"),
    ("cifar100", "test", "posix.system", "coarse_labels"),
    ("cifar100", "meta", "subprocess.Popen", "coarse_label_names"),
])
def test_an_archive_member_that_would_run_code_is_refused_by_name(tmp_path, kind, member, payload, key):
    marker = tmp_path / "pwned"
    members = cifar_members(kind)
    members[member][key] = payloads(marker)[payload]
    archive = write_archive(tmp_path / CIFAR_ARCHIVES[kind]["filename"], kind, members)
    with pytest.raises(DataError) as err:
        read_cifar_archive(archive, kind)
    message = one_line(err)
    assert str(archive) in message and f"member {member!r} refused: it would call" in message
    assert payload.split(".")[-1] in message
    assert not marker.exists()


def test_the_refusal_holds_when_the_md5_check_is_off(tmp_path):
    """verify_md5: false is the documented setting for custom subsets: the unpickler is the only guard."""
    marker = tmp_path / "pwned"
    members = cifar_members("cifar10")
    members["data_batch_1"]["data"] = Payload(os.system, f"touch {marker}")
    archive = write_archive(tmp_path / "subset.tar.gz", "cifar10", members)
    with pytest.raises(DataError, match=r"member 'data_batch_1' refused: it would call posix\.system"):
        load_raw_dataset({"kind": "cifar10", "archive": str(archive), "verify_md5": False})
    assert not marker.exists()


def test_a_whole_member_that_is_a_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    archive = tmp_path / "cifar-100-python.tar.gz"
    members = cifar_members("cifar100")
    with tarfile.open(archive, "w:gz") as tar:
        for member, content in members.items():
            blob = pickle.dumps(Payload(os.system, f"touch {marker}")) if member == "meta" else dumps_py2(content)
            info = tarfile.TarInfo(f"cifar-100-python/{member}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(DataError, match=r"member 'meta' refused: it would call posix\.system"):
        read_cifar_archive(archive, "cifar100")
    assert not marker.exists()


def test_a_normal_archive_reads_identically(tmp_path):
    dataset = synthetic_cifar100(train=300, test=100, seed=3)
    archive = write_cifar100_archive(tmp_path / "cifar-100-python.tar.gz", dataset)
    read = read_cifar_archive(archive, "cifar100")
    for split in ("train", "test"):
        expected, got = getattr(dataset, split), getattr(read, split)
        assert np.array_equal(got.images, expected.images)
        assert np.array_equal(got.labels, expected.labels)
        assert np.array_equal(got.coarse_labels, expected.coarse_labels)
    assert read.class_names == dataset.class_names and read.coarse_class_names == dataset.coarse_class_names
    # member by member, what the restricted unpickler builds is what a plain pickle.loads builds
    with tarfile.open(archive) as tar:
        blob = tar.extractfile("cifar-100-python/train").read()
    plain = pickle.loads(blob, encoding="bytes")
    restricted = CifarUnpickler(blob, "train", archive).load()
    assert restricted.keys() == plain.keys()
    assert np.array_equal(restricted[b"data"], plain[b"data"]) and restricted[b"data"].dtype == np.uint8
    assert restricted[b"fine_labels"] == plain[b"fine_labels"] and restricted[b"filenames"] == plain[b"filenames"]


def test_cifar10_archive_still_reads(tmp_path):
    members = cifar_members("cifar10")
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", "cifar10", members)
    read = read_cifar_archive(archive, "cifar10")
    first = members["data_batch_1"]["data"][2].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(read.train.images[2], first)
    assert read.train.labels.tolist() == [i % 4 for i in range(6)] * 5 and read.class_names[3] == "class3"


# ---- 2. labels are checked when the archive is read ----------------------------------------------

@pytest.mark.parametrize("kind, change, member, expected", [
    ("cifar10", lambda m: m["data_batch_2"]["labels"].__setitem__(1, 4), "data_batch_2",
     "has class label 4, but member 'batches.meta' names 4 classes (labels 0..3)"),
    ("cifar10", lambda m: m["test_batch"]["labels"].__setitem__(0, -1), "test_batch", "has class label -1"),
    ("cifar10", lambda m: m["batches.meta"]["label_names"].pop(), "data_batch_1",
     "has class label 3, but member 'batches.meta' names 3 classes"),
    ("cifar100", lambda m: m["meta"]["fine_label_names"].pop(), "train",
     "has class label 3, but member 'meta' names 3 classes"),
    ("cifar100", lambda m: m["test"]["coarse_labels"].__setitem__(2, 2), "test",
     "has superclass label 2, but member 'meta' names 2 superclasses (labels 0..1)"),
    ("cifar100", lambda m: m["train"]["coarse_labels"].__setitem__(0, -3), "train", "has superclass label -3"),
    ("cifar100", lambda m: m["test"]["coarse_labels"].__setitem__(1, 0), "test",
     "puts class 1 in superclass 0, but member 'train' puts it in superclass 1"),
    ("cifar10", lambda m: m["data_batch_4"].__setitem__("labels", ["cat"] * 6), "data_batch_4",
     "'labels' is not a list of integer labels"),
    ("cifar100", lambda m: m["test"].pop("coarse_labels"), "test", "has no 'coarse_labels' key"),
    ("cifar100", lambda m: m["meta"].pop("fine_label_names"), "meta", "has no 'fine_label_names' key"),
    ("cifar10", lambda m: m["data_batch_5"].__setitem__("data", np.full((6, 3072), 300)), "data_batch_5",
     "'data' is not 8-bit pixels"),
])
def test_inconsistent_labels_are_refused_naming_the_member(tmp_path, kind, change, member, expected):
    members = cifar_members(kind)
    change(members)
    archive = write_archive(tmp_path / CIFAR_ARCHIVES[kind]["filename"], kind, members)
    with pytest.raises(DataError) as err:
        read_cifar_archive(archive, kind)
    message = one_line(err)
    assert f"{archive}: member {member!r}" in message and expected in message


# ---- 3. images keep their values ----------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png16(path: Path, samples: np.ndarray) -> Path:
    """A 16-bit PNG (greyscale HxW or RGB HxWx3), written by hand: PIL writes 16-bit greyscale only."""
    samples = samples if samples.ndim == 3 else samples[..., None]
    height, width, channels = samples.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in samples)
    header = struct.pack(">IIBBBBB", width, height, 16, {1: 0, 3: 2}[channels], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows))
                     + _png_chunk(b"IEND", b""))
    return path


def write_tiff16_rgb(path: Path, samples: np.ndarray) -> Path:
    """An uncompressed little-endian 16-bit RGB TIFF, written by hand."""
    height, width, _ = samples.shape
    data = samples.astype("<u2").tobytes()
    tags = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 3, 8 + 2 + 9 * 12 + 4), (259, 3, 1, 1),
            (262, 3, 1, 2), (273, 4, 1, 8 + 2 + 9 * 12 + 4 + 6), (277, 3, 1, 3), (278, 3, 1, height),
            (279, 4, 1, len(data))]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHIHH", t, k, n, v, 0) if k == 3 and n == 1 else struct.pack("<HHII", t, k, n, v)
        for t, k, n, v in tags)
    path.write_bytes(b"II" + struct.pack("<HI", 42, 8) + ifd + struct.pack("<I", 0) + struct.pack("<3H", 16, 16, 16)
                     + data)
    return path


def scaled(values: np.ndarray) -> np.ndarray:
    return np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)


GRADIENT = np.arange(0, 65536, 16, dtype=np.uint16).reshape(64, 64)  # the full 16-bit range


@pytest.mark.parametrize("save", [
    lambda path: write_png16(path.with_suffix(".png"), GRADIENT),
    lambda path: Image.fromarray(GRADIENT).save(path.with_suffix(".tif")) or path.with_suffix(".tif"),
    lambda path: Image.fromarray(GRADIENT.astype(">u2")).save(path.with_suffix(".tiff")) or path.with_suffix(".tiff"),
    lambda path: path.with_suffix(".pgm").write_bytes(b"P5 64 64 65535\n" + GRADIENT.astype(">u2").tobytes())
    and path.with_suffix(".pgm"),
], ids=["png-I;16", "tiff-I;16", "tiff-I;16B", "pgm-I"])
def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path, save):
    path = save(tmp_path / "scan")
    assert Image.open(path).mode in ("I;16", "I;16B", "I")
    rgb = np.asarray(open_image(path))
    assert rgb.dtype == np.uint8 and rgb.shape == (64, 64, 3)
    for channel in range(3):
        assert np.array_equal(rgb[..., channel], scaled(GRADIENT))
    assert (rgb == 255).mean() < 0.01  # PIL's own conversion makes 99% of it white


def test_32_bit_integers_beyond_16_bits_are_refused(tmp_path):
    path = tmp_path / "wide.tif"
    Image.fromarray(np.array([[0, 70_000]], dtype=np.int32)).save(path)
    with pytest.raises(DataError) as err:
        open_image(path)
    assert str(path) in one_line(err) and "0..65535" in str(err.value)


@pytest.mark.parametrize("write", [write_png16, write_tiff16_rgb], ids=["png", "tiff"])
def test_16_bit_rgb_keeps_every_channel_within_one_level(tmp_path, write):
    samples = np.stack([GRADIENT, GRADIENT[::-1], np.full_like(GRADIENT, 40_000)], axis=-1)
    path = write(tmp_path / ("rgb16.png" if write is write_png16 else "rgb16.tif"), samples)
    rgb = np.asarray(open_image(path)).astype(int)
    # PIL decodes 16-bit RGB samples to their high byte: v // 256, one level at most from the scaled value
    assert np.abs(rgb - scaled(samples)).max() <= 1
    assert np.array_equal(rgb, samples >> 8)


def test_float_image_in_unit_range_is_scaled_to_255(tmp_path):
    values = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    path = tmp_path / "depth.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "F"
    rgb = np.asarray(open_image(path))
    assert np.array_equal(rgb[..., 1], np.rint(values * 255).astype(np.uint8))
    assert len(np.unique(rgb)) == 100  # PIL's own conversion leaves {0, 1}


@pytest.mark.parametrize("values, expected", [
    (np.array([[0.0, 1.5]], dtype=np.float32), "from 0 to 1.5"),
    (np.array([[-0.25, 0.5]], dtype=np.float32), "from -0.25 to 0.5"),
    (np.array([[np.nan, 0.5]], dtype=np.float32), "NaN or infinity"),
])
def test_float_image_outside_unit_range_is_refused(tmp_path, values, expected):
    path = tmp_path / "hdr.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(DataError) as err:
        open_image(path)
    message = one_line(err)
    assert message.startswith(f"{path}: floating-point pixels") and expected in message


def test_exif_orientation_is_applied_before_anything_else(tmp_path):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)  # stored: red left half, blue right half
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    shown = np.asarray(open_image(path)).astype(int)
    assert shown.shape == (40, 20, 3)  # portrait, as a viewer shows it
    assert shown[:15, :, 0].mean() > 200 and shown[:15, :, 2].mean() < 50  # red on top
    assert shown[-15:, :, 2].mean() > 200 and shown[-15:, :, 0].mean() < 50  # blue at the bottom


def test_sharding_a_folder_of_16_bit_and_float_images_keeps_their_values(tmp_path):
    root = tmp_path / "scans"
    for split in ("train", "test"):
        for name, level in (("dark", 0.2), ("light", 0.7)):
            folder = root / split / name
            folder.mkdir(parents=True)
            write_png16(folder / "a.png", np.full((16, 16), round(level * 65535), dtype=np.uint16))
            Image.fromarray(np.full((16, 16), level, dtype=np.float32)).save(folder / "b.tif")
    data = read_image_folder(root, 8)
    assert data.class_names == ["dark", "light"]
    means = data.train.images.reshape(4, -1).mean(1)
    assert np.allclose(means, [51, 51, 178.5, 178.5], atol=0.6)  # 0.2 and 0.7 of 255


# ---- 4. links out of an image folder ------------------------------------------------------------

def image_folder(root: Path) -> Path:
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 20, 30)).save(root / split / name / "a.png")
    return root


@pytest.fixture
def linked(tmp_path):
    """A folder whose train/cat/leak.png and test/dog/ are links to files outside the root."""
    outside = tmp_path / "elsewhere"
    (outside / "dogs").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 0, 0)).save(outside / "secret.png")
    Image.new("RGB", (8, 8), (0, 200, 0)).save(outside / "dogs" / "d.png")
    root = image_folder(tmp_path / "pets")
    (root / "train" / "cat" / "leak.png").symlink_to(outside / "secret.png")
    (root / "train" / "cat" / "inside.png").symlink_to(root / "test" / "cat" / "a.png")  # stays inside: fine
    for path in (root / "test" / "dog").iterdir():
        path.unlink()
    (root / "test" / "dog").rmdir()
    (root / "test" / "dog").symlink_to(outside / "dogs", target_is_directory=True)
    return root


@pytest.mark.parametrize("check", [list_image_folder, check_image_folder])
def test_links_leading_outside_the_root_are_refused_by_name(linked, check):
    with pytest.raises(DataError) as err:
        check(linked)
    message = one_line(err)
    assert "2 link(s) lead outside the root: train/cat/leak.png, test/dog/" in message
    assert "datasets.<name>.allow_outside_links: true" in message and "inside.png" not in message


def test_links_outside_are_read_when_allowed(linked):
    names, files = list_image_folder(linked, allow_outside_links=True)
    assert names == ["cat", "dog"]
    assert sorted(p.name for p, _ in files["train"]) == ["a.png", "a.png", "inside.png", "leak.png"]
    data = load_raw_dataset({"kind": "imagefolder", "root": str(linked), "image_size": 8,
                             "allow_outside_links": True})
    assert (data.train.images[:, 0, 0] == (200, 0, 0)).all(-1).sum() == 1  # the linked secret.png
    assert (data.test.images[:, 0, 0] == (0, 200, 0)).all(-1).sum() == 1  # test/dog/ from elsewhere/dogs


def test_a_linked_split_folder_is_refused(tmp_path):
    root = image_folder(tmp_path / "pets")
    image_folder(tmp_path / "other")
    for path in sorted((root / "test").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "test").rmdir()
    (root / "test").symlink_to(tmp_path / "other" / "test", target_is_directory=True)
    with pytest.raises(DataError, match=r"1 link\(s\) lead outside the root: test/ \("):
        list_image_folder(root)


def test_the_links_flag_comes_from_the_dataset_config(linked):
    config = validate_config({"datasets": {"pets": {"kind": "imagefolder", "root": str(linked)}},
                              "backbones": {"px": {"model": "pixels"}}})
    assert config["datasets"]["pets"]["allow_outside_links"] is False
    with pytest.raises(DataError, match="lead outside the root"):
        split_sizes(config["datasets"]["pets"])
    with pytest.raises(DataError, match="lead outside the root"):
        load_raw_dataset(config["datasets"]["pets"])
    config["datasets"]["pets"]["allow_outside_links"] = True
    assert split_sizes(config["datasets"]["pets"]) == {"train": 4, "test": 2}


@pytest.mark.slow
def test_the_dag_check_follows_the_links_flag(linked, tmp_path):
    config = tiny_config(datasets={"pets": {"kind": "imagefolder", "root": str(linked), "shard_size": 4}},
                         backbones={"pixels": {"model": "pixels"}})
    refused = run_snakemake(tmp_path, config, "-n", check=False)
    assert refused.returncode != 0
    assert "2 link(s) lead outside the root: train/cat/leak.png, test/dog/" in refused.stdout + refused.stderr
    config["datasets"]["pets"]["allow_outside_links"] = True
    allowed = run_snakemake(tmp_path, config, "-n")
    assert "prepare_shards" in allowed.stdout and not (tmp_path / "results").exists()


def test_the_links_flag_belongs_to_image_folders_only():
    with pytest.raises(ConfigError, match=r"datasets\.digits\.allow_outside_links: only kind imagefolder reads it"):
        validate_config({"datasets": {"digits": {"kind": "digits", "allow_outside_links": True}},
                         "backbones": {"px": {"model": "pixels"}}})


# ---- 5. one line where a traceback was ----------------------------------------------------------

@pytest.fixture
def not_weights(tmp_path) -> Path:
    path = tmp_path / "README.txt"
    path.write_text("These are not weights.\nJust a text file someone passed as weights.\n")
    return path


@pytest.fixture
def code_weights(tmp_path) -> Path:
    path = tmp_path / "model.pth"
    torch.save({"weight": torch.ones(2), "hook": Payload(os.system, f"touch {tmp_path / 'pwned'}")}, path)
    return path


def test_a_text_file_as_weights_is_one_line(not_weights):
    with pytest.raises(MimprobeError) as err:
        safe_load(not_weights, "torchvision:resnet18")
    message = one_line(err)
    assert message.startswith(f"torchvision:resnet18: {not_weights} did not load as this model's weights")
    assert "backbones.<name>.weights" in message


@pytest.mark.parametrize("spec", ["effnet_lite0", "timm:vit_tiny_patch16_224"])
def test_weights_that_carry_code_are_refused_in_one_line(code_weights, spec):
    with pytest.raises(MimprobeError) as err:
        create_backbone(spec, weights=str(code_weights))
    message = one_line(err)
    assert message.startswith(f"{spec}: {code_weights} is refused: it would call posix.system when unpickled")
    assert not (code_weights.parent / "pwned").exists()


@pytest.mark.parametrize("spec", ["effnet_lite0", "timm:vit_tiny_patch16_224"])
def test_weights_that_are_not_a_checkpoint_are_one_line(not_weights, spec):
    with pytest.raises(MimprobeError) as err:
        create_backbone(spec, weights=str(not_weights))
    assert one_line(err).startswith(f"{spec}: {not_weights} did not load as this model's weights")


def test_timm_weights_of_another_model_are_one_line(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"patch_embed.proj.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(MimprobeError) as err:
        create_backbone("timm:vit_tiny_patch16_224", weights=str(path))
    assert one_line(err).startswith(f"timm:vit_tiny_patch16_224: {path} did not load as this model's weights")


@pytest.fixture
def offline(monkeypatch):
    """Point the CIFAR-10 download at a port nothing listens on: a machine without network."""
    url = "http://127.0.0.1:9/cifar-10-python.tar.gz"
    monkeypatch.setitem(CIFAR_ARCHIVES, "cifar10", CIFAR_ARCHIVES["cifar10"] | {"url": url})
    return url


def test_an_offline_download_is_one_line_naming_the_url_and_the_fix(tmp_path, offline):
    with pytest.raises(DataError) as err:
        fetch_cifar_archive("cifar10", tmp_path / "resources", None, True)
    message = one_line(err)
    assert message.startswith(f"could not download {offline} (")
    assert "download it on another machine and set datasets.<name>.archive" in message
    assert list((tmp_path / "resources").iterdir()) == []  # nothing half-written


def test_the_cli_prints_the_offline_download_as_one_line(tmp_path, offline, capsys):
    dataset = '{"kind": "cifar10", "archive": null, "verify_md5": true}'
    code = main(["prepare-shards", "--dataset", dataset, "--out-dir", str(tmp_path / "shards"),
                 "--resources", str(tmp_path / "resources"), "--seed", "0"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"mimprobe prepare-shards: error: could not download {offline}")


# ---- 6. the pixels baseline has one block -------------------------------------------------------

def pixels_config(**features) -> dict:
    return {"datasets": {"digits": {"kind": "digits"}},
            "backbones": {"px": {"model": "pixels", "features": features}}}


@pytest.mark.parametrize("blocks", [[5], [1], [0, 1], [-2]])
def test_pixels_blocks_other_than_its_one_block_are_refused(blocks):
    with pytest.raises(ConfigError) as err:
        validate_config(pixels_config(blocks=blocks))
    message = one_line(err)
    assert message.startswith(f"config key backbones.px.features.blocks: {blocks!r}")
    assert "use indices in -1..0 or all" in message


@pytest.mark.parametrize("blocks", [[0], [-1], "all"])
def test_pixels_own_block_is_accepted(blocks):
    assert validate_config(pixels_config(blocks=blocks))["backbones"]["px"]["features"]["blocks"] == blocks


def test_an_empty_block_list_is_refused():
    with pytest.raises(ConfigError, match=r"config key backbones\.px\.features\.blocks: \[\] should be non-empty"):
        validate_config(pixels_config(blocks=[]))


def test_top_level_blocks_do_not_apply_to_pixels():
    config = pixels_config()
    config["features"] = {"blocks": [5, 7]}
    assert validate_config(config)["features"]["blocks"] == [5, 7]


# ---- names, quoting, verified stores, failures and reruns through the real workflow ----------------

def pixels_only(**overrides) -> dict:
    """Pixels on 128 + 32 digits in shards of 32, one shard per job, kNN and linear probes."""
    config = tiny_config(datasets={"digits": {"kind": "digits", "shard_size": 32, "limit": {"train": 128, "test": 32}}},
                         backbones={"pixels": {"model": "pixels", "batch_size": 8}})
    config["features"] |= {"chunk_rows": 8, "shards_per_job": 1}
    return config | overrides


@pytest.mark.slow
@pytest.mark.parametrize("section, name", [
    ("backbones", "a`touch MARKER`"), ("datasets", "d;touch MARKER;e"), ("backbones", "my pixels"),
    ("datasets", "../../../ESCAPED"), ("backbones", ".hidden"), ("datasets", "$(touch MARKER)"),
])
def test_names_that_are_shell_code_or_paths_are_refused_before_any_job(tmp_path, section, name):
    config = pixels_only()
    entry = next(iter(config[section].values()))
    config[section] = {name: entry}
    result = run_snakemake(tmp_path, config, check=False)
    text = result.stdout + result.stderr
    assert result.returncode != 0 and f"config key {section}.{name}: use letters, digits" in text
    assert not (tmp_path / "MARKER").exists() and not list(tmp_path.parent.rglob("ESCAPED"))
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


@pytest.mark.slow
def test_paths_with_spaces_and_shell_characters_are_quoted(tmp_path):
    """A user's archive at a path full of shell syntax runs like any other, and runs nothing."""
    folder = tmp_path / "my data; touch MARKER $(touch MARKER2) `touch MARKER3`"
    folder.mkdir()
    archive = folder / "cifar 100 'subset'.tar.gz"
    write_cifar100_archive(archive, synthetic_cifar100(train=200, test=100))
    config = pixels_only()
    config["datasets"] = {"mine": {"kind": "cifar100", "archive": str(archive), "verify_md5": False,
                                   "shard_size": 100}}
    run_snakemake(tmp_path, config)
    assert not list(tmp_path.rglob("MARKER*"))
    table = pd.read_csv(tmp_path / "results/report/metrics.csv")
    assert set(table.dataset) == {"mine"} and (table[table.split == "test"].metric == "top1").any()


@pytest.mark.slow
def test_a_flipped_byte_in_a_verified_store_stops_the_probe_naming_the_fix(tmp_path):
    config = pixels_only()
    run_snakemake(tmp_path, config, "results/embeddings/pixels/digits.ok.json")
    chunk = tmp_path / "results/embeddings/pixels/digits.zarr/train/flat/b000/c/9/0"  # rows 72:80, shard train-0002
    data = bytearray(chunk.read_bytes())
    data[101] ^= 0x01  # an fp16 mantissa bit: the value stays finite
    chunk.write_bytes(bytes(data))
    failed = run_snakemake(tmp_path, config, check=False)
    assert failed.returncode != 0
    log = (tmp_path / "logs/probe_knn/pixels/digits.log").read_text()
    assert "train/flat/b000: rows 64:96 changed since check_store verified them" in log
    fix = "Delete results/embeddings/pixels/digits.chunks/lane-002.json and results/embeddings/pixels/digits.ok.json"
    assert fix in log
    (tmp_path / "results/embeddings/pixels/digits.chunks/lane-002.json").unlink()
    (tmp_path / "results/embeddings/pixels/digits.ok.json").unlink()
    run_snakemake(tmp_path, config)
    root = zarr.open_group(str(tmp_path / "results/embeddings/pixels/digits.zarr"), mode="r")
    assert root["train/flat/b000"].shape == (128, 3072) and (tmp_path / "results/report/metrics.csv").is_file()


@pytest.mark.slow
def test_a_failed_probe_is_never_followed_by_a_stale_success(tmp_path):
    """Delete a store chunk and change a kNN parameter: the probe fails; a plain rerun fails the same way
    (never "Nothing to be done" over the old report); the printed fix then brings the new k values."""
    config = pixels_only()
    run_snakemake(tmp_path, config)
    (tmp_path / "results/embeddings/pixels/digits.zarr/train/flat/b000/c/9/0").unlink()
    config["probes"]["knn"]["k"] = [3, 7]
    for _ in range(2):  # the run, then the plain rerun
        result = run_snakemake(tmp_path, config, check=False)
        assert result.returncode != 0 and "Nothing to be done" not in result.stdout + result.stderr
        log = (tmp_path / "logs/probe_knn/pixels/digits.log").read_text()
        assert "store chunk file missing" in log
    flag = "results/embeddings/pixels/digits.chunks/lane-002.json"
    assert f"Delete {flag} and results/embeddings/pixels/digits.ok.json" in log
    (tmp_path / flag).unlink()
    (tmp_path / "results/embeddings/pixels/digits.ok.json").unlink()
    run_snakemake(tmp_path, config)
    table = pd.read_csv(tmp_path / "results/report/metrics.csv")
    assert set(table[(table.probe == "knn") & (table.split == "val")].setting) == {"k=3", "k=7"}


@pytest.mark.slow
def test_killing_only_snakemake_is_recovered_by_unlock_then_rerun_incomplete(tmp_path):
    """The login session drops Snakemake but not its job: the README's recovery (`--unlock`, then
    `--rerun-incomplete`, which Snakemake itself asks for) gives a complete, verified store."""
    config = pixels_only()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    pause = tmp_path / "pause"
    pause.mkdir()
    command = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--configfile",
               str(tmp_path / "config.yaml"), "--cores", "1"]
    process = subprocess.Popen(command, cwd=tmp_path, env=workflow_env() | {PAUSE_ENV: str(pause)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while not list(pause.glob("*.paused")) and time.monotonic() < deadline:
        time.sleep(0.1)
    [paused] = pause.glob("*.paused")
    os.kill(process.pid, signal.SIGKILL)  # Snakemake alone; its job lives on
    process.wait()
    (pause / "release").touch()
    job = int(paused.stem)
    while Path(f"/proc/{job}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    # Follow what Snakemake prints, as the README says: `--unlock` for the dead run's lock, and
    # `--rerun-incomplete` for the outputs of the job that was running when it died.
    flags, followed = [], []
    for _ in range(4):
        result = run_snakemake(tmp_path, config, *flags, check=False)
        if result.returncode == 0:
            break
        text = result.stdout + result.stderr
        if "Directory cannot be locked" in text and "--unlock" in text:
            run_snakemake(tmp_path, config, "--unlock")
            followed.append("--unlock")
        elif "--rerun-incomplete" in text and "--rerun-incomplete" not in flags:
            flags.append("--rerun-incomplete")
            followed.append("--rerun-incomplete")
        else:
            raise AssertionError(text[-3000:])
    assert result.returncode == 0 and "--rerun-incomplete" in followed
    summary = yaml.safe_load((tmp_path / "results/embeddings/pixels/digits.ok.json").read_text())
    assert summary["chunks"] == 5 and (tmp_path / "results/report/metrics.csv").is_file()
