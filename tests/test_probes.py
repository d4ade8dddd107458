import numpy as np
import torch

from mimprobe.probes import knn, linear
from mimprobe.probes.common import Split, Splits


def blobs(seed=0, classes=4, per_class=60, dim=16, spread=0.3, shuffle_labels=False) -> Splits:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 3

    def draw(n):
        y = np.repeat(np.arange(classes), n)
        x = (centres[y] + spread * rng.normal(size=(len(y), dim))).astype(np.float32)
        return Split(x, rng.permutation(y) if shuffle_labels else y)

    train, val, test = draw(per_class), draw(per_class // 3), draw(per_class // 2)
    return Splits(train, val, test, train, classes)


def test_knn_equals_a_brute_force_reference():
    rng = np.random.default_rng(1)
    bank, labels, queries = rng.normal(size=(50, 8)).astype(np.float32), rng.integers(0, 3, 50), \
        rng.normal(size=(7, 8)).astype(np.float32)
    got = knn.knn_probabilities(bank, labels, queries, [1, 5, 20], 3, temperature=0.1, standardize=False,
                                chunk=3)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    sims = unit(queries) @ unit(bank).T
    for k in (1, 5, 20):
        expected = np.zeros((7, 3))
        for q in range(7):
            for j in np.argsort(-sims[q])[:k]:
                expected[q, labels[j]] += np.exp(sims[q, j] / 0.1)
        expected /= expected.sum(1, keepdims=True)
        np.testing.assert_allclose(got[k], expected, rtol=1e-4, atol=1e-6)


def test_knn_and_linear_separate_blobs_and_stay_at_chance_on_shuffled_labels():
    for family, params in ((knn, {"k": [5, 10]}), (linear, {"learning_rates": [0.01, 0.1], "epochs": 10})):
        torch.manual_seed(0)
        good = family.fit(blobs(), params, seed=0)
        assert (good.test_probs.argmax(1) == blobs().test.y).mean() > 0.97
        torch.manual_seed(0)
        shuffled = blobs(shuffle_labels=True)
        chance = family.fit(shuffled, params, seed=0)
        assert (chance.test_probs.argmax(1) == shuffled.test.y).mean() < 0.45


def test_selection_never_reads_test_labels():
    splits = blobs(spread=2.0)
    chosen = knn.fit(splits, {"k": [1, 5, 20, 50]}, 0).chosen
    poisoned = Splits(splits.train, splits.val, Split(splits.test.x, np.zeros_like(splits.test.y)),
                      splits.train_all, splits.num_classes)
    assert knn.fit(poisoned, {"k": [1, 5, 20, 50]}, 0).chosen == chosen
    torch.manual_seed(0)
    linear_chosen = linear.fit(splits, {"learning_rates": [0.001, 0.1], "epochs": 3}, 0).chosen
    torch.manual_seed(0)
    assert linear.fit(poisoned, {"learning_rates": [0.001, 0.1], "epochs": 3}, 0).chosen == linear_chosen


def test_linear_probe_is_reproducible_from_its_seed():
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(linear.fit(blobs(), {"learning_rates": [0.05], "epochs": 2}, seed=0).test_probs)
    assert np.array_equal(runs[0], runs[1])
