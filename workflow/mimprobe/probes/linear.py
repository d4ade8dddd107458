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
images and scaled by batch_size / 256 (DINOv2's rule, so a larger batch keeps their meaning);
products in bfloat16 where the CPU/GPU has it (weights, BatchNorm statistics and momentum in
float32). Each head's learning rate is folded into its gradient columns before the weight product,
so one update of all weights at once (momentum, step, bf16 copy: a few passes over flat, reused
buffers) serves every head. BatchNorm statistics are explicit per-feature means (torch's training-mode
batch_norm sums differently per thread count). Per record the head with the best final validation
top-1 wins; no refit (train minus validation is the training set). On a GPU the cached features
stay on the device when they fit in half its free memory, else batches are copied to it.

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

from ..config import probe_params
from .common import POOLED, ProbeOutcome
from .ops import matmul, matmul_dtype
from .progress import SILENT

MOMENTUM, BN_EPS, BN_MOMENTUM = 0.9, 1e-5, 0.1
CPU = torch.device("cpu")


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


class Grid:
    """All heads: per stored array a weight block (D, heads using it × C); one bias row per head.

    The weights of every array live in one flat float32 buffer (and its momentum and bf16 copy in
    two more), so an SGD step updates all heads with three elementwise passes."""

    def __init__(self, dims: dict, head_arrays: list[list], num_classes: int, lrs, generator, dtype, device):
        self.arrays, self.classes, self.dtype, self.device = list(dims), num_classes, dtype, device
        self.lrs = torch.tensor(lrs, dtype=torch.float32, device=device)
        self.users = {a: torch.tensor([h for h, arrs in enumerate(head_arrays) if a in arrs], device=device)
                      for a in dims}
        shapes = {a: (dims[a], len(self.users[a]) * num_classes) for a in dims}
        sizes = [math.prod(shape) for shape in shapes.values()]
        init = torch.cat([torch.randn(shape, generator=generator).flatten() * 0.01 for shape in shapes.values()])
        self.flat = init.to(device)
        self.velocity = torch.zeros_like(self.flat)
        exact = dtype == torch.float32
        self.flat_low = self.flat if exact else self.flat.to(dtype)
        self.flat_grad = torch.empty_like(self.flat_low)
        # a float32 copy of the gradient written into a buffer: a fresh tensor of this size would be
        # fresh pages from the kernel at every step (bf16 -> float32 then costs 5x the copy itself)
        self.flat_grad32 = self.flat_grad if exact else torch.empty_like(self.flat)
        def views(flat):
            return {a: part.view(shapes[a]) for a, part in zip(dims, flat.split(sizes))}

        self.weight, self.weight_low, self.grad = views(self.flat), views(self.flat_low), views(self.flat_grad)
        self.bias = torch.zeros(len(head_arrays), num_classes, device=device)
        self.bias_velocity = torch.zeros_like(self.bias)
        self.mean = {a: torch.zeros(d, device=device) for a, d in dims.items()}
        self.var = {a: torch.ones(d, device=device) for a, d in dims.items()}

    def _product(self, a, b, out=None):
        """a @ b in the grid's dtype; float32 on the CPU through ops.matmul (thread-count independent)."""
        if self.dtype == torch.float32 and self.device.type == "cpu":
            product = matmul(a, b)
            return product if out is None else out.copy_(product)
        return torch.mm(a, b, out=out)

    def normalise(self, batch: dict, training: bool) -> dict:
        """BatchNorm1d(affine=False): batch statistics (updating the running ones) or the running ones."""
        out = {}
        for a in self.arrays:
            x = batch[a].to(self.device, torch.float32, non_blocking=True, copy=True)
            if training:
                mean = x.mean(0)
                var = (x - mean).square_().mean(0)
                n = len(x)
                self.mean[a].lerp_(mean, BN_MOMENTUM)
                self.var[a].lerp_(var * (n / (n - 1)), BN_MOMENTUM)
            else:
                mean, var = self.mean[a], self.var[a]
            out[a] = x.sub_(mean).mul_(torch.rsqrt(var + BN_EPS)).to(self.dtype)
        return out

    def logits(self, z: dict) -> torch.Tensor:
        rows = next(iter(z.values())).shape[0]
        out = self.bias[None].repeat(rows, 1, 1)
        for a in self.arrays:
            part = self._product(z[a], self.weight_low[a]).float().view(rows, -1, self.classes)
            out.index_add_(1, self.users[a], part)
        return out  # (rows, heads, classes)

    def step(self, z: dict, y: torch.Tensor, scale: float):
        """One SGD step of every head; returns per-head summed loss and correct count on this batch."""
        logits = self.logits(z)
        rows = torch.arange(len(y), device=self.device)
        top = logits.amax(-1)
        true_class = logits[rows, :, y] - top  # (rows, heads)
        probs = logits.sub_(top[..., None]).exp_()
        norm = probs.sum(-1)
        loss, correct = (norm.log() - true_class).sum(0), (true_class >= 0).sum(0)
        probs.div_(norm[..., None])[rows, :, y] -= 1  # the residual d loss / d logits
        probs.mul_((self.lrs / len(y))[:, None])  # each head's rate folded into its gradient
        low = probs.to(self.dtype)
        for a in self.arrays:
            columns = low if len(self.users[a]) == low.shape[1] else low[:, self.users[a]]
            self._product(z[a].T, columns.reshape(len(y), -1), out=self.grad[a])
        if self.flat_grad32 is not self.flat_grad:
            self.flat_grad32.copy_(self.flat_grad)
        torch.add(self.flat_grad32, self.velocity, alpha=MOMENTUM, out=self.velocity)
        self.flat.sub_(self.velocity, alpha=scale)
        if self.flat_low is not self.flat:
            self.flat_low.copy_(self.flat)
        torch.add(probs.sum(0), self.bias_velocity, alpha=MOMENTUM, out=self.bias_velocity)
        self.bias.sub_(self.bias_velocity, alpha=scale)
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
        return {"norm_mean": torch.cat([self.mean[a] for a in arrays]),
                "norm_var": torch.cat([self.var[a] for a in arrays]),
                "weight": weight, "bias": self.bias[head].clone(), "blocks": [b for b, _ in arrays],
                "poolings": [p for _, p in arrays]}


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _resident(arrays: dict, device) -> bool:
    """Whether the cached features fit on the device (half its free memory); the CPU always holds them."""
    if device.type != "cuda":
        return True
    needed = sum(v.numel() * v.element_size() for split in arrays.values() for v in split.values())
    return needed < torch.cuda.mem_get_info(device)[0] // 2


def fit_store(load, keys, params: dict, seed: int, device=CPU, progress=SILENT) -> list[ProbeOutcome]:
    params = probe_params("linear", params)
    lrs, batch_size = params["learning_rates"], params["batch_size"]
    lr_scale = batch_size / 256
    sets = feature_sets(keys, params["block_sets"], params["per_block"])
    needed = sorted({a for s in sets for a in s.arrays})
    if not sets:
        return []
    x = {"train": {}, "val": {}, "test": {}}
    for i, a in enumerate(needed):  # keep the cache in fp16 (as stored): half the memory of float32
        progress.update(0.0, f"reading block {a[0]} {a[1]} ({i + 1} of {len(needed)} arrays)")
        splits = load(*a)
        for name in x:
            x[name][a] = torch.from_numpy(getattr(splits, name).x).half()
    if _resident(x, device):
        x = {name: {a: v.to(device) for a, v in arrays.items()} for name, arrays in x.items()}
    elif device.type == "cuda":
        x = {name: {a: v.pin_memory() for a, v in arrays.items()} for name, arrays in x.items()}
    y = torch.from_numpy(splits.train.y).long().to(device)
    y_val = torch.from_numpy(splits.val.y).long().to(device)
    head_arrays = [s.arrays for s in sets for _ in lrs]
    generator = torch.Generator().manual_seed(seed)
    grid = Grid({a: x["train"][a].shape[1] for a in needed}, head_arrays, splits.num_classes,
                [lr * lr_scale for lr in lrs] * len(sets), generator, matmul_dtype(params["precision"], device),
                device)
    n = len(y)
    steps_per_epoch = sum(1 for s in range(0, n, batch_size) if min(batch_size, n - s) > 1)
    total, warmup = params["epochs"] * steps_per_epoch, params["warmup_epochs"] * steps_per_epoch
    history, step = [], 0
    what = f"{len(head_arrays)} heads on {len(needed)} arrays"
    # diverging heads (the largest rates) drive softmax into denormal floats, which x86 CPUs
    # process a hundred times slower: flush them to zero while training
    flushing = torch.set_flush_denormal(True)
    for epoch in range(params["epochs"]):
        order = torch.randperm(n, generator=generator)
        loss_sum = torch.zeros(len(head_arrays), device=device)
        correct = torch.zeros(len(head_arrays), dtype=torch.long, device=device)
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            if len(rows) < 2:
                continue  # BatchNorm needs two samples
            progress.update(step / total, f"{what}, epoch {epoch + 1}/{params['epochs']}")
            batch_rows = rows.to(x["train"][needed[0]].device)
            z = grid.normalise({a: v[batch_rows] for a, v in x["train"].items()}, True)
            loss, hits = grid.step(z, y[rows.to(device)], _schedule(step, total, min(warmup, total - 1)))
            loss_sum += loss
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
    test_logits = grid.evaluate(x["test"], heads=torch.tensor(chosen, device=device))  # the chosen heads only, once
    outcomes = []
    for i, (fs, validation, best) in enumerate(zip(sets, validations, chosen)):
        lr = lrs[best - i * len(lrs)]
        curve = [{key: (h[key][best] if key != "epoch" else h[key]) for key in h} for h in history]
        outcomes.append(ProbeOutcome(
            f"{fs.prefix}lr={lr:g}", {"learning_rate": lr, "epochs": params["epochs"]}, validation,
            test_logits[:, i].softmax(-1).cpu().numpy(), grid.head_state(best, fs.arrays), curve, fs.block,
            fs.pooling, extra={"feature_set": {"blocks": [b for b, _ in fs.arrays],
                                               "poolings": [p for _, p in fs.arrays]},
                               "precision": str(grid.dtype).replace("torch.", "")}))
    return outcomes


def fit(splits, params: dict, seed: int, device=CPU, progress=SILENT) -> ProbeOutcome:
    """The learning-rate sweep on one feature array (what `fit_store` does per stored array)."""
    torch.manual_seed(seed)
    return fit_store(lambda block, pooling: splits, [(0, "cls")], params | {"block_sets": []}, seed, device,
                     progress)[0]
