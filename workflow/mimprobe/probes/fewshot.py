"""Few-shot logistic regression (MIM-Refiner / MSN): n labelled images per class, several seeded draws.

Features are centred with the train mean and L2-normalised. For each number of shots and each
draw, `shots` images per class are sampled from train (minus validation) and a multinomial L2
logistic regression is fitted (full-batch L-BFGS, float32, until the largest gradient entry is at
most 1e-4 as in sklearn, or `max_iter`); C is chosen on the validation split by the
validation top-1 averaged over the draws. One record per shots setting (`shots=N`); its test
metrics are averaged over the draws (`top1_std`: their standard deviation), its predictions are
the draws' mean probabilities.

Head format: {mean (D,), C, draws: [{weight (K, D), bias (K,), rows (train rows used)}]};
logits = normalise(x - mean) @ weight.T + bias.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..config import probe_params
from .common import ProbeOutcome, Splits
from .lbfgs import fit_l2_linear, scores, top1
from .progress import SILENT

CPU = torch.device("cpu")



def support_rows(labels: np.ndarray, shots: int, rng) -> np.ndarray:
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), min(shots, int((labels == c).sum())),
                                      replace=False) for c in np.unique(labels)])


def fit(splits: Splits, params: dict, seed: int, device=CPU, progress=SILENT) -> list[ProbeOutcome]:
    params = probe_params("fewshot", params)
    mean = torch.as_tensor(splits.train.x.mean(0), dtype=torch.float32, device=device)

    def prepare(x):
        return F.normalize(torch.as_tensor(x, dtype=torch.float32, device=device) - mean, dim=1)

    x, x_val, x_test = prepare(splits.train.x), prepare(splits.val.x), prepare(splits.test.x)
    y, y_val = (torch.as_tensor(s.y, device=device).long() for s in (splits.train, splits.val))
    outcomes, planned = [], len(params["shots"]) * params["draws"]
    for shots in params["shots"]:
        draws = []
        for draw in range(params["draws"]):
            progress.update((len(outcomes) * params["draws"] + draw) / planned, f"shots={shots}, draw {draw + 1}")
            rows = support_rows(splits.train.y, shots, np.random.default_rng([seed, shots, draw]))
            support = torch.as_tensor(rows, device=device)
            fits, previous = {}, None
            for c in sorted(params["c_values"]):
                fits[c] = previous = fit_l2_linear(x[support], y[support], splits.num_classes, c, "logistic",
                                                   previous, params["max_iter"], params["tol"])
            draws.append((rows, fits))
        val_by_c = {c: float(np.mean([top1(x_val, y_val, fits[c]) for _, fits in draws]))
                    for c in sorted(params["c_values"])}
        best_c = max(val_by_c, key=lambda c: (val_by_c[c], -c))
        test_draws = [scores(x_test, fits[best_c]).softmax(1).cpu().numpy() for _, fits in draws]
        head = {"mean": mean, "C": best_c, "draws": [
            {"weight": fits[best_c][0].T.contiguous(), "bias": fits[best_c][1], "rows": torch.as_tensor(rows)}
            for rows, fits in draws]}
        outcomes.append(ProbeOutcome(
            f"shots={shots}", {"shots": shots, "C": best_c, "draws": params["draws"]},
            {f"shots={shots}": val_by_c[best_c]}, np.mean(test_draws, axis=0), head, test_draws=test_draws,
            extra={"c_validation": {f"C={c:g}": v for c, v in val_by_c.items()}}))
    return outcomes
