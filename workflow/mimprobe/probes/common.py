"""What every probe family shares: loading a block's splits, scoring test once, writing results.

A family module fills its settings with `config.probe_params` (the schema's defaults) and has either
- `fit(splits, params, seed, device, progress) -> ProbeOutcome | list[ProbeOutcome]`, run on every
  stored (block, pooling) whose pooling is in the module's `POOLINGS` (default: the pooled
  vectors), or
- `fit_store(load, keys, params, seed, device, progress) -> list[ProbeOutcome]` for families that
  need several arrays at once (the linear grid): `load(block, pooling)` returns that array's
  `Splits`, `keys` lists the stored (block, pooling) pairs, and every outcome names its own `block`
  and `pooling`.
`device` is the torch device to compute on (the CPU by default) and `progress` a `Progress` for log
lines. Either way hyper-parameters are selected on `splits.val` only; test labels are read
afterwards, here, to score the returned test probabilities once.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import layout
from ..atomic import atomic_path, write_json
from ..devices import hold_device
from ..layout import read_meta
from ..metrics import cluster_metrics_with_ci, metrics_over_draws, metrics_with_ci, per_class_accuracy
from ..provenance import provenance
from ..store import feature_keys, open_store, read_features, read_labels
from .progress import Progress

POOLED = ("cls", "mean", "flat")  # one vector per image; "tokens" is for the attentive probe
STATISTICS_BLOCK_ELEMENTS = 1 << 25  # feature values standardizer converts to float64 at once: 256 MB


@dataclass
class Split:
    x: np.ndarray
    y: np.ndarray


class RowView:
    """Some rows of a large array without copying them: batches are gathered when indexed.

    Token grids are the largest arrays in a study (ViT-L on CIFAR-100: 20 GB as fp16); the train and
    validation parts of one share the stored array instead of each holding a copy.
    """

    def __init__(self, base: np.ndarray, rows: np.ndarray):
        self.base, self.rows = base, np.asarray(rows, dtype=np.int64)
        self.shape, self.dtype = (len(self.rows), *base.shape[1:]), base.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> np.ndarray:
        return self.base[self.rows[index]]

    def reshape(self, count: int, *rest) -> RowView:
        assert count == len(self), "RowView reshapes the feature axes only"
        return RowView(self.base.reshape(len(self.base), *rest), self.rows)


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
    block: int | None = None  # set by fit_store families; fit families inherit the loop's block
    pooling: str | None = None
    test_clusters: np.ndarray | None = None  # k-means: cluster ids, scored as acc/nmi/ami/ari
    test_draws: list[np.ndarray] | None = None  # few-shot: test probabilities of each seeded draw
    extra: dict = field(default_factory=dict)  # more fields for the result record


def load_splits(root, meta: dict, block: int, pooling: str, dtype=np.float32, verified: dict | None = None) -> Splits:
    """Train (minus validation), validation, test and all of train for one stored array; with
    `verified` (check_store's summary) every array read is checked against its region checksums."""
    x_train = read_features(root, "train", pooling, block, dtype=dtype, verified=verified)
    y_train = read_labels(root, "train", verified)
    x_test = read_features(root, "test", pooling, block, dtype=dtype, verified=verified)
    y_test = read_labels(root, "test", verified)
    val_rows = np.asarray(meta["validation"]["train_positions"], dtype=np.int64)
    keep = np.ones(len(y_train), dtype=bool)
    keep[val_rows] = False
    rows_of = RowView if pooling == "tokens" else lambda x, rows: x[rows]
    return Splits(
        train=Split(rows_of(x_train, np.flatnonzero(keep)), y_train[keep]),
        val=Split(rows_of(x_train, val_rows), y_train[val_rows]),
        test=Split(x_test, y_test),
        train_all=Split(x_train, y_train),
        num_classes=len(meta["class_names"]),
    )


def _outcomes(module, root, meta, params: dict, seed: int, verified: dict | None, device: torch.device,
              family: str, timing: dict) -> list[ProbeOutcome]:
    """Every outcome of a family; `timing` gets the seconds spent reading arrays (`load_s`)."""
    def load(block, pooling, dtype=np.float32):
        start = time.perf_counter()
        splits = load_splits(root, meta, block, pooling, dtype, verified)
        timing["load_s"] += time.perf_counter() - start
        return splits

    keys = feature_keys(root)
    if hasattr(module, "fit_store"):
        torch.manual_seed(seed)
        return module.fit_store(load, keys, params, seed, device, Progress(family))
    keys = [(block, pooling) for block, pooling in keys if pooling in getattr(module, "POOLINGS", POOLED)]
    progress, outcomes = Progress(family, units=len(keys)), []
    for block, pooling in keys:
        progress.start(f"block {block} {pooling}")
        torch.manual_seed(seed)
        splits = load(block, pooling, getattr(module, "DTYPE", np.float32))
        fitted = module.fit(splits, params, seed, device, progress)
        progress.finish_unit()
        for outcome in fitted if isinstance(fitted, list) else [fitted]:
            outcome.block, outcome.pooling = block, outcome.pooling or pooling
            outcomes.append(outcome)
    return outcomes


def keep_freed_memory() -> None:
    """Make glibc keep freed memory for the next tensor instead of returning it to the kernel.

    glibc serves allocations above 32 MB with fresh mmapped pages and unmaps them on free, so every
    large temporary (a block of similarities, a padded product) is page-faulted anew: measured here,
    up to a quarter of a kNN or float32 L-BFGS run. A probe job is one process whose peak memory is
    reached early anyway, so it keeps its heap. Elsewhere than glibc this does nothing."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max = -1, -4
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 1 << 30)


@contextmanager
def cpu_threads(threads: int):
    """torch, BLAS and OpenMP pools limited to `threads` (0: leave them as they are)."""
    if threads <= 0:
        yield
        return
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        torch.set_num_threads(previous)


def run_family(family: str, module, store_path, meta_path, out_json, params: dict, seed: int,
               resamples: int, context: dict, verified: dict | None = None, device: str = "auto",
               threads: int = 0) -> dict:
    """Run a family on the stored features and write its JSON, predictions and heads.

    `verified` is check_store's summary: every array read is checked against it. `device` is
    `probes.device` (auto, cpu, cuda, cuda:N; a GPU is held for the whole fit), `threads` the CPU
    threads to use (0: torch's default); the results do not depend on `threads`."""
    meta = read_meta(meta_path)
    root = open_store(store_path)
    out_json = Path(out_json)
    labels = read_labels(root, "test", verified)
    block_names = dict(zip(root.attrs["blocks"], root.attrs["block_names"]))
    timing = {"load_s": 0.0, "fit_s": 0.0, "bootstrap_s": 0.0}
    keep_freed_memory()
    with cpu_threads(threads):
        with hold_device(device, key="probes.device") as compute:  # let go before scoring
            start = time.perf_counter()
            outcomes = _outcomes(module, root, meta, params, seed, verified, compute, family, timing)
            timing["fit_s"] = time.perf_counter() - start - timing["load_s"]
        start = time.perf_counter()
        results, predictions, heads = _score(outcomes, labels, meta, block_names, resamples, seed)
        timing["bootstrap_s"] = time.perf_counter() - start
        used_threads = torch.get_num_threads()
    with atomic_path(layout.predictions_path(out_json)) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, labels=labels, **predictions)
    with atomic_path(layout.heads_path(out_json)) as tmp:
        torch.save(heads, tmp)
    payload = context | {"probe": family, "model": root.attrs["model"], "block_count": root.attrs["block_count"],
                         "params": params, "seed": seed,
                         "class_names": meta["class_names"], "results": results,
                         "timing": {k: round(v, 3) for k, v in timing.items()},
                         "compute": {"device": str(compute), "threads": used_threads},
                         "provenance": provenance()}
    write_json(out_json, payload)
    return payload


def _score(outcomes, labels, meta, block_names, resamples: int, seed: int):
    """Test metrics (with bootstrap CIs) of every outcome: the only place test labels are read."""
    results, predictions, heads = [], {}, {}
    coarse = meta.get("fine_to_coarse")
    for outcome in outcomes:
        if outcome.test_clusters is not None:
            test, outcome.test_probs = cluster_metrics_with_ci(labels, outcome.test_clusters, resamples, seed,
                                                                 len(meta["class_names"]))
        elif outcome.test_draws is not None:
            test = metrics_over_draws(labels, outcome.test_draws, coarse, resamples, seed)
        else:
            test = metrics_with_ci(labels, outcome.test_probs, coarse, resamples, seed)
        results.append({
            "block": int(outcome.block),
            "block_name": block_names.get(outcome.block, str(outcome.block)),
            "pooling": outcome.pooling,
            "setting": outcome.setting,
            "chosen": outcome.chosen,
            "validation": outcome.validation,
            "test": test,
            "per_class_accuracy": per_class_accuracy(labels, outcome.test_probs),
            "history": outcome.history,
        } | outcome.extra)
        predictions[layout.prediction_key(outcome.block, outcome.pooling, outcome.setting)] = \
            outcome.test_probs.astype(np.float32)
        if outcome.head is not None:
            heads[layout.record_key(outcome.block, outcome.pooling, outcome.setting)] = _on_cpu(outcome.head)
    return results, predictions, heads


def _on_cpu(value):
    """A head with every tensor moved to the CPU (heads fitted on a GPU load anywhere)."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_on_cpu(v) for v in value]
    return value


def standardizer(x: np.ndarray, chunk_elements: int = STATISTICS_BLOCK_ELEMENTS):
    """Train mean and (unbiased) std per feature of `x` flattened to (N, D), as float32 tensors.

    Accumulated in float64 a block of rows at a time, shifted by the first row (no cancellation),
    so a large fp16 token grid never gets a full-size float copy. Std is floored so constant
    features stay finite.
    """
    x = x.reshape(len(x), -1)
    shift = x[0].astype(np.float64)
    total, squares = np.zeros_like(shift), np.zeros_like(shift)
    rows = max(1, chunk_elements // max(x.shape[1], 1))
    for start in range(0, len(x), rows):
        block = x[start:start + rows].astype(np.float64) - shift
        total += block.sum(0)
        squares += np.square(block).sum(0)
    count = len(x)
    mean = total / count
    variance = np.maximum(squares - count * mean**2, 0) / max(count - 1, 1)
    return (torch.as_tensor(mean + shift, dtype=torch.float32),
            torch.as_tensor(np.sqrt(variance), dtype=torch.float32).clamp_min(1e-6))
