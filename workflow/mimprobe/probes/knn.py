"""Weighted kNN (DINO/DINOv2): cosine similarity, votes weighted by exp(sim / T), every k at once."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .common import ProbeOutcome, Splits

DEFAULTS = {"k": [10, 20, 100, 200], "temperature": 0.07, "standardize": True}


def _normalised(bank: np.ndarray, queries: np.ndarray, standardize: bool):
    bank_t, query_t = torch.from_numpy(bank), torch.from_numpy(queries)
    if standardize:
        mean, std = bank_t.mean(0, keepdim=True), bank_t.std(0, keepdim=True).clamp_min(1e-6)
        bank_t, query_t = (bank_t - mean) / std, (query_t - mean) / std
    return F.normalize(bank_t, dim=1), F.normalize(query_t, dim=1)


def knn_probabilities(bank_x, bank_y, queries, ks, num_classes, temperature=0.07, standardize=True,
                      chunk=1024) -> dict[int, np.ndarray]:
    """Class probabilities for every k from one similarity pass, `chunk` queries at a time."""
    bank, query = _normalised(bank_x, queries, standardize)
    labels = torch.from_numpy(bank_y).long()
    k_max = min(max(ks), len(bank))
    out = {k: np.empty((len(query), num_classes), dtype=np.float32) for k in ks}
    for start in range(0, len(query), chunk):
        sims, idx = (query[start:start + chunk] @ bank.T).topk(k_max, dim=1)
        weights = (sims / temperature).exp()
        one_hot = F.one_hot(labels[idx], num_classes).float() * weights.unsqueeze(-1)
        running = one_hot.cumsum(dim=1)  # votes of the first j neighbours, for every j
        for k in ks:
            votes = running[:, min(k, k_max) - 1]
            out[k][start:start + chunk] = (votes / votes.sum(1, keepdim=True)).numpy()
    return out


def fit(splits: Splits, params: dict, seed: int) -> ProbeOutcome:
    params = DEFAULTS | params
    ks, temperature, standardize = params["k"], params["temperature"], params["standardize"]
    val_probs = knn_probabilities(splits.train.x, splits.train.y, splits.val.x, ks, splits.num_classes,
                                  temperature, standardize)
    validation = {f"k={k}": float((p.argmax(1) == splits.val.y).mean()) for k, p in val_probs.items()}
    best_k = max(ks, key=lambda k: (validation[f"k={k}"], -k))
    test_probs = knn_probabilities(splits.train_all.x, splits.train_all.y, splits.test.x, [best_k],
                                   splits.num_classes, temperature, standardize)[best_k]
    return ProbeOutcome(f"k={best_k}", {"k": best_k, "temperature": temperature}, validation, test_probs)
