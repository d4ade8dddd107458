"""The seed notebook's MLP: hidden layers 256-128-128 with ReLU, Adam 1e-3, cross-entropy, 20 epochs.

Runs on every pooled array and on the stored token grids flattened (the notebook's original input:
all tokens of one block in one long vector). Inputs are standardised with the train mean/std (the
notebook fed raw values). Per-epoch train/val loss and top-1 are recorded; the epoch with the best
validation top-1 is kept (setting `epoch=N`). No refit on all of train.

Head format: {mean (D,), std (D,), hidden [...], state_dict} where state_dict is a
`torch.nn.Sequential` of Linear/ReLU layers (keys `0.weight`, `0.bias`, `2.weight`, …) applied to the
standardised (flattened) features.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import probe_params
from .common import POOLED, ProbeOutcome, Splits, standardizer
from .epochs import train_epochs
from .ops import Linear
from .progress import SILENT

POOLINGS = POOLED + ("tokens",)
DTYPE = np.float16  # flattened token grids are large: keep them as stored, cast per batch
CPU = torch.device("cpu")


def build_mlp(dim: int, hidden: list[int], num_classes: int) -> torch.nn.Sequential:
    layers, width = [], dim
    for size in hidden:
        layers += [Linear(width, size), torch.nn.ReLU()]
        width = size
    return torch.nn.Sequential(*layers, Linear(width, num_classes))


def fit(splits: Splits, params: dict, seed: int, device=CPU, progress=SILENT) -> ProbeOutcome:
    params = probe_params("mlp", params)
    mean, std = standardizer(splits.train.x)
    mean, std = mean.to(device), std.to(device)

    def prepare(x):
        return (torch.as_tensor(x, dtype=torch.float32, device=device).reshape(len(x), -1) - mean) / std

    torch.manual_seed(seed)
    model = build_mlp(len(mean), params["hidden"], splits.num_classes).to(device)
    epoch, validation, history, test_probs = train_epochs(model, splits, prepare, params, seed, progress)
    head = {"mean": mean, "std": std, "hidden": list(params["hidden"]), "state_dict": model.state_dict()}
    return ProbeOutcome(f"epoch={epoch}", {"epoch": epoch, "hidden": params["hidden"]}, validation, test_probs,
                        head, history)
