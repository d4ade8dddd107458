"""k-means with k = number of classes: how well the features cluster by class, with no labels at all.

Features are standardised with the train mean/std and L2-normalised; k-means is fitted on all of
train and assigns the test images; test scores are ACC (clusters matched one-to-one to classes by
the Hungarian algorithm), NMI, AMI and ARI with bootstrap CIs over `report.bootstrap` resamples,
like every family. No hyper-parameters, so no validation scores.

The algorithm is sklearn's KMeans in torch, on the probe device: `n_init` runs from greedy
k-means++ seeds (2 + ln k candidates per centre, the one lowering the potential most is kept),
Lloyd iterations until no label changes or the centres move less than 1e-4 of the mean feature
variance (sklearn's `tol`), at most `max_iter`; the run with the lowest inertia wins. The runs are
seeded together (a pass over the features serves every run). Distances use bfloat16 products where
the hardware has them; in Lloyd steps a point whose two nearest centres are closer than the bf16
error bound gets float32 distances, so labels are those of float32 k-means, and Hamerly's bounds
skip the points whose label cannot change.
Centres are float32 means of sums kept up to date by the points that change cluster. Seeding
samples with bf16 distances, so a GPU and a CPU may seed (and end) differently.

Head format: {mean (D,), std (D,), centroids (k, D)}; cluster = nearest centroid to normalise((x - mean) / std).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..config import probe_params
from .common import ProbeOutcome, Splits, standardizer
from .ops import matmul, matmul_dtype, total
from .progress import SILENT

TOL = 1e-4  # sklearn's default, relative to the mean feature variance
CPU = torch.device("cpu")
BF16_ERROR = 8 * 2.0 ** -9  # |bf16 - exact| squared distance / (|x| |c|): inputs and output rounded, float32 sums
EXACT_ERROR = 2.0 ** -12  # the same for float32 products (sums of up to ~10^4 terms)


class Points:
    """The features in the precisions distances are computed in, with their squared norms."""

    def __init__(self, x: torch.Tensor, low: bool = True):
        self.x, self.squared = x, x.square().sum(1)
        fast = low and matmul_dtype("auto", x.device) == torch.bfloat16
        self.low = x.to(torch.bfloat16) if fast else None

    def distances(self, centres: torch.Tensor, exact: bool = False, rows=None) -> torch.Tensor:
        """Squared distances (N, len(centres)) of all points (or of `rows`), floored at 0."""
        x, squared = (self.x, self.squared) if rows is None else (self.x[rows], self.squared[rows])
        if exact or self.low is None:
            products = matmul(x, centres.T)
        else:
            low = self.low if rows is None else self.low[rows]
            products = (low @ centres.T.to(torch.bfloat16)).float()
        return (squared[:, None] - 2 * products + centres.square().sum(1)).clamp_min_(0)

    def nearest(self, centres: torch.Tensor, rows: torch.Tensor | None = None):
        """(labels, upper, lower) of the points `rows` (all by default) for one run's centres (k, D):
        the nearest centre as float32 distances decide it, an upper bound of the distance to it and
        a lower bound of the distance to every other centre. Distances are bf16 products where the
        hardware has them; points whose two nearest centres are within the bf16 error get float32."""
        squared = self.squared if rows is None else self.squared[rows]
        exact, reach = self.low is None, squared.sqrt() * centres.norm(dim=1).amax()
        labels, best, second = self._two_nearest(centres, rows, exact)
        error = (EXACT_ERROR if exact else BF16_ERROR) * reach
        if not exact:
            close = ((second - best) <= 2 * error).nonzero().flatten()
            if len(close):
                labels[close], best[close], second[close] = self._two_nearest(
                    centres, close if rows is None else rows[close], True)
                error[close] = EXACT_ERROR * reach[close]
        return labels, (squared + best + error).clamp_min(0).sqrt(), (squared + second - error).clamp_min(0).sqrt()

    def _two_nearest(self, centres, rows, exact: bool):
        """Nearest centre, and |c|² - 2 x·c of the nearest and of the second nearest."""
        if exact:
            products = matmul(self.x if rows is None else self.x[rows], centres.T)
        else:
            products = ((self.low if rows is None else self.low[rows]) @ centres.T.to(torch.bfloat16)).float()
        scores = torch.add(centres.square().sum(1), products, alpha=-2)
        labels = scores.argmin(1)
        best = scores.gather(1, labels[:, None])[:, 0]
        return labels, best, scores.scatter_(1, labels[:, None], float("inf")).amin(1)


def _seeds(points: Points, k: int, runs: int, rng: np.random.Generator) -> torch.Tensor:
    """Greedy k-means++ seeds of `runs` runs at once: (runs, k) row indices."""
    n, trials = len(points.x), 2 + int(math.log(k))
    chosen = rng.integers(n, size=runs)
    closest = points.distances(points.x[chosen])  # (N, runs)
    seeds = [chosen]
    for _ in range(1, k):
        cumulative = np.cumsum(closest.double().cpu().numpy(), axis=0)  # numpy's is serial: same bits always
        picks = np.stack([np.minimum(np.searchsorted(cumulative[:, r], rng.random(trials) * cumulative[-1, r]), n - 1)
                          for r in range(runs)])  # (runs, trials)
        candidate = torch.minimum(closest.repeat_interleave(trials, 1),
                                  points.distances(points.x[picks.reshape(-1)]))  # (N, runs * trials)
        best = candidate.sum(0).view(runs, trials).argmin(1).cpu().numpy()
        closest = candidate[:, torch.as_tensor(np.arange(runs) * trials + best, device=closest.device)]
        seeds.append(picks[np.arange(runs), best])
    return torch.as_tensor(np.stack(seeds, 1), device=points.x.device)


class Clusters:
    """Per-cluster sums and counts of one run's labels, updated by the points that change cluster."""

    def __init__(self, points: Points, labels: torch.Tensor, k: int):
        self.points, self.k = points, k
        self.sums = self._sums(labels, points.x)
        self.counts = torch.bincount(labels, minlength=k)

    def _sums(self, labels, x):
        if labels.device.type == "cuda":  # a product: index_add_'s atomics would add in a varying order
            return F.one_hot(labels, self.k).T.float() @ x
        return torch.zeros(self.k, x.shape[1], device=x.device).index_add_(0, labels, x)

    def move(self, rows, old, new):
        x = self.points.x[rows]
        self.sums += self._sums(new, x) - self._sums(old, x)
        self.counts += torch.bincount(new, minlength=self.k) - torch.bincount(old, minlength=self.k)

    def means(self, centres: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The mean of each cluster; an empty cluster takes the point farthest from its centre."""
        means = self.sums / self.counts.clamp_min(1)[:, None]
        empty = (self.counts == 0).nonzero().flatten()
        if len(empty):
            own = self.points.distances(centres, exact=True).gather(1, labels[:, None])[:, 0]
            means[empty] = self.points.x[own.topk(len(empty)).indices]
        return means


def _lloyd(points: Points, centres, max_iter: int, tol: float, progress):
    """Lloyd iterations of every run (centres (runs, k, D)) until each has converged: no label
    changed, or the centres moved less than `tol` (summed squares). Hamerly's bounds skip the
    points whose nearest centre cannot have changed: an upper bound of the distance to their own
    centre and a lower bound of the distance to any other, moved by how far the centres moved.
    Returns (centres, labels (runs, N))."""
    runs, k, _ = centres.shape
    centres = centres.clone()
    labels, upper, lower = (torch.stack(parts) for parts in zip(*(points.nearest(c) for c in centres)))
    clusters = [Clusters(points, labels[run], k) for run in range(runs)]
    active = list(range(runs))
    for step in range(max_iter):
        if not active:
            break
        progress(step)
        still = []
        for run in active:
            means = clusters[run].means(centres[run], labels[run])
            moved = (means - centres[run]).norm(dim=1)
            centres[run] = means
            if float(total(moved.square())) <= tol:
                continue
            largest = moved.topk(min(2, k)).values
            upper[run] += moved[labels[run]]
            lower[run] -= torch.where(labels[run] == moved.argmax(), largest[-1], largest[0])
            need = (upper[run] > lower[run]).nonzero().flatten()
            if 2 * len(need) > len(points.x):  # most points: one product without gathering rows
                need = torch.arange(len(points.x), device=need.device)
                new, upper[run], lower[run] = points.nearest(centres[run])
            elif len(need):
                new, upper[run, need], lower[run, need] = points.nearest(centres[run], need)
            else:
                continue
            changed = (new != labels[run, need]).nonzero().flatten()
            if len(changed):
                still.append(run)
                clusters[run].move(need[changed], labels[run, need[changed]], new[changed])
                labels[run, need[changed]] = new[changed]
        active = still
    return centres, labels


def fit(splits: Splits, params: dict, seed: int, device=CPU, progress=SILENT) -> ProbeOutcome:
    params = probe_params("kmeans", params)
    mean, std = standardizer(splits.train_all.x)
    mean, std = mean.to(device), std.to(device)

    def prepare(x):
        return F.normalize((torch.as_tensor(x, dtype=torch.float32, device=device) - mean) / std, dim=1)

    points, k = Points(prepare(splits.train_all.x)), splits.num_classes
    runs, max_iter = params["n_init"], params["max_iter"]
    progress.update(0.0, f"k-means++ seeds of {runs} runs")
    centres = points.x[_seeds(points, k, runs, np.random.default_rng(seed))]
    tol = TOL * float(total((points.x - points.x.mean(0)).square().mean(0))) / points.x.shape[1]
    centres, _ = _lloyd(points, centres, max_iter, tol,
                        lambda i: progress.update(0.1 + 0.9 * i / max_iter,
                                                  f"Lloyd step {i + 1} of at most {max_iter}"))
    inertia = [float(total(points.distances(c, exact=True).amin(1))) for c in centres]
    best = centres[int(np.argmin(inertia))]
    clusters = Points(prepare(splits.test.x), low=False).distances(best, exact=True).argmin(1)
    head = {"mean": mean, "std": std, "centroids": best}
    return ProbeOutcome(f"k={k}", {"k": k}, {}, None, head,
                        test_clusters=clusters.cpu().numpy().astype(np.int64),
                        extra={"inertia": min(inertia)})
