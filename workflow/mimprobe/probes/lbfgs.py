"""Full-batch L-BFGS for L2-regularised linear classifiers in torch (logreg, linear SVM, few-shot).

Objective (sklearn's, divided by C·N so it does not grow with N):
    mean_i loss(x_i W + b, y_i) + ||W||² / (2 C N)      (the bias is not penalised)
with loss = multinomial cross-entropy, or one-vs-rest squared hinge (LinearSVC's default loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _loss(logits, y, kind: str):
    if kind == "logistic":
        return F.cross_entropy(logits, y)
    signs = -torch.ones_like(logits)
    signs[torch.arange(len(y)), y] = 1
    return F.relu(1 - signs * logits).pow(2).sum(1).mean()


def _lbfgs(x, y, num_classes, c, loss, weight, bias, max_iter, tol):
    weight, bias = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    penalty = 1.0 / (2 * c * len(x))
    optimiser = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=10,
                                  tolerance_grad=tol, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        logits = (x @ weight.to(x.dtype)).float() + bias
        value = _loss(logits, y, loss) + penalty * weight.pow(2).sum()
        value.backward()
        return value

    optimiser.step(closure)
    return weight.detach(), bias.detach()


def fit_l2_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, c: float, loss: str = "logistic",
                  init: tuple | None = None, max_iter: int = 100, tol: float = 1e-6, fast_iter: int = 0):
    """(weight (D, K), bias (K,)) minimising the objective above; `init` warm-starts from a solution.

    With `fast_iter` > 0 and bfloat16 products available, the first `fast_iter` iterations use
    bfloat16 products (several times faster on CPUs with AVX512-BF16 and on GPUs), then `max_iter`
    float32 iterations polish the solution (L-BFGS needs exact values near the optimum).
    """
    from .linear import matmul_dtype

    weight, bias = init if init else (torch.zeros(x.shape[1], num_classes), torch.zeros(num_classes))
    flushing = torch.set_flush_denormal(True)  # tiny softmax tails are denormal: slow on x86
    try:
        if fast_iter and matmul_dtype("auto") == torch.bfloat16:
            weight, bias = _lbfgs(x.to(torch.bfloat16), y, num_classes, c, loss, weight, bias, fast_iter, tol)
        return _lbfgs(x, y, num_classes, c, loss, weight, bias, max_iter, tol)
    finally:
        if flushing:
            torch.set_flush_denormal(False)


def scores(x: torch.Tensor, solution) -> torch.Tensor:
    return torch.addmm(solution[1], x, solution[0])


def top1(x: torch.Tensor, y: torch.Tensor, solution) -> float:
    return float((scores(x, solution).argmax(1) == y).float().mean())


def sweep_c(fit, evaluate, c_values, refine_steps: int):
    """Coarse grid (warm-started from strong to weak regularisation), then halve the step around
    the best C `refine_steps` times (CLIP_benchmark's refinement). Returns (best C, {C: score}, fits)."""
    scores_by_c, fits, previous = {}, {}, None
    for c in sorted(c_values):
        fits[c] = previous = fit(c, previous)
        scores_by_c[c] = evaluate(fits[c])
    ratio = (sorted(c_values)[1] / sorted(c_values)[0]) ** 0.5 if len(c_values) > 1 else 1.0
    for _ in range(refine_steps if len(c_values) > 1 else 0):
        best = max(scores_by_c, key=lambda c: (scores_by_c[c], -c))
        for c in (best / ratio, best * ratio):
            if c not in scores_by_c:
                fits[c] = fit(c, fits[best])
                scores_by_c[c] = evaluate(fits[c])
        ratio **= 0.5
    best = max(scores_by_c, key=lambda c: (scores_by_c[c], -c))
    return best, dict(sorted(scores_by_c.items())), fits
