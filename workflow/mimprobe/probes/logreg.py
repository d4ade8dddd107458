"""Multinomial L2 logistic regression (DINOv2 `log_regression.py`), full-batch L-BFGS in torch.

Features are standardised with the train mean/std. C is chosen on validation by a coarse grid of
decades warm-started from strong to weak regularisation, refined around the best C by halving the
step (`refine_steps`); each fit runs up to `max_iter` L-BFGS iterations with products in `precision`
(bfloat16 where the CPU has it), then up to `polish_iter` float32 ones, stopping once the largest
gradient entry is ≤ `tol` (sklearn's rule) or no step improves the objective at that precision.
The chosen C is refitted on all of train and the test split scored once.

Head format: {mean (D,), std (D,), weight (K, D), bias (K,), C}; logits = ((x - mean) / std) @ weight.T + bias.
"""

from __future__ import annotations

import torch

from .common import ProbeOutcome, Splits, standardizer
from .lbfgs import Design, fit_l2_linear, scores, sweep_c, top1
from .progress import SILENT

CPU = torch.device("cpu")

DEFAULTS = {"c_values": [10.0 ** e for e in range(-6, 6)], "refine_steps": 2, "max_iter": 60, "precision": "auto",
            "polish_iter": 0, "tol": 1e-4}  # tol: max |gradient| to stop at, sklearn's default


def tensors(split, mean, std, device=CPU):
    """Standardised features and labels of a split, on `device`."""
    x = torch.as_tensor(split.x, dtype=torch.float32, device=device)
    return (x - mean.to(device)) / std.to(device), torch.as_tensor(split.y, device=device).long()


def fit(splits: Splits, params: dict, seed: int, device=CPU, progress=SILENT) -> ProbeOutcome:
    params = DEFAULTS | params
    mean, std = standardizer(splits.train.x)
    (x, y), (x_val, y_val) = tensors(splits.train, mean, std, device), tensors(splits.val, mean, std, device)
    k, design = splits.num_classes, Design.of(x, params["precision"])
    solver = {key: params[key] for key in ("max_iter", "tol", "polish_iter")}

    def fit_c(c, init):
        return fit_l2_linear(design, y, k, c, "logistic", init, **solver)

    def report(c, done, planned):
        progress.update(done / (planned + 1), f"C={c:.3g} (fit {done + 1} of {planned} on validation)")

    best_c, val_scores, fits = sweep_c(fit_c, lambda s: top1(x_val, y_val, s), params["c_values"],
                                       params["refine_steps"], report)
    progress.update(1 - 1 / (len(fits) + 1), f"C={best_c:.3g} refit on all of train")
    mean_all, std_all = standardizer(splits.train_all.x)
    x_all, y_all = tensors(splits.train_all, mean_all, std_all, device)
    final = fit_l2_linear(Design.of(x_all, params["precision"]), y_all, k, best_c, "logistic", fits[best_c],
                          **solver)
    x_test = tensors(splits.test, mean_all, std_all, device)[0]
    head = {"mean": mean_all, "std": std_all, "weight": final[0].T.contiguous(), "bias": final[1], "C": best_c}
    return ProbeOutcome(f"C={best_c:.3g}", {"C": best_c}, {f"C={c:.3g}": v for c, v in val_scores.items()},
                        scores(x_test, final).softmax(1).cpu().numpy(), head)
