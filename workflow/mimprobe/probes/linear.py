"""Linear probe grid (DINOv2 `linear.py`, MIM-Refiner): every head trained in one pass over the cache.

A head is BatchNorm1d(affine=False) + Linear over a feature set. Feature sets:
- every stored (block, pooling) alone (records `lr=…`: the accuracy-per-block curves), and
- the grid {last block, last 4 blocks} × {cls, cls+mean}: the CLS tokens of the last n stored blocks
  concatenated, plus for cls+mean the mean-pooled patch tokens of the last block (DINOv2's
  `avgpool`). Records `blocks=n,lr=…` with pooling `cls+mean`, `cls4`, `cls4+mean`, block = last
  block (last block + cls alone is the per-block record).
Each set is trained at every learning rate. BatchNorm of a concatenation is the concatenation of
per-array BatchNorms, so each stored array is normalised once per batch and every head's logits are
a sum of per-array products: the grid costs one product per array and batch, whatever its size.
SGD momentum 0.9, no weight decay, linear warm-up then cosine decay, learning rates given per 256
images and scaled by batch_size / 256 (DINOv2's rule, so a larger batch keeps their meaning); products in bfloat16 where the
CPU/GPU has it (weights, BatchNorm statistics and momentum in float32). Per record the head with
the best final validation top-1 wins; no refit (train minus validation is the training set).

Head format (`.heads.pt`, key `bNNN/pooling/setting`): {norm_mean (D,), norm_var (D,), weight (C, D),
bias (C,), blocks [...], poolings [...]}; features are the arrays (blocks[i], poolings[i])
concatenated, logits = (x - norm_mean) / sqrt(norm_var + 1e-5) @ weight.T + bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .common import POOLED, ProbeOutcome

DEFAULTS = {"learning_rates": [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5],
            "epochs": 30, "batch_size": 256, "warmup_epochs": 1, "block_sets": [1, 4], "per_block": True,
            "precision": "auto"}
MOMENTUM, BN_EPS = 0.9, 1e-5


@dataclass
class FeatureSet:
    block: int  # the record's block: the last block of the set
    pooling: str  # the record's pooling label
    prefix: str  # setting prefix ("" or "blocks=n,")
    arrays: list[tuple[int, str]]


def feature_sets(keys, block_sets, per_block=True) -> list[FeatureSet]:
    sets = [FeatureSet(b, p, "", [(b, p)]) for b, p in keys if p in POOLED] if per_block else []
    cls_blocks = sorted(b for b, p in keys if p == "cls")
    for n in block_sets:
        if len(cls_blocks) < n:
            continue  # fewer stored blocks than the set needs
        last, arrays = cls_blocks[-1], [(b, "cls") for b in cls_blocks[-n:]]
        label = "cls" if n == 1 else f"cls{n}"
        if n > 1 or not per_block:
            sets.append(FeatureSet(last, label, f"blocks={n},", arrays))
        if (last, "mean") in keys:
            sets.append(FeatureSet(last, f"{label}+mean", f"blocks={n},", arrays + [(last, "mean")]))
    return sets


def cpu_has_fast_bf16() -> bool:
    """bf16 instructions (AVX512-BF16 or AMX) on this CPU; without them bf16 products are emulated."""
    cpu = torch.cpu
    return any(getattr(cpu, check, lambda: False)() for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def matmul_dtype(precision: str) -> torch.dtype:
    """Probes compute on the CPU (a GPU node's GPU is for embedding), so 'auto' asks the CPU."""
    if precision == "auto":
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[precision]


class Grid:
    """All heads: per stored array a weight block (D, heads using it × C); one bias row per head."""

    def __init__(self, dims: dict, head_arrays: list[list], num_classes: int, lrs, generator, dtype):
        self.arrays, self.classes, self.dtype = list(dims), num_classes, dtype
        self.lrs = torch.tensor(lrs, dtype=torch.float32)
        self.users = {a: torch.tensor([h for h, arrs in enumerate(head_arrays) if a in arrs]) for a in dims}
        self.weight = {a: torch.randn(dims[a], len(self.users[a]) * num_classes, generator=generator) * 0.01
                       for a in dims}
        self.bias = torch.zeros(len(head_arrays), num_classes)
        self.velocity = {a: torch.zeros_like(w) for a, w in self.weight.items()} | {"bias": torch.zeros_like(self.bias)}
        self.mean = {a: torch.zeros(d) for a, d in dims.items()}
        self.var = {a: torch.ones(d) for a, d in dims.items()}

    def normalise(self, batch: dict, training: bool) -> dict:
        return {a: F.batch_norm(batch[a].float(), self.mean[a], self.var[a], training=training,
                                momentum=0.1, eps=BN_EPS).to(self.dtype) for a in self.arrays}

    def logits(self, z: dict) -> torch.Tensor:
        rows = next(iter(z.values())).shape[0]
        out = self.bias[None].repeat(rows, 1, 1)
        for a in self.arrays:
            part = (z[a] @ self.weight[a].to(self.dtype)).float().view(rows, -1, self.classes)
            out.index_add_(1, self.users[a], part)
        return out  # (rows, heads, classes)

    def _columns(self, per_head: torch.Tensor, a) -> torch.Tensor:
        """The heads using array `a` (all of them needs no copy)."""
        return per_head if len(self.users[a]) == per_head.shape[1] else per_head[:, self.users[a]]

    def step(self, z: dict, y: torch.Tensor, scale: float):
        """One SGD step of every head; returns per-head loss and correct count on this batch."""
        logits = self.logits(z)
        log_probs = logits.log_softmax(-1)
        rows = torch.arange(len(y))
        true_class = log_probs[rows, :, y]
        loss, correct = -true_class.mean(0), (true_class >= log_probs.amax(-1)).sum(0)
        grad = log_probs.exp_()
        grad[rows, :, y] -= 1
        grad /= len(y)
        low = grad.to(self.dtype)
        grads = {a: z[a].T @ self._columns(low, a).reshape(len(y), -1) for a in self.arrays} | {"bias": grad.sum(0)}
        for name, g in grads.items():
            param = self.bias if name == "bias" else self.weight[name]
            lr = self.lrs[:, None] if name == "bias" else self.lrs[self.users[name]].repeat_interleave(self.classes)
            self.velocity[name].mul_(MOMENTUM).add_(g.float())
            param.sub_(self.velocity[name] * (lr * scale))
        return loss, correct

    def evaluate(self, x: dict, y: torch.Tensor | None = None, chunk: int = 4096, heads=None):
        """Logits of `heads` (all by default) in chunks; with labels, (loss, top-1) per head instead."""
        n = len(next(iter(x.values())))
        outs, losses, correct = [], 0.0, 0
        for start in range(0, n, chunk):
            logits = self.logits(self.normalise({a: v[start:start + chunk] for a, v in x.items()}, False))
            if y is None:
                outs.append(logits if heads is None else logits[:, heads])
                continue
            target = y[start:start + chunk, None].expand(-1, logits.shape[1])
            losses = losses + F.cross_entropy(logits.transpose(1, 2), target, reduction="none").sum(0)
            correct = correct + (logits.argmax(-1) == target).sum(0)
        return torch.cat(outs) if y is None else (losses / n, correct / n)

    def head_state(self, head: int, arrays: list) -> dict:
        def columns(a):
            position = int((self.users[a] == head).nonzero())
            return self.weight[a][:, position * self.classes:(position + 1) * self.classes]

        weight = torch.cat([columns(a) for a in arrays]).T.contiguous()
        return {"norm_mean": torch.cat([self.mean[a] for a in arrays]), "norm_var": torch.cat([self.var[a] for a in arrays]),
                "weight": weight, "bias": self.bias[head].clone(), "blocks": [b for b, _ in arrays],
                "poolings": [p for _, p in arrays]}


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def fit_store(load, keys, params: dict, seed: int) -> list[ProbeOutcome]:
    params = DEFAULTS | params
    lrs, batch_size = params["learning_rates"], params["batch_size"]
    lr_scale = batch_size / 256
    sets = feature_sets(keys, params["block_sets"], params["per_block"])
    needed = sorted({a for s in sets for a in s.arrays})
    if not sets:
        return []
    x = {"train": {}, "val": {}, "test": {}}
    for a in needed:  # keep the cache in fp16 (as stored): half the memory of float32
        splits = load(*a)
        for name in x:
            x[name][a] = torch.from_numpy(getattr(splits, name).x).half()
    y, y_val = torch.from_numpy(splits.train.y).long(), torch.from_numpy(splits.val.y).long()
    head_arrays = [s.arrays for s in sets for _ in lrs]
    generator = torch.Generator().manual_seed(seed)
    grid = Grid({a: x["train"][a].shape[1] for a in needed}, head_arrays, splits.num_classes,
                [lr * lr_scale for lr in lrs] * len(sets), generator, matmul_dtype(params["precision"]))
    n = len(y)
    steps_per_epoch = sum(1 for s in range(0, n, batch_size) if min(batch_size, n - s) > 1)
    total, warmup = params["epochs"] * steps_per_epoch, params["warmup_epochs"] * steps_per_epoch
    history, step = [], 0
    # diverging heads (the largest rates) drive softmax into denormal floats, which x86 CPUs
    # process a hundred times slower: flush them to zero while training
    flushing = torch.set_flush_denormal(True)
    for epoch in range(params["epochs"]):
        order = torch.randperm(n, generator=generator)
        loss_sum, correct = torch.zeros(len(head_arrays)), torch.zeros(len(head_arrays))
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            if len(rows) < 2:
                continue  # BatchNorm needs two samples
            z = grid.normalise({a: v[rows] for a, v in x["train"].items()}, True)
            loss, hits = grid.step(z, y[rows], _schedule(step, total, min(warmup, total - 1)))
            loss_sum += loss * len(rows)
            correct += hits
            step += 1
        val_loss, val_top1 = grid.evaluate(x["val"], y_val)
        history.append({"epoch": epoch + 1, "train_loss": (loss_sum / n).tolist(),
                        "train_top1": (correct / n).tolist(), "val_loss": val_loss.tolist(),
                        "val_top1": val_top1.tolist()})
    if flushing:
        torch.set_flush_denormal(False)
    chosen, validations = [], []
    for i, fs in enumerate(sets):
        heads = range(i * len(lrs), (i + 1) * len(lrs))
        validations.append({f"{fs.prefix}lr={lr:g}": float(val_top1[h]) for lr, h in zip(lrs, heads)})
        chosen.append(heads[int(np.argmax(list(validations[-1].values())))])
    test_logits = grid.evaluate(x["test"], heads=torch.tensor(chosen))  # the chosen heads only, once
    outcomes = []
    for i, (fs, validation, best) in enumerate(zip(sets, validations, chosen)):
        lr = lrs[best - i * len(lrs)]
        curve = [{key: (h[key][best] if key != "epoch" else h[key]) for key in h} for h in history]
        outcomes.append(ProbeOutcome(
            f"{fs.prefix}lr={lr:g}", {"learning_rate": lr, "epochs": params["epochs"]}, validation,
            test_logits[:, i].softmax(-1).numpy(), grid.head_state(best, fs.arrays), curve, fs.block,
            fs.pooling, extra={"feature_set": {"blocks": [b for b, _ in fs.arrays],
                                               "poolings": [p for _, p in fs.arrays]},
                               "precision": str(grid.dtype).replace("torch.", "")}))
    return outcomes


def fit(splits, params: dict, seed: int) -> ProbeOutcome:
    """The learning-rate sweep on one feature array (what `fit_store` does per stored array)."""
    torch.manual_seed(seed)
    return fit_store(lambda block, pooling: splits, [(0, "cls")], params | {"block_sets": []}, seed)[0]
