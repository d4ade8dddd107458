"""Full-batch L-BFGS for L2-regularised linear classifiers in torch (logreg, linear SVM, few-shot).

Objective (sklearn's, divided by C·N so it does not grow with N):
    mean_i loss(x_i W + b, y_i) + ||W||² / (2 C N)      (the bias is not penalised)
with loss = multinomial cross-entropy, or one-vs-rest squared hinge (LinearSVC's default loss).
Gradients are written by hand (the residual R = d loss / d logits, then Xᵀ R): nothing is kept for
autograd, Xᵀ is stored once so its product reads memory in order, and the line search works on
cached logits, so an iteration costs two matrix products however many steps it tries.
Everything runs on the device of the features; every product and scalar reduction goes through
`ops` (or bfloat16 products), so the iterates do not depend on the CPU thread count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .common import Splits, standardizer
from .ops import dot, matmul, matmul_dtype, total
from .progress import SILENT

CPU = torch.device("cpu")


@dataclass
class Design:
    """The features of one fit, in the precisions the solver multiplies them in (built once per sweep)."""

    exact: torch.Tensor  # (N, D) float32, on the compute device
    fast: torch.Tensor | None = None  # bfloat16 copy, where the hardware multiplies it faster
    fast_t: torch.Tensor | None = None  # its transpose, contiguous

    @classmethod
    def of(cls, x, precision: str = "float32") -> Design:
        """`precision`: 'float32', 'bfloat16', or 'auto' (bfloat16 where the hardware multiplies it faster)."""
        if isinstance(x, Design):
            return x
        x = torch.as_tensor(x, dtype=torch.float32)
        if matmul_dtype(precision, x.device) != torch.bfloat16:
            return cls(x)
        fast = x.to(torch.bfloat16)
        return cls(x, fast, fast.T.contiguous())


class LogitLoss:
    """Mean loss of logits (N, K) for labels y, and its residual R = d(mean loss)/d(logits)."""

    def __init__(self, y: torch.Tensor, num_classes: int, loss: str):
        self.y, self.loss, self.count = y, loss, len(y)
        self.rows = torch.arange(len(y), device=y.device)
        self.buffer = torch.empty((len(y), num_classes), device=y.device)  # reused: the last residual
        if loss != "logistic":
            self.signs = torch.full((len(y), num_classes), -1.0, device=y.device)
            self.signs[self.rows, y] = 1

    def at(self, logits, direction=None, step: float = 0.0) -> tuple[float, torch.Tensor]:
        """(mean loss, residual) at logits + step * direction."""
        t = self.buffer.copy_(logits) if direction is None else torch.add(logits, direction, alpha=step,
                                                                           out=self.buffer)
        if self.loss == "logistic":  # softmax in place
            t.sub_(t.amax(1, keepdim=True))
            true_class = t[self.rows, self.y]
            t.exp_()
            norm = t.sum(1, keepdim=True)
            value = float(total(norm.log().squeeze(1) - true_class)) / self.count
            t.div_(norm)[self.rows, self.y] -= 1
        else:
            t.mul_(self.signs).neg_().add_(1).clamp_(min=0)  # margins
            value = float(total(t.square().sum(1))) / self.count
            t.mul_(self.signs).mul_(-2)
        return value, t.div_(self.count)


def _minimise(x, x_t, y, c, loss, weight, bias, max_iter: int, tol: float, history: int = 10):
    """L-BFGS whose line search moves along cached float32 logits: with U = X d, the logits at a step
    α are Z + α U, so a trial step costs one softmax and no matrix product, and each iteration makes
    exactly two products (X d and Xᵀ R). Accumulating Z in float32 also keeps bf16 products from
    rounding the logits themselves."""
    n, k = len(y), weight.shape[1]
    penalty = 1.0 / (2 * c * n)
    logit_loss = LogitLoss(y, k, loss)
    w, b = weight.clone(), bias.clone()
    exact = x.dtype == torch.float32
    # bf16 products write into reused buffers: fresh (N, K) tensors every iteration would be fresh
    # pages from the kernel (float32 products on the CPU are padded by ops.matmul and allocate)
    z, u = torch.empty_like(logit_loss.buffer), torch.empty_like(logit_loss.buffer)
    if not exact:
        product, low = torch.empty_like(z, dtype=x.dtype), torch.empty_like(z, dtype=x.dtype)
        grad_w = torch.empty(w.shape, dtype=x.dtype, device=x.device)

    def logits_of(w, b, out):
        if exact:
            return torch.add(matmul(x, w), b, out=out)
        torch.mm(x, w.to(x.dtype), out=product)
        return out.copy_(product).add_(b)

    def gradient(residual, w):
        if exact:
            grad = matmul(x_t, residual)
        else:
            grad = torch.mm(x_t, low.copy_(residual), out=grad_w).float()
        return torch.cat([grad.add_(w, alpha=2 * penalty).flatten(), residual.sum(0)])

    logits_of(w, b, z)
    value, residual = logit_loss.at(z)
    value += penalty * dot(w, w)
    g, memory = gradient(residual, w), []
    for _ in range(max_iter):
        if float(g.abs().max()) <= tol:
            break
        d = _lbfgs_direction(g, memory)
        slope0 = dot(g, d)
        if slope0 >= 0:  # not a descent direction: forget the curvature pairs
            memory, d, slope0 = [], -g, -dot(g, g)
        dw, db = d[:-k].view_as(w), d[-k:]
        logits_of(dw, db, u)
        w_d, d_d, w_w = dot(w, dw), dot(dw, dw), dot(w, w)

        def along(step):  # only called in this iteration, so the loop's w_d, d_d and w_w are current
            loss_value, res = logit_loss.at(z, u, step)
            return (loss_value + penalty * (w_w + 2 * step * w_d + step * step * d_d),  # noqa: B023
                    dot(res, u) + 2 * penalty * (w_d + step * d_d), res)  # noqa: B023

        accepted = _wolfe_step(along, value, slope0, 1.0 if memory else min(1.0, 1.0 / float(total(g.abs()))))
        if accepted is None:
            if not memory:
                break  # even steepest descent finds no better point: as good as this precision allows
            memory = []
            continue
        step, value, residual = accepted
        w.add_(dw, alpha=step)
        b.add_(db, alpha=step)
        z.add_(u, alpha=step)
        g_new = gradient(residual, w)
        s_vec, y_vec = d * step, g_new - g
        curvature = dot(s_vec, y_vec)
        if curvature > 1e-10:
            memory.append((s_vec, y_vec, 1.0 / curvature))
            memory = memory[-history:]
        g = g_new
    return w, b


def _wolfe_step(along, value0: float, slope0: float, step: float, trials: int = 20):
    """(step, value, residual) meeting the Wolfe conditions on a convex line function, or None.

    `along(step)` gives (value, slope, residual). The step doubles until the slope turns positive,
    then secant steps search the bracket, kept 10% away from its ends so it always shrinks.
    """
    lo, lo_slope, hi, hi_slope = 0.0, slope0, None, None
    for _ in range(trials):
        value, slope, residual = along(step)
        if value <= value0 + 1e-4 * step * slope0 and abs(slope) <= 0.9 * abs(slope0):
            return step, value, residual
        if slope < 0 and value <= value0:
            lo, lo_slope = step, slope
        else:
            hi, hi_slope = step, slope
        if hi is None:
            step *= 2
            continue
        secant = lo - lo_slope * (hi - lo) / (hi_slope - lo_slope) if hi_slope != lo_slope else (lo + hi) / 2
        step = min(max(secant, lo + 0.1 * (hi - lo)), hi - 0.1 * (hi - lo))
    return None


def _lbfgs_direction(g: torch.Tensor, memory: list) -> torch.Tensor:
    """The two-loop recursion: -H g from the stored (s, y, 1/sᵀy) pairs."""
    d, alphas = -g, []
    for s, y, rho in reversed(memory):
        alphas.append(rho * dot(s, d))
        d = d.add(y, alpha=-alphas[-1])
    if memory:
        s, y, _ = memory[-1]
        d = d * (dot(s, y) / dot(y, y))
    for (s, y, rho), alpha in zip(memory, reversed(alphas)):
        d = d.add(s, alpha=alpha - rho * dot(y, d))
    return d


def fit_l2_linear(x, y: torch.Tensor, num_classes: int, c: float, loss: str = "logistic",
                  init: tuple | None = None, max_iter: int = 100, tol: float = 1e-6, precision: str = "float32",
                  polish_iter: int = 0):
    """(weight (D, K), bias (K,)) minimising the objective above; `init` warm-starts from a solution.

    `x` is a (N, D) tensor or a `Design` (build one when fitting the same features many times; its
    precision then wins). Up to `max_iter` L-BFGS iterations multiply in that precision (bfloat16 is
    3-4x faster on CPUs with AVX512-BF16 or AMX), then up to `polish_iter` float32 iterations; each
    phase stops once the largest gradient entry is ≤ `tol`, or when no step improves the objective.
    """
    design = Design.of(x, precision)
    device = design.exact.device
    weight, bias = init if init else (torch.zeros(design.exact.shape[1], num_classes, device=device),
                                      torch.zeros(num_classes, device=device))
    flushing = torch.set_flush_denormal(True)  # tiny softmax tails are denormal: slow on x86
    try:
        if design.fast is not None:
            weight, bias = _minimise(design.fast, design.fast_t, y, c, loss, weight, bias, max_iter, tol)
            max_iter = polish_iter
        if max_iter:
            weight, bias = _minimise(design.exact, design.exact.T, y, c, loss, weight, bias, max_iter, tol)
        return weight, bias
    finally:
        if flushing:
            torch.set_flush_denormal(False)


def scores(x: torch.Tensor, solution) -> torch.Tensor:
    return matmul(x, solution[0]) + solution[1]


def top1(x: torch.Tensor, y: torch.Tensor, solution) -> float:
    return float((scores(x, solution).argmax(1) == y).float().mean())


def sweep_c(fit, evaluate, c_values, refine_steps: int, report=lambda c, done, planned: None):
    """Coarse grid (warm-started from strong to weak regularisation), then halve the step around
    the best C `refine_steps` times (CLIP_benchmark's refinement). Returns (best C, {C: score}, fits).
    `report(c, fits done, fits planned)` is called before each fit."""
    scores_by_c, fits, previous = {}, {}, None
    planned = len(c_values) + (2 * refine_steps if len(c_values) > 1 else 0)
    for c in sorted(c_values):
        report(c, len(fits), planned)
        fits[c] = previous = fit(c, previous)
        scores_by_c[c] = evaluate(fits[c])
    ratio = (sorted(c_values)[1] / sorted(c_values)[0]) ** 0.5 if len(c_values) > 1 else 1.0
    for _ in range(refine_steps if len(c_values) > 1 else 0):
        best = max(scores_by_c, key=lambda c: (scores_by_c[c], -c))
        for c in (best / ratio, best * ratio):
            if c not in scores_by_c:
                report(c, len(fits), planned)
                fits[c] = fit(c, fits[best])
                scores_by_c[c] = evaluate(fits[c])
        ratio **= 0.5
    best = max(scores_by_c, key=lambda c: (scores_by_c[c], -c))
    return best, dict(sorted(scores_by_c.items())), fits


def tensors(split, mean, std, device=CPU):
    """Standardised features and labels of a split, on `device`."""
    x = torch.as_tensor(split.x, dtype=torch.float32, device=device)
    return (x - mean.to(device)) / std.to(device), torch.as_tensor(split.y, device=device).long()


def sweep_and_refit(splits: Splits, loss: str, c_values, refine_steps: int, solver: dict, device=CPU,
                    progress=SILENT, span: float = 1.0, label: str = ""):
    """The pipeline logistic regression and the linear SVM share (they differ only in `loss`):
    standardise with train statistics, sweep C on validation (`sweep_c`), refit the best C on all of
    train (standardised with its own statistics) and score test once. `solver` holds
    `fit_l2_linear`'s max_iter, tol, precision and polish_iter; progress runs from 0 to `span`.
    Returns (best C, {C: validation top-1}, head, test probabilities)."""
    mean, std = standardizer(splits.train.x)
    (x, y), (x_val, y_val) = tensors(splits.train, mean, std, device), tensors(splits.val, mean, std, device)
    k, precision = splits.num_classes, solver.get("precision", "float32")
    design = Design.of(x, precision)

    def report(c, done, planned):
        progress.update(span * done / (planned + 1), f"{label}C={c:.3g} (fit {done + 1} of {planned} on validation)")

    best_c, val_scores, fits = sweep_c(lambda c, init: fit_l2_linear(design, y, k, c, loss, init, **solver),
                                       lambda s: top1(x_val, y_val, s), c_values, refine_steps, report)
    progress.update(span * (1 - 1 / (len(fits) + 1)), f"{label}C={best_c:.3g} refit on all of train")
    mean_all, std_all = standardizer(splits.train_all.x)
    x_all, y_all = tensors(splits.train_all, mean_all, std_all, device)
    final = fit_l2_linear(Design.of(x_all, precision), y_all, k, best_c, loss, fits[best_c], **solver)
    x_test = tensors(splits.test, mean_all, std_all, device)[0]
    head = {"mean": mean_all, "std": std_all, "weight": final[0].T.contiguous(), "bias": final[1], "C": best_c}
    return best_c, val_scores, head, scores(x_test, final).softmax(1).cpu().numpy()
