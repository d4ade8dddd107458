"""Attentive probe (AIM / I-JEPA / V-JEPA evaluations): one learned query cross-attends over the stored
patch tokens of a block, then a linear layer. Runs only where `tokens` were stored (the last stored
block). AdamW; the epoch with the best validation top-1 is kept (setting `epoch=N`).

Head format: {state_dict, dim, num_heads} of `AttentivePooler(dim, num_classes, num_heads)` applied to
the raw (N, T, D) tokens.
"""

from __future__ import annotations

import numpy as np
import torch

from .common import ProbeOutcome, Splits
from .epochs import train_epochs

DEFAULTS = {"epochs": 20, "learning_rate": 1e-3, "weight_decay": 1e-4, "batch_size": 128, "num_heads": 8}
POOLINGS = ("tokens",)
DTYPE = np.float16  # token grids are large: keep them as stored, cast per batch


class AttentivePooler(torch.nn.Module):
    def __init__(self, dim: int, num_classes: int, num_heads: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(dim)
        self.query = torch.nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.attention = torch.nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.head = torch.nn.Linear(dim, num_classes)

    def forward(self, tokens):
        tokens = self.norm(tokens)
        pooled, _ = self.attention(self.query.expand(len(tokens), -1, -1), tokens, tokens, need_weights=False)
        return self.head(pooled[:, 0])


def fit(splits: Splits, params: dict, seed: int) -> ProbeOutcome:
    params = DEFAULTS | params
    dim = splits.train.x.shape[-1]
    heads = params["num_heads"] if dim % params["num_heads"] == 0 else 1
    torch.manual_seed(seed)
    model = AttentivePooler(dim, splits.num_classes, heads)
    epoch, validation, history, test_probs = train_epochs(
        model, splits, lambda x: torch.as_tensor(x, dtype=torch.float32), params, seed)
    head = {"state_dict": model.state_dict(), "dim": dim, "num_heads": heads}
    return ProbeOutcome(f"epoch={epoch}", {"epoch": epoch, "num_heads": heads}, validation, test_probs, head,
                        history)
