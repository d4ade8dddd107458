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

from ..config import probe_params
from .common import ProbeOutcome, Splits
from .lbfgs import sweep_and_refit
from .progress import SILENT

CPU = torch.device("cpu")


def fit(splits: Splits, params: dict, seed: int, device=CPU, progress=SILENT) -> ProbeOutcome:
    params = probe_params("logreg", params)
    solver = {key: params[key] for key in ("max_iter", "tol", "precision", "polish_iter")}
    best_c, val_scores, head, test_probs = sweep_and_refit(splits, "logistic", params["c_values"],
                                                           params["refine_steps"], solver, device, progress)
    return ProbeOutcome(f"C={best_c:.3g}", {"C": best_c}, {f"C={c:.3g}": v for c, v in val_scores.items()},
                        test_probs, head)
