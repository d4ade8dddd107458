"""Linear probe: BatchNorm1d(affine=False) + Linear heads, one per learning rate, trained together.

Every head sees the same mini-batches (one pass over the cached features serves the whole
grid); SGD with momentum 0.9 and a cosine schedule; the head with the best validation top-1 wins.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .common import ProbeOutcome, Splits

DEFAULTS = {"learning_rates": [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5],
            "epochs": 30, "batch_size": 256}


class HeadGrid(torch.nn.Module):
    """`heads` independent linear classifiers over standardised features, evaluated in one einsum."""

    def __init__(self, dim: int, num_classes: int, heads: int):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(dim, affine=False)
        self.weight = torch.nn.Parameter(torch.randn(heads, dim, num_classes) * 0.01)
        self.bias = torch.nn.Parameter(torch.zeros(heads, num_classes))

    def forward(self, x):
        return torch.einsum("bd,hdc->hbc", self.norm(x), self.weight) + self.bias[:, None]


def _accuracy_per_head(model, x, y) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(-1) == y).float().mean(1).numpy()


def fit(splits: Splits, params: dict, seed: int) -> ProbeOutcome:
    params = DEFAULTS | params
    lrs = params["learning_rates"]
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(splits.train.x), torch.from_numpy(splits.train.y).long()
    x_val, y_val = torch.from_numpy(splits.val.x), torch.from_numpy(splits.val.y).long()
    model = HeadGrid(x.shape[1], splits.num_classes, len(lrs))
    per_head_lr = torch.tensor(lrs).view(-1, 1, 1)
    optimiser = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)  # lr scaled per head below
    steps_per_epoch = max(1, math.ceil(len(x) / params["batch_size"]))
    total = params["epochs"] * steps_per_epoch
    history, step = [], 0
    for epoch in range(params["epochs"]):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        losses = []
        for start in range(0, len(x), params["batch_size"]):
            rows = order[start:start + params["batch_size"]]
            if len(rows) < 2:
                continue  # BatchNorm needs two samples
            logits = model(x[rows])
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y[rows].repeat(len(lrs)), reduction="none"
            ).view(len(lrs), -1).mean(1)
            optimiser.zero_grad()
            loss.sum().backward()
            scale = 0.5 * (1 + math.cos(math.pi * step / total))
            model.weight.grad *= per_head_lr * scale
            model.bias.grad *= per_head_lr.view(-1, 1) * scale
            optimiser.step()
            losses.append(loss.detach())
            step += 1
        val_acc = _accuracy_per_head(model, x_val, y_val)
        history.append({"epoch": epoch + 1, "train_loss": torch.stack(losses).mean(0).tolist(),
                        "val_top1": val_acc.tolist()})
    validation = {f"lr={lr:g}": float(a) for lr, a in zip(lrs, val_acc)}
    best = int(np.argmax(val_acc))
    model.eval()
    with torch.no_grad():
        test_probs = model(torch.from_numpy(splits.test.x))[best].softmax(-1).numpy()
    head = {"norm_mean": model.norm.running_mean.clone(), "norm_var": model.norm.running_var.clone(),
            "weight": model.weight[best].detach().T.contiguous(), "bias": model.bias[best].detach().clone()}
    best_history = [{"epoch": h["epoch"], "train_loss": h["train_loss"][best], "val_top1": h["val_top1"][best]}
                    for h in history]
    return ProbeOutcome(f"lr={lrs[best]:g}", {"learning_rate": lrs[best]}, validation, test_probs, head,
                        best_history)
