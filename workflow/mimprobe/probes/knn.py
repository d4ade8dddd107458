"""Weighted kNN (DINO/DINOv2): cosine similarity, votes weighted by exp(sim / T), every k at once.

Similarities are float32 products on the probe device (bf16 products would move the exp(sim/0.07)
weights by up to 9%), a block of queries against a block of the bank at a time, merged by top-k.
No trained head: `.heads.pt` holds nothing for kNN (the bank is the train split of the store).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .common import ProbeOutcome, Splits
from .ops import COLUMNS, matmul
from .progress import SILENT

DEFAULTS = {"k": [10, 20, 100, 200], "temperature": 0.07, "standardize": True}
CPU = torch.device("cpu")


def _normalised(bank: np.ndarray, queries: np.ndarray, standardize: bool, device):
    bank_t = torch.as_tensor(bank, dtype=torch.float32, device=device)
    query_t = torch.as_tensor(queries, dtype=torch.float32, device=device)
    if standardize:
        mean, std = bank_t.mean(0, keepdim=True), bank_t.std(0, keepdim=True).clamp_min(1e-6)
        bank_t, query_t = (bank_t - mean) / std, (query_t - mean) / std
    return F.normalize(bank_t, dim=1), F.normalize(query_t, dim=1)


def _bank_columns(bank: torch.Tensor) -> torch.Tensor:
    """The bank transposed (D, N), zero columns appended up to a multiple of ops.COLUMNS so that
    every block of it multiplies without padding."""
    return F.pad(bank.T, (0, -len(bank) % COLUMNS)).contiguous()


def _top_neighbours(query, bank_t, size: int, k: int, bank_chunk: int):
    """Top-k cosine similarities and bank rows of `query`, merging `bank_chunk` bank rows at a time
    (`bank_t` from `_bank_columns`, `size` its real column count)."""
    best_sims = best_rows = None
    for start in range(0, size, bank_chunk):
        stop = min(start + bank_chunk, size)
        sims = matmul(query, bank_t[:, start:start + bank_chunk])[:, :stop - start]
        sims, rows = sims.topk(min(k, stop - start), dim=1)
        if best_sims is not None:
            sims, rows = torch.cat([best_sims, sims], 1), torch.cat([best_rows, rows + start], 1)
            sims, order = sims.topk(min(k, sims.shape[1]), dim=1)
            rows = rows.gather(1, order)
        best_sims, best_rows = sims, rows
    return best_sims, best_rows


def knn_probabilities(bank_x, bank_y, queries, ks, num_classes, temperature=0.07, standardize=True,
                      chunk=1024, bank_chunk=65536, device=CPU, progress=None) -> dict[int, np.ndarray]:
    """Class probabilities for every k from one similarity pass; memory is bounded by
    chunk x bank_chunk similarities, whatever the split sizes. `progress(fraction)` is called
    per chunk of queries."""
    bank, query = _normalised(bank_x, queries, standardize, device)
    bank_t, size = _bank_columns(bank), len(bank)
    del bank
    labels = torch.as_tensor(bank_y, device=device).long()
    k_max = min(max(ks), size)
    bank_chunk = max(COLUMNS, bank_chunk // COLUMNS * COLUMNS)
    out = {k: np.empty((len(query), num_classes), dtype=np.float32) for k in ks}
    for start in range(0, len(query), chunk):
        if progress:
            progress(start / len(query))
        sims, idx = _top_neighbours(query[start:start + chunk], bank_t, size, k_max, bank_chunk)
        weights, neighbour_labels = (sims / temperature).exp(), labels[idx]
        votes, counted = torch.zeros((len(sims), num_classes), device=device), 0
        for k in sorted(ks):  # votes of the first k neighbours, added on to those of the previous k
            k_used = min(k, k_max)
            votes.scatter_add_(1, neighbour_labels[:, counted:k_used], weights[:, counted:k_used])
            counted = k_used
            out[k][start:start + chunk] = (votes / votes.sum(1, keepdim=True)).cpu().numpy()
    return out


def fit(splits: Splits, params: dict, seed: int, device=CPU, progress=SILENT) -> ProbeOutcome:
    params = DEFAULTS | params
    ks, temperature, standardize = params["k"], params["temperature"], params["standardize"]
    queries = len(splits.val.y) + len(splits.test.y)

    def report(done, detail):
        return lambda fraction: progress.update((done + fraction * len(detail[1])) / queries, detail[0])

    val_probs = knn_probabilities(splits.train.x, splits.train.y, splits.val.x, ks, splits.num_classes,
                                  temperature, standardize, device=device,
                                  progress=report(0, ("validation, every k", splits.val.y)))
    validation = {f"k={k}": float((p.argmax(1) == splits.val.y).mean()) for k, p in val_probs.items()}
    best_k = max(ks, key=lambda k: (validation[f"k={k}"], -k))
    test_probs = knn_probabilities(splits.train_all.x, splits.train_all.y, splits.test.x, [best_k],
                                   splits.num_classes, temperature, standardize, device=device,
                                   progress=report(len(splits.val.y), (f"test, k={best_k}", splits.test.y)))[best_k]
    return ProbeOutcome(f"k={best_k}", {"k": best_k, "temperature": temperature}, validation, test_probs)
