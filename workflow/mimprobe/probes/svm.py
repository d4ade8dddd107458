"""SVMs done right (the seed's RBF SVC on raw 201,728-dim features scored below chance):

- `kernel=linear`: standardised features, one-vs-rest squared-hinge linear SVM (LinearSVC's loss)
  by full-batch L-BFGS, C chosen on validation (coarse decades, refined), refitted on all of train;
- `kernel=rbf`: standardised features reduced by PCA to `pca_dim`, sklearn SVC, C and gamma (as
  multiples of 'scale') chosen on validation. SVC's cost grows with the square of the training
  size, so at most `rbf_max_train` seeded random train images are used (recorded as `rbf_train_rows`).
Test probabilities are the softmax of the decision values (SVMs give scores, not probabilities).
The linear SVM runs on the probe device; PCA and SVC run on one CPU thread (libsvm has one anyway,
and a single-threaded PCA gives the same bits whatever the job's thread count).

Head formats (plain tensors, loadable with weights_only=True): linear {mean, std, weight (K, D),
bias (K,), C}; rbf {mean, std, pca_components (P, D), pca_mean (P-space input mean), C, gamma,
support_vectors (S, P), dual_coef (K-1, S), intercept (K(K-1)/2,), n_support (K,), classes (K,)}:
libsvm's one-vs-one model, enough to recompute `SVC.decision_function`.
"""

from __future__ import annotations

import numpy as np
import torch

from .common import ProbeOutcome, Splits, standardizer
from .lbfgs import fit_l2_linear, scores, sweep_c, top1
from .logreg import tensors
from .progress import SILENT

CPU = torch.device("cpu")

DEFAULTS = {"c_values": [10.0 ** e for e in range(-5, 2)], "refine_steps": 1, "max_iter": 100, "rbf": True,
            "pca_dim": 128, "rbf_max_train": 10000, "rbf_c_values": [1.0, 10.0], "rbf_gamma_scales": [0.5, 1.0, 2.0]}


def fit_linear(splits: Splits, params: dict, device=CPU, progress=SILENT) -> ProbeOutcome:
    mean, std = standardizer(splits.train.x)
    (x, y), (x_val, y_val) = tensors(splits.train, mean, std, device), tensors(splits.val, mean, std, device)
    k = splits.num_classes
    best_c, val_scores, fits = sweep_c(
        lambda c, init: fit_l2_linear(x, y, k, c, "squared_hinge", init, params["max_iter"]),
        lambda s: top1(x_val, y_val, s), params["c_values"], params["refine_steps"],
        lambda c, done, planned: progress.update(0.5 * done / planned, f"linear SVM, C={c:.3g}"))
    mean, std = standardizer(splits.train_all.x)
    x_all, y_all = tensors(splits.train_all, mean, std, device)
    final = fit_l2_linear(x_all, y_all, k, best_c, "squared_hinge", fits[best_c], params["max_iter"])
    x_test = tensors(splits.test, mean, std, device)[0]
    head = {"mean": mean, "std": std, "weight": final[0].T.contiguous(), "bias": final[1], "C": best_c}
    return ProbeOutcome(f"kernel=linear,C={best_c:.3g}", {"kernel": "linear", "C": best_c},
                        {f"kernel=linear,C={c:.3g}": v for c, v in val_scores.items()},
                        scores(x_test, final).softmax(1).cpu().numpy(), head)


def _sample(n: int, cap: int, seed: int) -> np.ndarray:
    return np.arange(n) if n <= cap else np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


def fit_rbf(splits: Splits, params: dict, seed: int) -> ProbeOutcome:
    from sklearn.decomposition import PCA
    from sklearn.svm import SVC

    def reduce(split_x, rows):
        x = split_x[rows]
        mean, std = x.mean(0), np.maximum(x.std(0), 1e-6)
        pca = PCA(min(params["pca_dim"], *x.shape), random_state=seed).fit((x - mean) / std)
        return mean, std, pca

    def project(x, mean, std, pca):
        return pca.transform((x - mean) / std)

    rows = _sample(len(splits.train.y), params["rbf_max_train"], seed)
    mean, std, pca = reduce(splits.train.x, rows)
    x, x_val = project(splits.train.x[rows], mean, std, pca), project(splits.val.x, mean, std, pca)
    scale = float(1.0 / (x.shape[1] * x.var()))  # sklearn's gamma='scale'
    validation, candidates = {}, []
    for c in params["rbf_c_values"]:
        for g in params["rbf_gamma_scales"]:
            svc = SVC(C=c, gamma=g * scale).fit(x, splits.train.y[rows])
            validation[f"kernel=rbf,C={c:g},gamma={g:g}xscale"] = float((svc.predict(x_val) == splits.val.y).mean())
            candidates.append((c, g))
    c, g = candidates[int(np.argmax(list(validation.values())))]
    rows = _sample(len(splits.train_all.y), params["rbf_max_train"], seed)
    mean, std, pca = reduce(splits.train_all.x, rows)
    x_all = project(splits.train_all.x[rows], mean, std, pca)
    gamma = float(g / (x_all.shape[1] * x_all.var()))
    svc = SVC(C=c, gamma=gamma).fit(x_all, splits.train_all.y[rows])
    decision = svc.decision_function(project(splits.test.x, mean, std, pca))
    probs = np.zeros((len(decision), splits.num_classes), dtype=np.float32)
    probs[:, svc.classes_] = torch.as_tensor(decision).float().softmax(1).numpy()
    arrays = {"mean": mean, "std": std, "pca_components": pca.components_, "pca_mean": pca.mean_,
              "support_vectors": svc.support_vectors_, "dual_coef": svc.dual_coef_,
              "intercept": svc.intercept_, "n_support": svc.n_support_, "classes": svc.classes_}
    head = {name: torch.as_tensor(np.asarray(value)) for name, value in arrays.items()} | {"C": c, "gamma": gamma}
    return ProbeOutcome(f"kernel=rbf,C={c:g},gamma={g:g}xscale", {"kernel": "rbf", "C": c, "gamma": gamma},
                        validation, probs, head, extra={"rbf_train_rows": len(rows)})


def fit(splits: Splits, params: dict, seed: int, device=CPU, progress=SILENT) -> list[ProbeOutcome]:
    from threadpoolctl import threadpool_limits

    params = DEFAULTS | params
    outcomes = [fit_linear(splits, params, device, progress)]
    if params["rbf"]:
        progress.update(0.5, "RBF SVC")
        with threadpool_limits(1):
            outcomes.append(fit_rbf(splits, params, seed))
    return outcomes
