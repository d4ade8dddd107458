"""A new backbone source and a new dataset kind are each one module plus one registry line: the config
checker, the planner, the sharder and the factory all ask the registries."""

from __future__ import annotations

import importlib.util
import textwrap

import numpy as np
import pytest
import torch

from mimprobe import backbones, datasets
from mimprobe.backbones import create_backbone
from mimprobe.config import validate_config
from mimprobe.errors import ConfigError
from mimprobe.plan import image_shape, shard_names, split_sizes
from mimprobe.shardfile import read_shard
from mimprobe.shards import prepare_shards

TOY_SOURCE = '''
    """`toy:<width>`: a three-block backbone whose features are the image's mean colour, repeated."""
    import torch

    from mimprobe.backbones.base import Backbone
    from mimprobe.backbones.source import Source
    from mimprobe.errors import ConfigError


    class Toy(Backbone):
        block_names = ["first", "second", "third"]
        poolings = ("mean",)
        input_size = 32

        def __init__(self, width):
            super().__init__()
            self.width = width

        def _block_outputs(self, x, indices):
            colour = x.mean(dim=(2, 3))
            return {i: {"mean": colour.repeat(1, self.width) * (i + 1)} for i in indices}


    def check(name):
        if not name.isdigit():
            raise ConfigError("toy backbones are named by their width, e.g. toy:4")


    SOURCE = Source(lambda name, weights, final_norm, seed: Toy(int(name)), check, lambda name: Toy(int(name)))
'''

TOY_KIND = '''
    """`toy`: solid squares of one colour per class, as many as `per_class` asks."""
    import numpy as np

    from mimprobe.datasets.base import Kind, RawDataset, SplitArrays

    COLOURS = np.array([[255, 0, 0], [0, 255, 0]], dtype=np.uint8)


    def split(count):
        labels = np.arange(count) % len(COLOURS)
        return SplitArrays(np.broadcast_to(COLOURS[labels, None, None], (count, 8, 8, 3)).copy(), labels)


    def load(entry):
        return RawDataset(split(2 * entry["per_class"]), split(len(COLOURS)), ["red", "green"])


    KIND = Kind(load=load, sizes=lambda entry: {"train": 2 * entry["per_class"], "test": 2},
                schema={"per_class": {"type": "integer", "minimum": 1, "default": 3}},
                image_side=lambda entry: 8)
'''


def module_from(tmp_path, name: str, source: str):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_backbone_source_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
    toy = module_from(tmp_path, "toy_source", TOY_SOURCE)
    monkeypatch.setitem(backbones.SOURCES, "toy", toy.SOURCE)  # the registry line

    backbone = create_backbone("toy:4")
    images = torch.full((2, 32, 32, 3), 128, dtype=torch.uint8)
    features = backbone.forward_blocks(backbone.preprocess(images), [0, 2], ["mean"])
    assert features[(2, "mean")].shape == (2, 12) and torch.allclose(features[(2, "mean")], 3 * features[(0, "mean")])
    config = {"datasets": {"d": {"kind": "digits"}}, "backbones": {"t": {"model": "toy:4"}},
              "features": {"blocks": [-1]}}
    assert validate_config(config)["backbones"]["t"]["model"] == "toy:4"
    with pytest.raises(ConfigError, match="backbones.t.model: toy:wide: toy backbones are named by their width"):
        validate_config(config | {"backbones": {"t": {"model": "toy:wide"}}})
    with pytest.raises(ConfigError, match=r"config key features.blocks: \[5\] for backbones.t \(toy:4\)"):
        validate_config(config | {"features": {"blocks": [5]}})  # its blocks are known before any job runs


def test_a_dataset_kind_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
    toy = module_from(tmp_path, "toy_kind", TOY_KIND)
    monkeypatch.setitem(datasets.KINDS, "toy", toy.KIND)  # the registry line

    config = validate_config({"datasets": {"squares": {"kind": "toy", "per_class": 5, "shard_size": 4}},
                              "backbones": {"p": {"model": "pixels"}}})
    entry = config["datasets"]["squares"]
    assert split_sizes(entry) == {"train": 10, "test": 2} and image_shape(entry) == [8, 8, 3]
    assert shard_names(entry) == ["train-0000", "train-0001", "train-0002", "test-0000"]
    meta = prepare_shards(entry, tmp_path / "shards", seed=0, expect={"train": 10, "test": 2})
    assert meta["class_names"] == ["red", "green"] and meta["splits"]["train"]["class_counts"] == [5, 5]
    last = read_shard(tmp_path / "shards/train-0002.npz")
    assert last["images"].shape == (2, 8, 8, 3) and np.array_equal(last["index"], [8, 9])
    with pytest.raises(ConfigError, match="datasets.d.per_class: only kind toy reads it"):
        validate_config({"datasets": {"d": {"kind": "digits", "per_class": 2}},
                         "backbones": {"p": {"model": "pixels"}}})
