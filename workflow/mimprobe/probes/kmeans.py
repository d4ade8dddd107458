"""k-means with k = number of classes: how well the features cluster by class, with no labels at all.

Features are standardised with the train mean/std and L2-normalised; k-means is fitted on all of
train and assigns the test images; test scores are ACC (clusters matched one-to-one to classes by
the Hungarian algorithm), NMI, AMI and ARI with bootstrap CIs over at most `max_bootstrap`
resamples (AMI costs ~0.2 s per 10,000-image resample). No hyper-parameters, so no validation scores.

The algorithm is sklearn's KMeans in torch, on the probe device: `n_init` runs from greedy
k-means++ seeds (2 + ln k candidates per centre, the one lowering the potential most is kept),
Lloyd iterations until no label changes or the centres move less than 1e-4 of the mean feature
variance (sklearn's `tol`), at most `max_iter`; the run with the lowest inertia wins. The runs go in
lockstep, so each pass over the features serves all of them. Distances use bfloat16 products
where the hardware has them (seeding and Lloyd steps); centres are float32 means, and float32
Lloyd steps finish each run, so the result is a float32 fixed point.

Head format: {mean (D,), std (D,), centroids (k, D)}; cluster = nearest centroid to normalise((x - mean) / std).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .common import ProbeOutcome, Splits, standardizer
from .ops import matmul, matmul_dtype, total
from .progress import SILENT

DEFAULTS = {"n_init": 3, "max_iter": 100, "max_bootstrap": 200}
TOL = 1e-4  # sklearn's default, relative to the mean feature variance
CPU = torch.device("cpu")


class Points:
    """The features in the precisions distances are computed in, with their squared norms."""

    def __init__(self, x: torch.Tensor, low: bool = True):
        self.x, self.squared = x, x.square().sum(1)
        fast = low and matmul_dtype("auto", x.device) == torch.bfloat16
        self.low = x.to(torch.bfloat16) if fast else None

    def distances(self, centres: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """Squared distances (N, len(centres)), floored at 0."""
        if exact or self.low is None:
            products = matmul(self.x, centres.T)
        else:
            products = (self.low @ centres.T.to(torch.bfloat16)).float()
        return (self.squared[:, None] - 2 * products + centres.square().sum(1)).clamp_min_(0)


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


def _means(points: Points, labels: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """The mean of each cluster; an empty cluster takes the point farthest from its centre."""
    sums = torch.zeros_like(centres).index_add_(0, labels, points.x)
    counts = torch.zeros(len(centres), device=centres.device).index_add_(
        0, labels, torch.ones(len(labels), device=centres.device))
    means = sums / counts.clamp_min(1)[:, None]
    empty = (counts == 0).nonzero().flatten()
    if len(empty):
        own = points.distances(centres, exact=True).gather(1, labels[:, None])[:, 0]
        means[empty] = points.x[own.topk(len(empty)).indices]
    return means


def _lloyd(points: Points, centres, labels, exact: bool, budget: int, tol: float, progress) -> int:
    """Lloyd steps of every run (centres (runs, k, D), labels (runs, N), both updated in place) until
    each has converged; returns the steps taken."""
    runs, k, dim = centres.shape
    active = list(range(runs))
    for step in range(budget):
        if not active:
            return step
        progress(step)
        distances = points.distances(centres[active].reshape(-1, dim), exact)
        assigned = distances.view(len(points.x), len(active), k).argmin(2).T
        still = []
        for row, run in enumerate(active):
            unchanged = torch.equal(assigned[row], labels[run])
            means = _means(points, assigned[row], centres[run])
            shift = float(total((means - centres[run]).square()))
            centres[run], labels[run] = means, assigned[row]
            if not unchanged and shift > tol:
                still.append(run)
        active = still
    return budget


def fit(splits: Splits, params: dict, seed: int, device=CPU, progress=SILENT) -> ProbeOutcome:
    params = DEFAULTS | params
    mean, std = standardizer(splits.train_all.x)
    mean, std = mean.to(device), std.to(device)

    def prepare(x):
        return F.normalize((torch.as_tensor(x, dtype=torch.float32, device=device) - mean) / std, dim=1)

    points, k, runs, max_iter = Points(prepare(splits.train_all.x)), splits.num_classes, params["n_init"], params["max_iter"]
    progress.update(0.0, f"k-means++ seeds of {runs} runs")
    centres = points.x[_seeds(points, k, runs, np.random.default_rng(seed))]
    labels = torch.full((runs, len(points.x)), -1, device=device)
    tol = TOL * float(total((points.x - points.x.mean(0)).square().mean(0))) / points.x.shape[1]

    def step(phase):
        return lambda i: progress.update(0.2 + 0.8 * min(i, max_iter) / max_iter, f"{phase} Lloyd step {i + 1}")

    used = 0 if points.low is None else _lloyd(points, centres, labels, False, max_iter, tol, step("bf16"))
    _lloyd(points, centres, labels, True, max(1, max_iter - used), tol, step("float32"))
    inertia = [float(total(points.distances(c, exact=True).amin(1))) for c in centres]
    best = centres[int(np.argmin(inertia))]
    clusters = Points(prepare(splits.test.x), low=False).distances(best, exact=True).argmin(1)
    head = {"mean": mean, "std": std, "centroids": best}
    return ProbeOutcome(f"k={k}", {"k": k}, {}, None, head,
                        test_clusters=clusters.cpu().numpy().astype(np.int64),
                        extra={"bootstrap_resamples": params["max_bootstrap"], "inertia": min(inertia)})
