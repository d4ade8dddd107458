"""Attentive probe (AIM / I-JEPA / V-JEPA evaluations): one learned query cross-attends over the stored
patch tokens of a block, then a linear layer. Runs only where `tokens` were stored (the last stored
block). AdamW; the epoch with the best validation top-1 is kept (setting `epoch=N`).

Head format: {state_dict, dim, num_heads} of `AttentivePooler(dim, num_classes, num_heads)` applied to
the raw (N, T, D) tokens. Its parameters are those of torch's LayerNorm, MultiheadAttention and
Linear; the forward pass is written out with `ops` (one query: attention weights are a product and
a softmax per head), so its results do not depend on the CPU thread count.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import probe_params
from .common import ProbeOutcome, Splits
from .epochs import train_epochs
from .ops import layer_norm, linear
from .progress import SILENT

POOLINGS = ("tokens",)
DTYPE = np.float16  # token grids are large: keep them as stored, cast per batch
CPU = torch.device("cpu")


class AttentivePooler(torch.nn.Module):
    def __init__(self, dim: int, num_classes: int, num_heads: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(dim)
        self.query = torch.nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.attention = torch.nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.head = torch.nn.Linear(dim, num_classes)

    def forward(self, tokens):
        """MultiheadAttention(query, tokens, tokens) for one learned query, then the linear head."""
        batch, count, dim = tokens.shape
        heads, attention = self.attention.num_heads, self.attention
        tokens = layer_norm(tokens, self.norm.weight, self.norm.bias, self.norm.eps)
        w_q, w_k, w_v = attention.in_proj_weight.chunk(3)
        b_q, b_k, b_v = attention.in_proj_bias.chunk(3)
        query = linear(self.query[0], w_q, b_q).view(1, 1, heads, -1)  # (1, 1, H, d)
        keys = linear(tokens, w_k, b_k).view(batch, count, heads, -1)  # (B, T, H, d)
        values = linear(tokens, w_v, b_v).view(batch, count, heads, -1)
        weights = ((keys * query).sum(-1) / (dim // heads) ** 0.5).softmax(1)  # (B, T, H)
        pooled = (weights[..., None] * values).sum(1).reshape(batch, dim)
        pooled = linear(pooled, attention.out_proj.weight, attention.out_proj.bias)
        return linear(pooled, self.head.weight, self.head.bias)


def fit(splits: Splits, params: dict, seed: int, device=CPU, progress=SILENT) -> ProbeOutcome:
    params = probe_params("attentive", params)
    dim = splits.train.x.shape[-1]
    heads = params["num_heads"] if dim % params["num_heads"] == 0 else 1
    torch.manual_seed(seed)
    model = AttentivePooler(dim, splits.num_classes, heads).to(device)
    epoch, validation, history, test_probs = train_epochs(
        model, splits, lambda x: torch.as_tensor(x, dtype=torch.float32, device=device), params, seed, progress)
    head = {"state_dict": model.state_dict(), "dim": dim, "num_heads": heads}
    return ProbeOutcome(f"epoch={epoch}", {"epoch": epoch, "num_heads": heads}, validation, test_probs, head,
                        history)
