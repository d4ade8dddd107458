"""Bring your own images: a class-per-folder dataset, end to end, and its errors before any job runs."""

import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import run_snakemake, tiny_config
from PIL import Image
from study_run import IMAGE_FOLDER_CLASSES, finished_study, write_huge_png, write_image_folder

from mimprobe.datasets.imagefolder import check_image_folder, count_images, read_image_folder
from mimprobe.errors import DataError


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "pets", train=6, test=2)


def test_mixed_sizes_and_modes_become_rgb_squares_with_sorted_class_names(folder):
    data = read_image_folder(folder, 24)
    assert data.class_names == sorted(IMAGE_FOLDER_CLASSES)
    assert data.train.images.shape == (18, 24, 24, 3) and data.train.images.dtype == np.uint8
    assert data.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    # every class keeps its colour through PNG/JPEG, RGBA/L/P and the resize: the dominant channel
    dominant = data.train.images.reshape(18, -1, 3).mean(1).argmax(1)
    grey = np.array([Image.open(p).mode == "L" for p in sorted((folder / "train").glob("*/*"))])
    assert (dominant[~grey] == data.train.labels[~grey]).all()
    assert count_images(folder) == {"train": 18, "test": 6}


def test_every_problem_is_reported_by_name(folder):
    (folder / "test" / "horse").mkdir()
    Image.new("RGB", (8, 8)).save(folder / "test" / "horse" / "h.png")
    (folder / "train" / "empty").mkdir()
    with pytest.raises(DataError) as err:
        check_image_folder(folder)
    message = str(err.value)
    assert "class 'horse' is in test/ but not in train/" in message
    assert "train/empty/ holds no images" in message
    assert "Fix these, then rerun." in message


def test_unreadable_and_oversized_images_are_named(folder):
    (folder / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    write_huge_png(folder / "test" / "dog" / "bomb.png")
    with pytest.raises(DataError) as err:
        check_image_folder(folder)
    message = str(err.value)
    assert "2 unreadable image(s)" in message
    assert "train/cat/broken.jpg" in message and "test/dog/bomb.png" in message


def test_a_missing_split_folder_says_how_to_lay_it_out(folder):
    shutil.rmtree(folder / "test")
    with pytest.raises(DataError, match=r"no test/ sub-folder.*root/train/<class>/<image>"):
        count_images(folder)


@pytest.mark.slow
def test_a_broken_folder_stops_the_workflow_before_any_job(tmp_path):
    root = write_image_folder(tmp_path / "pets", train=3, test=1)
    (root / "train" / "dog" / "bad.png").write_text("garbage")
    (root / "test" / "horse").mkdir()
    config = tiny_config(datasets={"pets": {"kind": "imagefolder", "root": str(root)}},
                         backbones={"pixels": {"model": "pixels"}})
    result = run_snakemake(tmp_path, config, "-n", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Dataset pets (config key datasets.pets.root)" in output
    assert "class 'horse' is in test/ but not in train/" in output and "test/horse/ holds no images" in output
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_an_image_folder_runs_end_to_end(tmp_path_factory):
    study = finished_study(tmp_path_factory)
    table = pd.read_csv(study / "results/report/metrics.csv")
    pets = table[(table.dataset == "pets") & (table.split == "test") & (table.metric == "top1")]
    assert set(pets.backbone) == {"pixels", "tiny_vit"}
    # the classes differ by colour (lost only in the greyscale images), so raw pixels mostly separate them
    assert pets[pets.backbone == "pixels"].value.max() >= 0.75
    assert "pets" in (study / "results/report/metrics.md").read_text()
