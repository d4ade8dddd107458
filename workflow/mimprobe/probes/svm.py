"""Support vector machines on standardised features:

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

from ..config import probe_params
from .common import ProbeOutcome, Splits
from .lbfgs import sweep_and_refit
from .progress import SILENT

CPU = torch.device("cpu")



def fit_linear(splits: Splits, params: dict, device=CPU, progress=SILENT) -> ProbeOutcome:
    best_c, val_scores, head, test_probs = sweep_and_refit(
        splits, "squared_hinge", params["c_values"], params["refine_steps"], {"max_iter": params["max_iter"]},
        device, progress, span=0.5, label="linear SVM, ")
    return ProbeOutcome(f"kernel=linear,C={best_c:.3g}", {"kernel": "linear", "C": best_c},
                        {f"kernel=linear,C={c:.3g}": v for c, v in val_scores.items()}, test_probs, head)


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

    params = probe_params("svm", params)
    outcomes = [fit_linear(splits, params, device, progress)]
    if params["rbf"]:
        progress.update(0.5, "RBF SVC")
        with threadpool_limits(1):
            outcomes.append(fit_rbf(splits, params, seed))
    return outcomes
