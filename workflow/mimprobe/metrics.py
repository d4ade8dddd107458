"""Classification and clustering metrics, with bootstrap 95% confidence intervals.

A bootstrap resample is `rng.integers(0, n, n)` from `np.random.default_rng(seed)`, one call per
resample, in order. Resampling images changes no image's ranking of the classes, so each image is
reduced once to an integer code (its true class and top-1/top-5/superclass hits, its predicted
class; for clustering, its cell of the cluster x class table) and every metric of a resample follows
from how often each code occurs in it: one `np.bincount` per block of resamples.
"""

from __future__ import annotations

import numpy as np

BLOCK_CELLS = 1 << 21  # resampled rows or count cells held at once: memory stays at tens of MB
HITS = 8  # outcome code = HITS * true class + top-1 hit + 2 * top-5 hit + 4 * superclass hit
EPS = np.finfo(np.float64).eps


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    flat = labels.astype(np.int64) * num_classes + predicted.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _counts(codes: np.ndarray, size: int) -> np.ndarray:
    """(B, size): how often each value in [0, size) occurs in each row of the codes (B, n)."""
    flat = codes + np.arange(len(codes))[:, None] * size
    return np.bincount(flat.ravel(), minlength=len(codes) * size).reshape(len(codes), size)


def _resample_rows(n: int, resamples: int, seed: int, cells_per_resample: int):
    """Blocks (B, n) of bootstrap row indices, B * max(n, cells_per_resample) near BLOCK_CELLS."""
    rng = np.random.default_rng(seed)
    block = max(1, BLOCK_CELLS // max(n, cells_per_resample, 1))
    for start in range(0, resamples, block):
        rows = np.empty((min(block, resamples - start), n), dtype=np.int64)
        for i in range(len(rows)):
            rows[i] = rng.integers(0, n, n)
        yield rows


def _bootstrap(score, n: int, resamples: int, seed: int, cells_per_resample: int = 1) -> dict:
    """{name: array with one entry per resample} of `score(rows)`, which scores a block of resamples."""
    if resamples <= 0:
        return {}
    blocks = [score(rows) for rows in _resample_rows(n, resamples, seed, cells_per_resample)]
    return {name: np.concatenate([b[name] for b in blocks]) for name in blocks[0]}


def _precision_recall_f1(true_pos, support, predicted) -> dict[str, np.ndarray]:
    """Macro and weighted precision/recall/F1 from per-class counts (..., C)."""
    true_pos, support, predicted = (np.asarray(a, dtype=float) for a in (true_pos, support, predicted))
    precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
    recall = np.divide(true_pos, support, out=np.zeros_like(true_pos), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(true_pos), where=denom > 0)
    present = support > 0  # like sklearn with labels=present classes
    count = present.sum(-1)
    weights = support / np.maximum(support.sum(-1, keepdims=True), 1)
    out = {}
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        total = np.where(present, values, 0.0).sum(-1)
        out[f"macro_{name}"] = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
        out[f"weighted_{name}"] = (values * weights).sum(-1)
    return out


def _ranks(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, rank of the true class) of each image, as a stable argsort of -probs ranks
    the classes (ties in class order, NaN last), counting instead of sorting rows free of NaN."""
    predicted, rank = np.empty(len(labels), dtype=np.int64), np.empty(len(labels), dtype=np.int64)
    classes = np.arange(probs.shape[1])
    step = max(1, BLOCK_CELLS // probs.shape[1])
    for start in range(0, len(labels), step):
        p, y = probs[start:start + step], labels[start:start + step, None]
        own = np.take_along_axis(p, y, axis=1)
        rank[start:start + step] = (p > own).sum(1) + ((p == own) & (classes < y)).sum(1)
        predicted[start:start + step] = p.argmax(1)
    broken = np.flatnonzero(np.isnan(probs).any(1))
    if len(broken):
        ranked = np.argsort(-probs[broken], axis=1, kind="stable")
        predicted[broken], rank[broken] = ranked[:, 0], np.argmax(ranked == labels[broken, None], axis=1)
    return predicted, rank


def _image_outcomes(labels, probs, fine_to_coarse) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, outcome code) of each image."""
    labels = np.asarray(labels, dtype=np.int64)
    predicted, rank = _ranks(labels, probs)
    hits = (predicted == labels) + 2 * (rank < 5)
    if fine_to_coarse is not None:
        mapping = np.asarray(fine_to_coarse)
        hits += 4 * (mapping[predicted] == mapping[labels])
    return predicted, HITS * labels + hits


def _scores(outcomes: np.ndarray, predicted: np.ndarray, n: int, superclass: bool) -> dict[str, np.ndarray]:
    """Every metric of `point_metrics` per resample, from counts of outcome codes (B, C * HITS) and of
    predicted classes (B, C)."""
    hits = outcomes.reshape(len(outcomes), -1, HITS)
    flag = np.arange(HITS)
    true_pos = hits[..., flag & 1 > 0].sum(-1)
    out = {"top1": true_pos.sum(-1) / n, "top5": hits[..., flag & 2 > 0].sum((1, 2)) / n}
    out |= _precision_recall_f1(true_pos, hits.sum(-1), predicted)
    if superclass:
        out["superclass_top1"] = hits[..., flag & 4 > 0].sum((1, 2)) / n
    return out


def _mean_scorer(outcomes: list, num_classes: int, superclass: bool):
    """score(rows) -> {metric: per-resample values averaged over the (predicted, code) sets of
    `outcomes`, one per probability set}, for a block of resamples (B, n)."""
    def score(rows):
        each = [_scores(_counts(codes[rows], num_classes * HITS), _counts(predicted[rows], num_classes),
                        rows.shape[1], superclass) for predicted, codes in outcomes]
        return {name: np.mean([d[name] for d in each], axis=0) for name in each[0]}
    return score


def _everything(score, n: int) -> dict[str, float]:
    return {name: float(v[0]) for name, v in score(np.arange(n)[None]).items()}


def point_metrics(labels, probs, fine_to_coarse=None) -> dict[str, float]:
    """top-1, top-5, macro/weighted precision/recall/F1 and (if given) superclass top-1."""
    outcomes = [_image_outcomes(labels, probs, fine_to_coarse)]
    return _everything(_mean_scorer(outcomes, probs.shape[1], fine_to_coarse is not None), len(labels))


def per_class_accuracy(labels, probs) -> list[float | None]:
    predicted = probs.argmax(axis=1)
    return [
        float((predicted[labels == c] == c).mean()) if (labels == c).any() else None
        for c in range(probs.shape[1])
    ]


def _percentile_ci(values: dict, draws: dict) -> dict:
    return {name: {"value": values[name], "ci_low": float(np.percentile(draws[name], 2.5)) if draws else None,
                   "ci_high": float(np.percentile(draws[name], 97.5)) if draws else None}
            for name in values}


def _intervals(labels, outcomes: list, num_classes: int, superclass: bool, resamples: int, seed: int) -> dict:
    """Percentile intervals of the metrics averaged over the outcome sets."""
    score = _mean_scorer(outcomes, num_classes, superclass)
    draws = _bootstrap(score, len(labels), resamples, seed, num_classes * HITS)
    return _percentile_ci(_everything(score, len(labels)), draws)


def metrics_with_ci(labels, probs, fine_to_coarse=None, resamples: int = 1000, seed: int = 0) -> dict:
    """{metric: {value, ci_low, ci_high}}; percentile bootstrap over test images."""
    outcomes = [_image_outcomes(labels, probs, fine_to_coarse)]
    return _intervals(labels, outcomes, probs.shape[1], fine_to_coarse is not None, resamples, seed)


def metrics_over_draws(labels, draw_probs: list, fine_to_coarse=None, resamples: int = 1000,
                       seed: int = 0) -> dict:
    """Few-shot: each metric averaged over seeded draws (CI: bootstrap of that mean over test
    images), plus `top1_std`, the standard deviation of top-1 across draws (no CI)."""
    num_classes, superclass = draw_probs[0].shape[1], fine_to_coarse is not None
    outcomes = [_image_outcomes(labels, p, fine_to_coarse) for p in draw_probs]
    out = _intervals(labels, outcomes, num_classes, superclass, resamples, seed)
    top1s = [_everything(_mean_scorer([o], num_classes, superclass), len(labels))["top1"] for o in outcomes]
    return out | {"top1_std": {"value": float(np.std(top1s)), "ci_low": None, "ci_high": None}}


def cluster_accuracy_mapping(labels, clusters, num_classes: int) -> np.ndarray:
    """cluster id -> class, the one-to-one matching with most agreements (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    size = max(num_classes, int(clusters.max()) + 1)
    agreement = confusion_matrix(clusters, labels, size)
    rows, cols = linear_sum_assignment(-agreement)
    mapping = np.zeros(size, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def _cluster_tallies(tables: np.ndarray, mapping: np.ndarray, xlogx: np.ndarray) -> dict[str, np.ndarray]:
    """What the scores need from cluster x class count tables (B, S, K): agreements under `mapping`,
    class and cluster sizes, and the sums of x log x (`xlogx[x]`, x = 0..n) and of x^2 over the cells."""
    cells = tables.reshape(len(tables), -1)
    return {"agree": tables[:, np.arange(len(mapping)), mapping].sum(-1),
            "classes": tables.sum(1), "clusters": tables.sum(2),
            "cells_xlogx": xlogx[cells].sum(-1), "cells_sq": (cells * cells).sum(-1)}


def _xlogx_table(n: int) -> np.ndarray:
    counts = np.arange(n + 1, dtype=float)
    return counts * np.log(np.maximum(counts, 1.0))


def _away_from_zero(x: np.ndarray) -> np.ndarray:
    """sklearn's guard on AMI's numerator and denominator: at least eps in magnitude, sign kept."""
    return np.where(x < 0, np.minimum(x, -EPS), np.maximum(x, EPS))


def _cluster_scores(tallies: dict, n: int) -> dict[str, np.ndarray]:
    """ACC, NMI, AMI and ARI per resample, as sklearn.metrics defines them (arithmetic mean of the
    entropies as normaliser), with ACC under a fixed matching."""
    classes, clusters = tallies["classes"], tallies["clusters"]
    xlogx = _xlogx_table(n)
    h_true, h_pred = (np.log(n) - xlogx[sizes].sum(-1) / n for sizes in (classes, clusters))
    h_joint = np.log(n) - tallies["cells_xlogx"] / n
    single_class, single_cluster = (classes > 0).sum(-1) == 1, (clusters > 0).sum(-1) == 1
    mi = np.where(single_class | single_cluster, 0.0, np.maximum(h_true + h_pred - h_joint, 0.0))
    normalizer = (h_true + h_pred) / 2
    emi = _expected_mutual_info(classes, clusters, n)
    nmi = np.divide(mi, normalizer, out=np.zeros_like(mi), where=mi != 0)
    ami = np.where(single_class | single_cluster, 0.0, _away_from_zero(mi - emi) / _away_from_zero(normalizer - emi))
    both = single_class & single_cluster  # one class, one cluster: a perfect match
    return {"acc": tallies["agree"] / n, "nmi": np.where(both, 1.0, nmi), "ami": np.where(both, 1.0, ami),
            "ari": _adjusted_rand(tallies["cells_sq"], (classes ** 2).sum(-1), (clusters ** 2).sum(-1), n)}


def _adjusted_rand(cells_sq, classes_sq, clusters_sq, n: int) -> np.ndarray:
    """sklearn's adjusted_rand_score from the pair counts, in Python integers (exact, no overflow)."""
    out = []
    for sq, class_sq, cluster_sq in zip(cells_sq.tolist(), classes_sq.tolist(), clusters_sq.tolist()):
        tp, fp, fn = sq - n, cluster_sq - sq, class_sq - sq
        tn = n * n - fp - fn - sq
        out.append(1.0 if fn == 0 and fp == 0 else
                   2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)))
    return np.array(out)


def _expected_mutual_info(classes: np.ndarray, clusters: np.ndarray, n: int) -> np.ndarray:
    """sklearn's expected mutual information for each row of class sizes (R, K) and cluster sizes
    (R, S). It sums a term fixed by (class size, cluster size, n) over all class x cluster pairs, so
    each distinct pair of sizes is computed once and weighted by how often it occurs in each row."""
    a_values, a_index = np.unique(classes, return_inverse=True)
    b_values, b_index = np.unique(clusters, return_inverse=True)
    terms = _emi_terms(a_values, b_values, n)
    a_counts = _counts(a_index.reshape(classes.shape), len(a_values)).astype(float)
    b_counts = _counts(b_index.reshape(clusters.shape), len(b_values)).astype(float)
    return ((a_counts @ terms) * b_counts).sum(-1)


def _emi_terms(a_values: np.ndarray, b_values: np.ndarray, n: int) -> np.ndarray:
    """(len(a_values), len(b_values)): the EMI summand of a class of size a and a cluster of size b,
    summed over their possible overlaps n_ij, with sklearn's expression and order of operations
    (0 where a size is 0: absent classes and clusters are no rows of sklearn's table)."""
    from scipy.special import gammaln

    log_factorial = gammaln(np.arange(n + 1) + 1.0)
    terms = np.zeros((len(a_values), len(b_values)))
    b_present = np.flatnonzero(b_values > 0)
    for i, a in enumerate(a_values.tolist()):
        if a == 0 or not len(b_present):
            continue
        overlap = np.arange(1, min(a, int(b_values[-1])) + 1)
        step = max(1, BLOCK_CELLS // (8 * len(overlap)))
        for start in range(0, len(b_present), step):
            cols = b_present[start:start + step]
            b = b_values[cols][:, None]
            valid = (overlap >= np.maximum(1, a - n + b)) & (overlap <= np.minimum(a, b))
            gln = (log_factorial[a] + log_factorial[b] + log_factorial[n - a] + log_factorial[n - b]
                   - (log_factorial[overlap] + log_factorial[n]) - log_factorial[a - overlap]
                   - log_factorial[np.maximum(b - overlap, 0)] - log_factorial[np.maximum(n - a - b + overlap, 0)])
            term3 = np.exp(np.where(valid, gln, -np.inf))
            terms[i, cols] = (overlap / n * (np.log(n) + np.log(overlap) - np.log(a) - np.log(b)) * term3).sum(-1)
    return terms


def _cluster_tallier(labels, clusters, num_classes: int):
    """(matching, tallies(rows)): the Hungarian matching found on all images, and a function giving
    `_cluster_tallies` of a block of resamples (B, n) under that matching."""
    mapping = cluster_accuracy_mapping(labels, clusters, num_classes)
    size = len(mapping)
    cells = np.asarray(clusters, dtype=np.int64) * size + np.asarray(labels, dtype=np.int64)
    xlogx = _xlogx_table(len(labels))

    def tallies(rows):
        return _cluster_tallies(_counts(cells[rows], size * size).reshape(-1, size, size), mapping, xlogx)
    return mapping, tallies


def cluster_point_metrics(labels, clusters, num_classes: int) -> dict[str, float]:
    """ACC (Hungarian matching), NMI, AMI and ARI of a clustering."""
    _, tallies = _cluster_tallier(labels, clusters, num_classes)
    return _everything(lambda rows: _cluster_scores(tallies(rows), len(labels)), len(labels))


def _bias_corrected_ci(values: dict, draws: dict) -> dict:
    """Percentile interval shifted by the bootstrap's bias estimate (mean of draws - estimate):
    duplicated resampled points inflate clustering scores, which would push a plain percentile
    interval above the estimate itself."""
    out = {}
    for name, value in values.items():
        if not draws:
            out[name] = {"value": value, "ci_low": None, "ci_high": None}
            continue
        bias = float(np.mean(draws[name])) - value
        out[name] = {"value": value, "ci_low": float(np.percentile(draws[name], 2.5)) - bias,
                     "ci_high": float(np.percentile(draws[name], 97.5)) - bias}
    return out


def cluster_metrics_with_ci(labels, clusters, resamples: int = 1000, seed: int = 0, num_classes=None):
    """({acc, nmi, ami, ari: {value, ci_low, ci_high}}, one-hot probabilities of the matched classes).

    ACC keeps the matching found on all test images (re-matching each resample inflates it), so its
    interval is a plain percentile one; NMI/AMI/ARI get bias-corrected intervals.
    """
    num_classes = num_classes or int(max(labels.max(), clusters.max())) + 1
    mapping, tallies = _cluster_tallier(labels, clusters, num_classes)
    n = len(labels)
    values = _everything(lambda rows: _cluster_scores(tallies(rows), n), n)
    # the scores of all resamples at once: the expected mutual information is computed once
    tallied = _bootstrap(tallies, n, resamples, seed, len(mapping) ** 2)
    draws = _cluster_scores(tallied, n) if tallied else {}
    intervals = _bias_corrected_ci(values, draws)
    intervals["acc"] = _percentile_ci({"acc": values["acc"]}, draws)["acc"]
    return intervals, np.eye(num_classes, dtype=np.float32)[mapping[clusters]]
