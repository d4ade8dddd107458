"""Weighted kNN (DINO/DINOv2): cosine similarity, votes weighted by exp(sim / T), every k at once.

No trained head: `.heads.pt` holds nothing for kNN (the bank is the train split of the store).
"""

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


def _top_neighbours(query, bank, k: int, bank_chunk: int):
    """Top-k cosine similarities and bank rows, merging `bank_chunk` bank rows at a time."""
    best_sims = best_rows = None
    for start in range(0, len(bank), bank_chunk):
        part = bank[start:start + bank_chunk]
        sims, rows = (query @ part.T).topk(min(k, len(part)), dim=1)
        if best_sims is not None:
            sims, rows = torch.cat([best_sims, sims], 1), torch.cat([best_rows, rows + start], 1)
            sims, order = sims.topk(min(k, sims.shape[1]), dim=1)
            rows = rows.gather(1, order)
        best_sims, best_rows = sims, rows
    return best_sims, best_rows


def knn_probabilities(bank_x, bank_y, queries, ks, num_classes, temperature=0.07, standardize=True,
                      chunk=1024, bank_chunk=16384) -> dict[int, np.ndarray]:
    """Class probabilities for every k from one similarity pass; memory is bounded by
    chunk x bank_chunk similarities and chunk x k x classes votes, whatever the split sizes."""
    bank, query = _normalised(bank_x, queries, standardize)
    labels = torch.from_numpy(bank_y).long()
    k_max = min(max(ks), len(bank))
    chunk = max(1, min(chunk, 2**25 // (k_max * num_classes)))
    out = {k: np.empty((len(query), num_classes), dtype=np.float32) for k in ks}
    for start in range(0, len(query), chunk):
        sims, idx = _top_neighbours(query[start:start + chunk], bank, k_max, bank_chunk)
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
