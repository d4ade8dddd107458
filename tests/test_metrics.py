import numpy as np
import pytest
from sklearn.metrics import (
    adjusted_mutual_info_score,
    adjusted_rand_score,
    f1_score,
    normalized_mutual_info_score,
    precision_score,
    top_k_accuracy_score,
)

from mimprobe import metrics
from mimprobe.metrics import (
    cluster_accuracy_mapping,
    cluster_metrics_with_ci,
    cluster_point_metrics,
    metrics_over_draws,
    metrics_with_ci,
    point_metrics,
)


def sorted_point_metrics(labels, probs, fine_to_coarse=None):
    """Reference: every metric from a full stable sort of the probabilities."""
    num_classes = probs.shape[1]
    ranked = np.argsort(-probs, axis=1, kind="stable")
    predicted = ranked[:, 0]
    out = {"top1": float((predicted == labels).mean()),
           "top5": float((ranked[:, :min(5, num_classes)] == labels[:, None]).any(axis=1).mean())}
    confusion = metrics.confusion_matrix(labels, predicted, num_classes)
    true_pos, support, guessed = np.diag(confusion).astype(float), confusion.sum(1).astype(float), \
        confusion.sum(0).astype(float)
    precision = np.divide(true_pos, guessed, out=np.zeros_like(true_pos), where=guessed > 0)
    recall = np.divide(true_pos, support, out=np.zeros_like(true_pos), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(true_pos), where=denom > 0)
    present, weights = support > 0, support / max(support.sum(), 1)
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        out[f"macro_{name}"] = float(values[present].mean())
        out[f"weighted_{name}"] = float((values * weights).sum())
    if fine_to_coarse is not None:
        mapping = np.asarray(fine_to_coarse)
        out["superclass_top1"] = float((mapping[predicted] == mapping[labels]).mean())
    return out


def reference_intervals(labels, draw_probs, fine_to_coarse, resamples, seed):
    """Reference: the per-resample loop, every draw re-sorted on every resample."""
    def mean_over_draws(rows):
        each = [sorted_point_metrics(labels[rows], p[rows], fine_to_coarse) for p in draw_probs]
        return {name: float(np.mean([d[name] for d in each])) for name in each[0]}

    rng = np.random.default_rng(seed)
    draws = [mean_over_draws(rng.integers(0, len(labels), len(labels))) for _ in range(resamples)]
    return {name: {"value": value, "ci_low": float(np.percentile([d[name] for d in draws], 2.5)),
                   "ci_high": float(np.percentile([d[name] for d in draws], 97.5))}
            for name, value in mean_over_draws(np.arange(len(labels))).items()}


def sklearn_cluster_scores(labels, clusters, mapping):
    return {"acc": float((mapping[clusters] == labels).mean()),
            "nmi": normalized_mutual_info_score(labels, clusters),
            "ami": adjusted_mutual_info_score(labels, clusters),
            "ari": adjusted_rand_score(labels, clusters)}


def reference_cluster_intervals(labels, clusters, num_classes, resamples, seed):
    """Reference: sklearn on every resample, ACC under the matching found on all images."""
    mapping = cluster_accuracy_mapping(labels, clusters, num_classes)
    values = sklearn_cluster_scores(labels, clusters, mapping)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        rows = rng.integers(0, len(labels), len(labels))
        draws.append(sklearn_cluster_scores(labels[rows], clusters[rows], mapping))
    out = {}
    for name, value in values.items():
        column = [d[name] for d in draws]
        bias = 0.0 if name == "acc" else float(np.mean(column)) - value
        out[name] = {"value": value, "ci_low": float(np.percentile(column, 2.5)) - bias,
                     "ci_high": float(np.percentile(column, 97.5)) - bias}
    return out


def assert_intervals_equal(got, expected, tolerance):
    assert list(got) == list(expected)
    for name in expected:
        for field in ("value", "ci_low", "ci_high"):
            assert got[name][field] == pytest.approx(expected[name][field], abs=tolerance), (name, field)


def tied_probabilities(seed, n, num_classes=9, missing=2):
    """Labels that never use the last `missing` classes; probabilities with exact ties on some rows."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes - missing, n)
    probs = rng.dirichlet(np.ones(num_classes), n)
    probs[: n // 4] = np.round(probs[: n // 4] * 4) / 4
    probs[np.arange(n // 2), labels[: n // 2]] += 0.5
    return labels, probs


@pytest.mark.parametrize("n", [37, 60])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_intervals_equal_the_per_resample_loop(seed, n):
    labels, probs = tied_probabilities(seed, n)
    coarse = np.arange(9) % 4
    for fine_to_coarse in (None, coarse):
        got = metrics_with_ci(labels, probs, fine_to_coarse, resamples=120, seed=seed)
        assert_intervals_equal(got, reference_intervals(labels, [probs], fine_to_coarse, 120, seed), 1e-12)
    assert "superclass_top1" in got and got["top1"]["ci_low"] < got["top1"]["ci_high"]


@pytest.mark.parametrize("n", [37, 60])
@pytest.mark.parametrize("seed", [0, 3])
def test_few_shot_intervals_equal_the_per_resample_loop(seed, n):
    labels, probs = tied_probabilities(seed, n)
    rng = np.random.default_rng(seed + 100)
    draws = [probs, rng.dirichlet(np.ones(9), n), np.roll(probs, 1, axis=1)]
    coarse = np.arange(9) % 4
    for fine_to_coarse in (None, coarse):
        got = metrics_over_draws(labels, draws, fine_to_coarse, resamples=80, seed=seed)
        top1s = [sorted_point_metrics(labels, p)["top1"] for p in draws]
        assert got.pop("top1_std") == {"value": pytest.approx(float(np.std(top1s)), abs=1e-15),
                                       "ci_low": None, "ci_high": None}
        assert_intervals_equal(got, reference_intervals(labels, draws, fine_to_coarse, 80, seed), 1e-12)


def test_results_do_not_depend_on_the_block_size(monkeypatch):
    labels, probs = tied_probabilities(5, 101)
    clusters = np.where(np.arange(101) % 3 == 0, labels, (labels * 7 + 3) % 9)
    whole = metrics_with_ci(labels, probs, None, 50, 5), cluster_metrics_with_ci(labels, clusters, 50, 5, 9)[0]
    monkeypatch.setattr(metrics, "BLOCK_CELLS", 1)  # one resample per block
    assert (metrics_with_ci(labels, probs, None, 50, 5), cluster_metrics_with_ci(labels, clusters, 50, 5, 9)[0]) \
        == whole
    monkeypatch.setattr(metrics, "BLOCK_CELLS", 101 * 7)  # 7 resamples per block, the last one short
    assert metrics_with_ci(labels, probs, None, 50, 5) == whole[0]


def test_ranking_matches_a_stable_sort_through_ties_infinities_and_nan():
    rng = np.random.default_rng(0)
    for trial in range(60):
        num_classes, n = int(rng.integers(1, 12)), int(rng.integers(1, 40))
        probs = rng.integers(0, 4, (n, num_classes)) / 4
        probs[rng.random(probs.shape) < 0.1] = [np.nan, np.inf, -0.0][trial % 3]
        labels, coarse = rng.integers(0, num_classes, n), rng.integers(0, 3, num_classes)
        with np.errstate(invalid="ignore"):
            got, expected = point_metrics(labels, probs, coarse), sorted_point_metrics(labels, probs, coarse)
        assert got == pytest.approx(expected, abs=1e-12), trial


def test_metrics_match_sklearn_and_the_interval_brackets_the_value():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 8, 300)
    probs = rng.dirichlet(np.ones(8), 300)
    probs[np.arange(150), labels[:150]] += 1.0
    probs /= probs.sum(1, keepdims=True)
    got = point_metrics(labels, probs)
    assert np.isclose(got["top5"], top_k_accuracy_score(labels, probs, k=5))
    assert np.isclose(got["macro_f1"], f1_score(labels, probs.argmax(1), average="macro"))
    assert np.isclose(got["weighted_precision"],
                      precision_score(labels, probs.argmax(1), average="weighted", zero_division=0))
    with_ci = metrics_with_ci(labels, probs, resamples=200, seed=0)
    assert with_ci["top1"]["ci_low"] < with_ci["top1"]["value"] < with_ci["top1"]["ci_high"]


def test_no_resamples_means_no_intervals():
    labels, probs = tied_probabilities(0, 30)
    assert all(v["ci_low"] is None and v["ci_high"] is None for v in metrics_with_ci(labels, probs, None, 0).values())
    intervals, _ = cluster_metrics_with_ci(labels, probs.argmax(1), 0, 0, 9)
    assert intervals["ami"]["value"] == pytest.approx(adjusted_mutual_info_score(labels, probs.argmax(1)), abs=1e-10)
    assert intervals["ami"]["ci_low"] is None


def clusterings():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 400)
    yield "weak", labels, np.where(rng.random(400) < 0.3, labels, rng.integers(0, 10, 400))
    yield "perfect, renamed", labels, (labels * 3 + 1) % 10
    yield "one cluster", labels, np.zeros(400, dtype=np.int64)
    yield "one class", np.full(50, 2), rng.integers(0, 4, 50)
    yield "one class, one cluster", np.full(50, 2), np.full(50, 5)
    yield "more clusters than classes", labels, rng.integers(0, 14, 400)
    yield "skewed", labels, np.minimum(rng.geometric(0.4, 400) - 1, 9)
    yield "overlaps forced (a + b > n)", np.array([0] * 7 + [1] * 3), np.array([0] * 6 + [1] * 2 + [0] * 2)


@pytest.mark.parametrize("case", list(clusterings()), ids=lambda c: c[0])
def test_cluster_scores_match_sklearn(case):
    _, labels, clusters = case
    num_classes = int(max(labels.max(), clusters.max())) + 1
    got = cluster_point_metrics(labels, clusters, num_classes)
    expected = sklearn_cluster_scores(labels, clusters, cluster_accuracy_mapping(labels, clusters, num_classes))
    assert got == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cluster_intervals_equal_sklearn_on_every_resample(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, 77 + seed)
    clusters = np.where(rng.random(len(labels)) < 0.5, labels, rng.integers(0, 7, len(labels)))
    got, one_hot = cluster_metrics_with_ci(labels, clusters, resamples=60, seed=seed, num_classes=7)
    assert_intervals_equal(got, reference_cluster_intervals(labels, clusters, 7, 60, seed), 1e-10)
    mapping = cluster_accuracy_mapping(labels, clusters, 7)
    assert np.array_equal(one_hot.argmax(1), mapping[clusters]) and one_hot.sum() == len(labels)


def test_clustering_intervals_bracket_the_estimate():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 400)
    clusters = np.where(rng.random(400) < 0.3, labels, rng.integers(0, 10, 400))  # weak clustering
    intervals, _ = cluster_metrics_with_ci(labels, clusters, resamples=100, seed=0, num_classes=10)
    for name in ("acc", "nmi", "ami", "ari"):
        assert intervals[name]["ci_low"] <= intervals[name]["value"] <= intervals[name]["ci_high"], name
