"""k-means with k = number of classes: how well the features cluster by class, with no labels at all.

Features are standardised with the train mean/std and L2-normalised; k-means is fitted on all of
train and assigns the test images; test scores are ACC (clusters matched one-to-one to classes by
the Hungarian algorithm), NMI, AMI and ARI with bootstrap CIs over at most `max_bootstrap`
resamples (AMI costs ~0.2 s per 10,000-image resample). No hyper-parameters, so no validation scores.

The algorithm is sklearn's KMeans in torch, on the probe device: `n_init` runs from greedy
k-means++ seeds (2 + ln k candidates per centre, the one lowering the potential most is kept),
Lloyd iterations until no label changes or the centres move less than 1e-4 of the mean feature
variance (sklearn's `tol`), at most `max_iter`; the run with the lowest inertia wins. The runs go in
lockstep, so each pass over the features serves all of them. Distances use bfloat16 products where
the hardware has them; in Lloyd steps a point whose two nearest centres are closer than the bf16
error bound gets float32 distances, so labels are those of float32 k-means. Centres are float32
means. Seeding samples with bf16 distances, so a GPU and a CPU may seed (and end) differently.

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

    def distances(self, centres: torch.Tensor, exact: bool = False, rows=None) -> torch.Tensor:
        """Squared distances (N, len(centres)) of all points (or of `rows`), floored at 0."""
        x, squared = (self.x, self.squared) if rows is None else (self.x[rows], self.squared[rows])
        if exact or self.low is None:
            products = matmul(x, centres.T)
        else:
            low = self.low if rows is None else self.low[rows]
            products = (low @ centres.T.to(torch.bfloat16)).float()
        return (squared[:, None] - 2 * products + centres.square().sum(1)).clamp_min_(0)

    def nearest(self, centres: torch.Tensor) -> torch.Tensor:
        """Index of the nearest centre of every point (centres (runs, k, D) -> (runs, N)), as float32
        distances decide it: bf16 distances where the two nearest differ by more than their error
        bound, float32 ones for the points closer to a tie."""
        runs, k, dim = centres.shape
        flat = centres.reshape(-1, dim)
        if self.low is None:
            return self.distances(flat, exact=True).view(-1, runs, k).argmin(2).T
        # |x|² is the same for every centre: rank by |c|² - 2 x·c
        scores = torch.add(flat.square().sum(1), self.low @ flat.T.to(torch.bfloat16), alpha=-2).view(-1, runs, k)
        labels = scores.argmin(2)
        best = scores.amin(2)
        second = scores.scatter_(2, labels[..., None], float("inf")).amin(2)
        # |error| of a bf16 product x·c (inputs and output rounded, float32 sums) <= 4u |x| |c|, u = 2^-9;
        # a score holds 2 x·c, and two scores are compared
        bound = 16 * 2.0 ** -9 * self.squared.sqrt()[:, None] * centres.norm(dim=2).amax(1)
        close = (second - best) <= bound  # (N, runs)
        labels = labels.T.contiguous()
        for run in range(runs):
            rows = close[:, run].nonzero().flatten()
            if len(rows):
                labels[run, rows] = self.distances(centres[run], exact=True, rows=rows).argmin(1)
        return labels


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


def _lloyd(points: Points, centres, max_iter: int, tol: float, progress):
    """Lloyd steps of every run (centres (runs, k, D)) until each has converged: no label changed,
    or the centres moved less than `tol` (summed squares). Returns (centres, labels (runs, N))."""
    runs = len(centres)
    centres, labels = centres.clone(), torch.full((runs, len(points.x)), -1, device=centres.device)
    active = list(range(runs))
    for step in range(max_iter):
        if not active:
            break
        progress(step)
        assigned = points.nearest(centres[active])
        still = []
        for row, run in enumerate(active):
            unchanged = torch.equal(assigned[row], labels[run])
            means = _means(points, assigned[row], centres[run])
            shift = float(total((means - centres[run]).square()))
            centres[run], labels[run] = means, assigned[row]
            if not unchanged and shift > tol:
                still.append(run)
        active = still
    return centres, labels


def fit(splits: Splits, params: dict, seed: int, device=CPU, progress=SILENT) -> ProbeOutcome:
    params = DEFAULTS | params
    mean, std = standardizer(splits.train_all.x)
    mean, std = mean.to(device), std.to(device)

    def prepare(x):
        return F.normalize((torch.as_tensor(x, dtype=torch.float32, device=device) - mean) / std, dim=1)

    points, k, runs, max_iter = Points(prepare(splits.train_all.x)), splits.num_classes, params["n_init"], params["max_iter"]
    progress.update(0.0, f"k-means++ seeds of {runs} runs")
    centres = points.x[_seeds(points, k, runs, np.random.default_rng(seed))]
    tol = TOL * float(total((points.x - points.x.mean(0)).square().mean(0))) / points.x.shape[1]
    centres, _ = _lloyd(points, centres, max_iter, tol,
                        lambda i: progress.update(0.1 + 0.9 * i / max_iter, f"Lloyd step {i + 1} of at most {max_iter}"))
    inertia = [float(total(points.distances(c, exact=True).amin(1))) for c in centres]
    best = centres[int(np.argmin(inertia))]
    clusters = Points(prepare(splits.test.x), low=False).distances(best, exact=True).argmin(1)
    head = {"mean": mean, "std": std, "centroids": best}
    return ProbeOutcome(f"k={k}", {"k": k}, {}, None, head,
                        test_clusters=clusters.cpu().numpy().astype(np.int64),
                        extra={"bootstrap_resamples": params["max_bootstrap"], "inertia": min(inertia)})
