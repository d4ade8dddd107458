"""Weighted kNN (DINO/DINOv2): cosine similarity, votes weighted by exp(sim / T), every k at once.

Neighbours and their similarities are those of float32 products, found at the cost of bfloat16
ones where the probe device has them: a bf16 pass over the bank keeps the best k + 56 candidates
of each query, their exact float32 similarities are computed (queries grouped by the class of
their nearest candidate, so neighbouring queries share bank rows), and a query is accepted when its
k-th exact similarity beats every excluded candidate's bf16 similarity by more than the bf16 error
bound; the rare query that fails is searched again in float32 (bf16 weights exp(sim/0.07) would be
off by up to 9%). Products go a block of queries against a block of the bank at a time.
No trained head: `.heads.pt` holds nothing for kNN (the bank is the train split of the store).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..config import probe_params
from .common import ProbeOutcome, Splits
from .ops import COLUMNS, matmul, matmul_dtype
from .progress import SILENT

CPU = torch.device("cpu")
MARGIN = 56  # bf16 candidates beyond the largest k
GROUP = 64  # queries whose candidates are rescored together
BF16_ERROR = 4 * 2.0 ** -9  # |bf16 - exact| cosine similarity of unit vectors: inputs, output, sums


def _normalised(bank: np.ndarray, queries: np.ndarray, standardize: bool, device):
    bank_t = torch.as_tensor(bank, dtype=torch.float32, device=device)
    query_t = torch.as_tensor(queries, dtype=torch.float32, device=device)
    if standardize:
        mean, std = bank_t.mean(0, keepdim=True), bank_t.std(0, keepdim=True).clamp_min(1e-6)
        bank_t, query_t = (bank_t - mean) / std, (query_t - mean) / std
    return F.normalize(bank_t, dim=1), F.normalize(query_t, dim=1)


def _padded(bank: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """The bank in `dtype` with zero rows appended up to a multiple of ops.COLUMNS, so that every
    block of its rows multiplies (as columns of the product) without padding."""
    return F.pad(bank.to(dtype), (0, 0, 0, -len(bank) % COLUMNS))


def _top_neighbours(query, bank, size: int, k: int, bank_chunk: int):
    """Top-k similarities and bank rows of `query` (in the padded bank's dtype), merging
    `bank_chunk` bank rows at a time (`bank` from `_padded`, `size` its real row count)."""
    best_sims = best_rows = None
    query = query.to(bank.dtype)
    for start in range(0, size, bank_chunk):
        stop = min(start + bank_chunk, size)
        sims = matmul(query, bank[start:start + bank_chunk].T)[:, :stop - start]
        sims, rows = sims.topk(min(k, stop - start), dim=1)
        if best_sims is not None:
            sims, rows = torch.cat([best_sims, sims], 1), torch.cat([best_rows, rows + start], 1)
            sims, order = sims.topk(min(k, sims.shape[1]), dim=1)
            rows = rows.gather(1, order)
        best_sims, best_rows = sims, rows
    return best_sims, best_rows


class Bank:
    """The normalised train features, searched exactly (float32) or through bf16 candidates."""

    def __init__(self, bank: torch.Tensor, labels: torch.Tensor, chunk: int, bank_chunk: int):
        self.bank, self.labels, self.size, self.chunk = bank, labels, len(bank), chunk
        self.bank_chunk = max(COLUMNS, bank_chunk // COLUMNS * COLUMNS)
        fast = matmul_dtype("auto", bank.device) == torch.bfloat16
        self.low = _padded(bank, torch.bfloat16) if fast else None
        self.exact_rows = None if fast else _padded(bank)

    def exact(self, query, k: int):
        if self.exact_rows is None:
            self.exact_rows = _padded(self.bank)
        return _top_neighbours(query, self.exact_rows, self.size, k, self.bank_chunk)

    def search(self, query, k: int, progress=None):
        """(similarities, rows) of the k nearest bank rows of each query, in float32 terms;
        `chunk` queries at a time."""
        low = self.low is not None and k + MARGIN < self.size
        found = []
        for start in range(0, len(query), self.chunk):
            if progress:
                progress(start / len(query))
            part = query[start:start + self.chunk]
            found.append(_top_neighbours(part, self.low, self.size, k + MARGIN, self.bank_chunk) if low
                         else self.exact(part, k))
        sims, rows = (torch.cat(parts) for parts in zip(*found))
        return self._rescore(query, sims, rows, k) if low else (sims, rows)

    def _rescore(self, query, low_sims, candidates, k: int):
        """Exact similarities of the bf16 candidates, the best k of them; queries whose k-th exact
        similarity does not clear the excluded candidates' bf16 bound are searched exactly."""
        sims = torch.empty(candidates.shape, device=query.device)
        order = torch.argsort(self.labels[candidates[:, 0]], stable=True)
        for start in range(0, len(order), GROUP):
            group = order[start:start + GROUP]
            rows, position = torch.unique(candidates[group], return_inverse=True)
            padded = F.pad(rows, (0, -len(rows) % COLUMNS))  # row 0 again: a product without padding
            sims[group] = matmul(query[group], self.bank[padded].T).gather(1, position)
        sims, best = sims.topk(k, dim=1)
        rows = candidates.gather(1, best)
        failed = (sims[:, -1] <= low_sims[:, -1].float() + BF16_ERROR).nonzero().flatten()
        if len(failed):  # a neighbour could hide beyond the candidates
            sims[failed], rows[failed] = self.exact(query[failed], k)
        return sims, rows


def knn_probabilities(bank_x, bank_y, queries, ks, num_classes, temperature=0.07, standardize=True,
                      chunk=1024, bank_chunk=65536, device=CPU, progress=None) -> dict[int, np.ndarray]:
    """Class probabilities for every k from one neighbour search; memory is bounded by
    chunk x bank_chunk similarities, whatever the split sizes. `progress(fraction)` is called
    per chunk of queries."""
    bank, query = _normalised(bank_x, queries, standardize, device)
    labels = torch.as_tensor(bank_y, device=device).long()
    k_max = min(max(ks), len(bank))
    all_sims, all_rows = Bank(bank, labels, chunk, bank_chunk).search(query, k_max, progress)
    out = {k: np.empty((len(query), num_classes), dtype=np.float32) for k in ks}
    for start in range(0, len(query), chunk):
        sims, idx = all_sims[start:start + chunk], all_rows[start:start + chunk]
        weights, neighbour_labels = (sims / temperature).exp(), labels[idx]
        votes, counted = torch.zeros((len(sims), num_classes), device=device), 0
        for k in sorted(ks):  # votes of the first k neighbours, added on to those of the previous k
            k_used = min(k, k_max)
            if device.type == "cpu":  # in rank order on the CPU; atomics on a GPU would not be
                votes.scatter_add_(1, neighbour_labels[:, counted:k_used], weights[:, counted:k_used])
            else:
                votes += (F.one_hot(neighbour_labels[:, counted:k_used], num_classes)
                          * weights[:, counted:k_used, None]).sum(1)
            counted = k_used
            out[k][start:start + chunk] = (votes / votes.sum(1, keepdim=True)).cpu().numpy()
    return out


def fit(splits: Splits, params: dict, seed: int, device=CPU, progress=SILENT) -> ProbeOutcome:
    params = probe_params("knn", params)
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
