"""Classification metrics from predicted probabilities, with bootstrap 95% confidence intervals."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    flat = labels.astype(np.int64) * num_classes + predicted.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _precision_recall_f1(confusion: np.ndarray) -> dict[str, float]:
    true_pos = np.diag(confusion).astype(float)
    support = confusion.sum(axis=1).astype(float)
    predicted = confusion.sum(axis=0).astype(float)
    precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
    recall = np.divide(true_pos, support, out=np.zeros_like(true_pos), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(true_pos), where=denom > 0)
    present = support > 0  # like sklearn with labels=present classes
    weights = support / max(support.sum(), 1)
    out = {}
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        out[f"macro_{name}"] = float(values[present].mean()) if present.any() else 0.0
        out[f"weighted_{name}"] = float((values * weights).sum())
    return out


def point_metrics(labels, probs, fine_to_coarse=None) -> dict[str, float]:
    """top-1, top-5, macro/weighted precision/recall/F1 and (if given) superclass top-1."""
    num_classes = probs.shape[1]
    ranked = np.argsort(-probs, axis=1, kind="stable")
    predicted = ranked[:, 0]
    k = min(5, num_classes)
    out = {
        "top1": float((predicted == labels).mean()),
        "top5": float((ranked[:, :k] == labels[:, None]).any(axis=1).mean()),
    }
    out |= _precision_recall_f1(confusion_matrix(labels, predicted, num_classes))
    if fine_to_coarse is not None:
        mapping = np.asarray(fine_to_coarse)
        out["superclass_top1"] = float((mapping[predicted] == mapping[labels]).mean())
    return out


def per_class_accuracy(labels, probs) -> list[float | None]:
    predicted = probs.argmax(axis=1)
    return [
        float((predicted[labels == c] == c).mean()) if (labels == c).any() else None
        for c in range(probs.shape[1])
    ]


def metrics_with_ci(labels, probs, fine_to_coarse=None, resamples: int = 1000, seed: int = 0) -> dict:
    """{metric: {value, ci_low, ci_high}}; percentile bootstrap over test images."""
    values = point_metrics(labels, probs, fine_to_coarse)
    if resamples <= 0:
        return {name: {"value": v, "ci_low": None, "ci_high": None} for name, v in values.items()}
    rng = np.random.default_rng(seed)
    draws = {name: [] for name in values}
    for _ in range(resamples):
        rows = rng.integers(0, len(labels), len(labels))
        for name, v in point_metrics(labels[rows], probs[rows], fine_to_coarse).items():
            draws[name].append(v)
    return {
        name: {
            "value": values[name],
            "ci_low": float(np.percentile(draws[name], 2.5)),
            "ci_high": float(np.percentile(draws[name], 97.5)),
        }
        for name in values
    }


def _percentile_ci(values: dict, draws: dict) -> dict:
    return {name: {"value": values[name], "ci_low": float(np.percentile(draws[name], 2.5)) if draws else None,
                   "ci_high": float(np.percentile(draws[name], 97.5)) if draws else None}
            for name in values}


def _bootstrap(score, n: int, resamples: int, seed: int) -> dict:
    """{metric: [value per resample]} of `score(rows)` over percentile-bootstrap resamples."""
    if resamples <= 0:
        return {}
    rng = np.random.default_rng(seed)
    draws: dict[str, list] = {}
    for _ in range(resamples):
        for name, v in score(rng.integers(0, n, n)).items():
            draws.setdefault(name, []).append(v)
    return draws


def metrics_over_draws(labels, draw_probs: list, fine_to_coarse=None, resamples: int = 1000,
                       seed: int = 0) -> dict:
    """Few-shot: each metric averaged over seeded draws (CI: bootstrap of that mean over test
    images), plus `top1_std`, the standard deviation of top-1 across draws (no CI)."""
    def mean_over_draws(rows):
        per_draw = [point_metrics(labels[rows], p[rows], fine_to_coarse) for p in draw_probs]
        return {name: float(np.mean([d[name] for d in per_draw])) for name in per_draw[0]}

    everything = np.arange(len(labels))
    out = _percentile_ci(mean_over_draws(everything), _bootstrap(mean_over_draws, len(labels), resamples, seed))
    top1s = [point_metrics(labels, p, fine_to_coarse)["top1"] for p in draw_probs]
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


def cluster_point_metrics(labels, clusters, num_classes: int) -> dict[str, float]:
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score

    mapping = cluster_accuracy_mapping(labels, clusters, num_classes)
    return {"acc": float((mapping[clusters] == labels).mean()),
            "nmi": float(normalized_mutual_info_score(labels, clusters)),
            "ami": float(adjusted_mutual_info_score(labels, clusters)),
            "ari": float(adjusted_rand_score(labels, clusters))}


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
    values = cluster_point_metrics(labels, clusters, num_classes)
    mapping = cluster_accuracy_mapping(labels, clusters, num_classes)
    correct = mapping[clusters] == labels

    def score(rows):
        return cluster_point_metrics(labels[rows], clusters[rows], num_classes) | {"acc": float(correct[rows].mean())}

    draws = _bootstrap(score, len(labels), resamples, seed)
    intervals = _bias_corrected_ci(values, draws)
    intervals["acc"] = _percentile_ci({"acc": values["acc"]}, draws)["acc"]
    return intervals, np.eye(num_classes, dtype=np.float32)[mapping[clusters]]
