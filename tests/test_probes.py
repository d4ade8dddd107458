"""Every probe family on small synthetic features: separable -> near perfect, shuffled -> chance,
selection blind to test labels, same seed -> same result, heads usable as documented."""

import numpy as np
import pytest
import torch

from mimprobe.config import probe_params
from mimprobe.metrics import cluster_metrics_with_ci
from mimprobe.probes import attentive, fewshot, kmeans, knn, linear, logreg, mlp, svm
from mimprobe.probes.common import Split, Splits
from mimprobe.probes.lbfgs import fit_l2_linear, top1

FAST = {
    knn: {"k": [5, 10]},
    linear: {"learning_rates": [0.01, 0.1], "epochs": 8, "batch_size": 64},
    logreg: {"c_values": [0.01, 1.0], "refine_steps": 1, "max_iter": 50},
    mlp: {"epochs": 8, "hidden": [32, 32, 32], "batch_size": 16},
    svm: {"c_values": [0.01, 1.0], "refine_steps": 0, "pca_dim": 8, "rbf_c_values": [1.0], "rbf_gamma_scales": [1.0]},
    fewshot: {"shots": [5], "draws": 2, "c_values": [1.0, 10.0]},
    attentive: {"epochs": 8, "num_heads": 2, "batch_size": 32},
}


def blobs(seed=0, classes=4, per_class=60, dim=16, spread=0.3, shuffle_labels=False, tokens=0) -> Splits:
    """Class centres plus noise; with `tokens`, an (N, tokens, dim) grid of such vectors (patches)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 3

    def draw(n):
        y = np.repeat(np.arange(classes), n)
        x = (centres[y] + spread * rng.normal(size=(len(y), dim))).astype(np.float32)
        if tokens:
            x = (x[:, None] + spread * rng.normal(size=(len(y), tokens, dim))).astype(np.float32)
        return Split(x, rng.permutation(y) if shuffle_labels else y)

    train, val, test = draw(per_class), draw(per_class // 3), draw(per_class // 2)
    return Splits(train, val, test, Split(np.concatenate([train.x, val.x]), np.concatenate([train.y, val.y])),
                  classes)


def accuracies(family, splits) -> list[float]:
    torch.manual_seed(0)
    outcomes = family.fit(splits, FAST.get(family, {}), 0)
    outcomes = outcomes if isinstance(outcomes, list) else [outcomes]
    if family is kmeans:
        return [cluster_metrics_with_ci(splits.test.y, o.test_clusters, 0)[0]["acc"]["value"] for o in outcomes]
    return [float((o.test_probs.argmax(1) == splits.test.y).mean()) for o in outcomes]


@pytest.mark.parametrize("family", [knn, linear, logreg, mlp, svm, fewshot, kmeans, attentive],
                         ids=lambda m: m.__name__.split(".")[-1])
def test_family_separates_blobs_and_stays_at_chance_on_shuffled_labels(family):
    tokens = 4 if family is attentive else 0
    assert min(accuracies(family, blobs(tokens=tokens))) > 0.95
    assert max(accuracies(family, blobs(tokens=tokens, spread=3.0, shuffle_labels=True))) < 0.5  # chance 0.25


@pytest.mark.parametrize("family", [knn, linear, logreg, mlp, svm, fewshot, attentive],
                         ids=lambda m: m.__name__.split(".")[-1])
def test_selection_never_reads_test_labels(family):
    splits = blobs(spread=2.5, tokens=4 if family is attentive else 0)
    poisoned = Splits(splits.train, splits.val, Split(splits.test.x, np.zeros_like(splits.test.y)),
                      splits.train_all, splits.num_classes)
    chosen, probs = [], []
    for data in (splits, poisoned):
        torch.manual_seed(0)
        outcomes = family.fit(data, FAST[family], 0)
        outcomes = outcomes if isinstance(outcomes, list) else [outcomes]
        chosen.append([(o.setting, o.chosen, o.validation) for o in outcomes])
        probs.append([o.test_probs for o in outcomes])
    assert chosen[0] == chosen[1]
    assert all(np.array_equal(a, b) for a, b in zip(probs[0], probs[1], strict=True))


def test_knn_equals_a_brute_force_reference():
    rng = np.random.default_rng(1)
    bank, labels = rng.normal(size=(50, 8)).astype(np.float32), rng.integers(0, 3, 50)
    queries = rng.normal(size=(7, 8)).astype(np.float32)
    got = knn.knn_probabilities(bank, labels, queries, [1, 5, 20], 3, temperature=0.1, standardize=False,
                                chunk=3)

    def unit(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    sims = unit(queries) @ unit(bank).T
    for k in (1, 5, 20):
        expected = np.zeros((7, 3))
        for q in range(7):
            for j in np.argsort(-sims[q])[:k]:
                expected[q, labels[j]] += np.exp(sims[q, j] / 0.1)
        expected /= expected.sum(1, keepdims=True)
        np.testing.assert_allclose(got[k], expected, rtol=1e-4, atol=1e-6)


def test_logreg_matches_sklearn_at_the_same_c():
    from sklearn.linear_model import LogisticRegression

    splits = blobs(classes=6, per_class=150, dim=24, spread=4.0)
    mean, std = splits.train.x.mean(0), splits.train.x.std(0)
    x, x_test = (splits.train.x - mean) / std, (splits.test.x - mean) / std
    for c in (0.01, 1.0):
        ours = fit_l2_linear(torch.from_numpy(x), torch.from_numpy(splits.train.y).long(), 6, c,
                             **{k: probe_params("logreg", {})[k]
                                for k in ("max_iter", "tol", "precision", "polish_iter")})
        ours_acc = top1(torch.from_numpy(x_test), torch.from_numpy(splits.test.y).long(), ours)
        reference = LogisticRegression(C=c, max_iter=2000).fit(x, splits.train.y).score(x_test, splits.test.y)
        assert 0.4 < reference < 0.99  # a problem where the solvers can disagree
        assert abs(ours_acc - reference) <= 0.005


@pytest.mark.parametrize("loss", ["logistic", "squared_hinge"])
def test_hand_written_loss_and_residual_match_autograd(loss):
    from mimprobe.probes.lbfgs import LogitLoss

    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (40,), generator=generator)
    logits, direction = torch.randn(40, 5, generator=generator), torch.randn(40, 5, generator=generator)
    value, residual = LogitLoss(y, 5, loss).at(logits, direction, 0.3)
    at = (logits + 0.3 * direction).requires_grad_(True)
    if loss == "logistic":
        reference = torch.nn.functional.cross_entropy(at, y)
    else:
        signs = torch.where(torch.nn.functional.one_hot(y, 5).bool(), 1.0, -1.0)
        reference = (1 - signs * at).clamp(min=0).pow(2).sum(1).mean()
    reference.backward()
    assert value == pytest.approx(float(reference.detach()), abs=1e-5)
    assert torch.allclose(residual, at.grad, atol=1e-6)


def test_float32_solver_reaches_sklearns_objective():
    from sklearn.linear_model import LogisticRegression

    splits = blobs(classes=6, per_class=150, dim=24, spread=4.0)
    x, y = torch.from_numpy(splits.train.x).float(), torch.from_numpy(splits.train.y).long()
    reference = LogisticRegression(C=1.0, max_iter=2000, tol=1e-8).fit(x.numpy(), y.numpy())

    def objective(weight, bias):
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y)
        return float(loss + weight.pow(2).sum() / (2 * len(y)))

    ours = fit_l2_linear(x, y, 6, 1.0, max_iter=500, tol=1e-7)
    sklearn_solution = (torch.from_numpy(reference.coef_.T).float(), torch.from_numpy(reference.intercept_).float())
    assert objective(*ours) <= objective(*sklearn_solution) + 1e-5


def test_knn_with_a_chunked_bank_equals_one_pass():
    splits = blobs(spread=2.0)
    args = (splits.train.x, splits.train.y, splits.test.x, [1, 7, 30], 4)
    whole = knn.knn_probabilities(*args)
    chunked = knn.knn_probabilities(*args, chunk=5, bank_chunk=17)
    for k in whole:
        np.testing.assert_allclose(chunked[k], whole[k], rtol=1e-5, atol=1e-6)


def stored_blocks(blocks=4, classes=4) -> dict:
    """A fake store: (block, pooling) -> Splits; later blocks more separable."""
    return {(b, p): blobs(seed=b * 2 + (p == "mean"), spread=3.0 - 0.6 * b, classes=classes)
            for b in range(blocks) for p in ("cls", "mean")}


def test_linear_grid_trains_every_feature_set_and_its_heads_reproduce_the_test_probabilities():
    arrays = stored_blocks()
    # the same labels everywhere, as in a real store
    base = arrays[(0, "cls")]
    arrays = {k: Splits(Split(v.train.x, base.train.y), Split(v.val.x, base.val.y), Split(v.test.x, base.test.y),
                        v.train_all, v.num_classes) for k, v in arrays.items()}
    params = {"learning_rates": [0.01, 0.1], "epochs": 3, "batch_size": 32, "precision": "float32"}
    outcomes = linear.fit_store(lambda b, p: arrays[(b, p)], sorted(arrays), params, 0)
    labels = {(o.block, o.pooling) for o in outcomes}
    assert labels == {(b, p) for b in range(4) for p in ("cls", "mean")} | {(3, "cls+mean"), (3, "cls4"),
                                                                               (3, "cls4+mean")}
    grid = next(o for o in outcomes if o.pooling == "cls4+mean")
    assert grid.setting.startswith("blocks=4,lr=") and len(grid.validation) == 2
    assert set(grid.history[-1]) == {"epoch", "train_loss", "val_loss", "train_top1", "val_top1"}
    head = grid.head
    x = np.concatenate([arrays[(b, p)].test.x for b, p in zip(head["blocks"], head["poolings"])], axis=1)
    x = (torch.from_numpy(x) - head["norm_mean"]) / (head["norm_var"] + 1e-5).sqrt()
    np.testing.assert_allclose((x @ head["weight"].T + head["bias"]).softmax(1).numpy(), grid.test_probs,
                               atol=1e-4)


def test_probes_are_reproducible_from_their_seed():
    for family in (linear, logreg, mlp, fewshot):
        runs = []
        for _ in range(2):
            torch.manual_seed(123)  # a different global state must not matter either
            outcome = family.fit(blobs(), FAST[family], seed=0)
            runs.append((outcome if isinstance(outcome, list) else [outcome])[0].test_probs)
        assert np.array_equal(runs[0], runs[1]), family.__name__


def test_standardizer_in_row_blocks_equals_the_whole_array_statistics():
    from mimprobe.probes.common import standardizer

    x = (np.random.default_rng(0).normal(size=(300, 4, 5)) * 3 + 100).astype(np.float16)  # a token grid
    mean, std = standardizer(x, chunk_elements=64)  # 3 rows per block
    whole = torch.as_tensor(x.reshape(300, -1), dtype=torch.float64)
    assert torch.allclose(mean.double(), whole.mean(0), atol=1e-4)
    assert torch.allclose(std.double(), whole.std(0), rtol=1e-5)


@pytest.mark.parametrize("family", [mlp, attentive])
def test_token_grids_as_row_views_give_the_same_fit_as_copies(family):
    from mimprobe.probes.common import RowView

    copies = blobs(tokens=4)
    whole = np.concatenate([copies.train.x, copies.val.x])
    views = Splits(Split(RowView(whole, np.arange(len(copies.train.y))), copies.train.y),
                   Split(RowView(whole, np.arange(len(copies.train.y), len(whole))), copies.val.y),
                   copies.test, copies.train_all, copies.num_classes)
    assert views.train.x.base is whole and views.val.x.base is whole  # no copies held
    expected, got = family.fit(copies, FAST[family], 0), family.fit(views, FAST[family], 0)
    assert got.setting == expected.setting
    assert np.array_equal(got.test_probs, expected.test_probs)


def test_auto_precision_falls_back_to_float32_on_cpus_without_bf16(monkeypatch):
    from mimprobe.probes import ops
    from mimprobe.probes.lbfgs import Design

    monkeypatch.setattr(ops, "cpu_has_fast_bf16", lambda: False)
    assert ops.matmul_dtype("auto") == torch.float32
    assert Design.of(torch.ones(3, 2), "auto").fast is None
    monkeypatch.setattr(ops, "cpu_has_fast_bf16", lambda: True)
    assert Design.of(torch.ones(3, 2), "auto").fast.dtype == torch.bfloat16
