"""What every probe family shares: loading a block's splits, scoring test once, writing results.

A family is a function `fit(splits, params, seed) -> ProbeOutcome` that selects its
hyper-parameters on `splits.val` only and returns probabilities for `splits.test`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path, write_json
from ..metrics import metrics_with_ci, per_class_accuracy
from ..shards import read_meta
from ..store import feature_keys, open_store, read_features


POOLED = ("cls", "mean", "flat")  # one vector per image; "tokens" is for the attentive probe


@dataclass
class Split:
    x: np.ndarray
    y: np.ndarray


@dataclass
class Splits:
    train: Split  # train minus validation: what heads are fitted on during selection
    val: Split
    test: Split
    train_all: Split  # all of train: for refitting once the hyper-parameters are chosen
    num_classes: int


@dataclass
class ProbeOutcome:
    setting: str
    chosen: dict
    validation: dict[str, float]  # candidate setting -> validation top-1
    test_probs: np.ndarray
    head: dict | None = None
    history: list[dict] = field(default_factory=list)


def load_splits(root, meta: dict, block: int, pooling: str) -> Splits:
    x_train = read_features(root, "train", pooling, block)
    y_train = np.asarray(root["train/labels"][:])
    x_test = read_features(root, "test", pooling, block)
    y_test = np.asarray(root["test/labels"][:])
    val_rows = np.asarray(meta["validation"]["train_positions"], dtype=np.int64)
    keep = np.ones(len(y_train), dtype=bool)
    keep[val_rows] = False
    return Splits(
        train=Split(x_train[keep], y_train[keep]),
        val=Split(x_train[val_rows], y_train[val_rows]),
        test=Split(x_test, y_test),
        train_all=Split(x_train, y_train),
        num_classes=len(meta["class_names"]),
    )


def run_family(family: str, fit, store_path, meta_path, out_json, params: dict, seed: int,
               resamples: int, context: dict, poolings=None) -> dict:
    """Run `fit` on every stored (block, pooling) and write the family's JSON, predictions, heads."""
    meta = read_meta(meta_path)
    root = open_store(store_path)
    out_json = Path(out_json)
    results, predictions, heads = [], {}, {}
    allowed = poolings or POOLED
    for block, pooling in feature_keys(root):
        if pooling not in allowed:
            continue
        splits = load_splits(root, meta, block, pooling)
        torch.manual_seed(seed)
        outcome = fit(splits, params, seed)
        key = f"b{block:03d}/{pooling}"
        results.append({
            "block": block,
            "block_name": root.attrs["block_names"][root.attrs["blocks"].index(block)],
            "pooling": pooling,
            "setting": outcome.setting,
            "chosen": outcome.chosen,
            "validation": outcome.validation,
            "test": metrics_with_ci(splits.test.y, outcome.test_probs, meta.get("fine_to_coarse"),
                                    resamples, seed),
            "per_class_accuracy": per_class_accuracy(splits.test.y, outcome.test_probs),
            "history": outcome.history,
        })
        predictions[key] = outcome.test_probs.astype(np.float32)
        if outcome.head is not None:
            heads[key] = outcome.head
    with atomic_path(out_json.with_suffix(".predictions.npz")) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, labels=np.asarray(root["test/labels"][:]),
                                **{k.replace("/", "__"): v for k, v in predictions.items()})
    with atomic_path(out_json.with_suffix(".heads.pt")) as tmp:
        torch.save(heads, tmp)
    payload = context | {"probe": family, "params": params, "seed": seed,
                         "class_names": meta["class_names"], "results": results}
    write_json(out_json, payload)
    return payload
