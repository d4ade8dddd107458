"""Products and reductions whose bits do not depend on the CPU thread count, on any device.

A probe run with 2 threads on a laptop and with 8 on a cluster node must write the same metrics.
Measured with torch 2.14 (MKL 2024.2, oneDNN 3.12) on 1-8 threads: oneDNN's bfloat16 products and
reductions along one axis (`sum(0)`, `sum(1)`, `mean(0)`, softmax, cumsum, topk) gave the same bits,
but MKL's float32 products did not once the output had fewer than 16 rows or a column count that
is not a multiple of 16 (edge tiles are rounded differently depending on how the threads split the
work), and neither did full reductions to a scalar (`t.sum()`, `torch.dot`). So float32 products on
the CPU go through `matmul` (padded to safe shapes with zeros, which add exact zeros) and scalar
sums through `total` (a fixed-width reduction along one axis first, then a serial one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ROWS, COLUMNS = 16, 16  # float32 products on the CPU: at least ROWS rows, a multiple of COLUMNS columns
WIDTH = 1024  # `total` reduces over rows of this width first


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for 2-D tensors, the same bits for every CPU thread count."""
    if a.device.type != "cpu" or a.dtype != torch.float32:
        return a @ b
    rows, columns = a.shape[0], b.shape[1]
    extra_rows, extra_columns = max(0, ROWS - rows), -columns % COLUMNS
    if not extra_rows and not extra_columns:
        return a @ b
    if extra_rows:
        a = F.pad(a, (0, 0, 0, extra_rows))
    if extra_columns:  # a transposed b is padded as stored (rows), not through a strided copy
        b = F.pad(b.T, (0, 0, 0, extra_columns)).T if b.T.is_contiguous() else F.pad(b, (0, extra_columns))
    return (a @ b)[:rows, :columns]


def total(t: torch.Tensor) -> torch.Tensor:
    """Sum of every entry (0-d, float32 accumulation at least), independent of the thread count:
    rows of WIDTH entries summed column by column, then the WIDTH column sums and the rest."""
    flat = t.reshape(-1)
    if flat.dtype != torch.float64:
        flat = flat.float()
    whole = flat.numel() - flat.numel() % WIDTH
    if not whole:
        return flat.sum()
    columns = flat[:whole].view(-1, WIDTH).sum(0).sum()
    return columns + flat[whole:].sum() if whole < flat.numel() else columns


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(total(a * b))


class _Linear(torch.autograd.Function):
    """x Wᵀ + b whose three products (forward, input and weight gradients) go through `matmul`."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return matmul(x, weight.T) + bias

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = matmul(grad, weight) if ctx.needs_input_grad[0] else None
        return grad_x, matmul(grad.T.contiguous(), x), grad.sum(0)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """F.linear for inputs of any leading shape, thread-count independent on the CPU."""
    flat = x.reshape(-1, x.shape[-1])
    return _Linear.apply(flat, weight, bias).view(*x.shape[:-1], weight.shape[0])


class Linear(torch.nn.Linear):
    """torch.nn.Linear (same parameters and state_dict) computed by `linear`."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last axis; torch's CPU kernel sums the affine gradients per thread."""
    mean = x.mean(-1, keepdim=True)
    centred = x - mean
    return centred * torch.rsqrt(centred.square().mean(-1, keepdim=True) + eps) * weight + bias


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over rows, the mean taken by `total` (0-d, differentiable)."""
    return total(F.cross_entropy(logits, y, reduction="none")) / len(y)


def cpu_has_fast_bf16() -> bool:
    """bf16 instructions (AVX512-BF16 or AMX) on this CPU; without them bf16 products are emulated."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, check, lambda: False)() for check in checks)


def matmul_dtype(precision: str, device=None) -> torch.dtype:
    """The dtype of a probe's large products: 'auto' is bfloat16 on GPUs that support it and on CPUs
    with bf16 instructions, float32 elsewhere; 'bfloat16' and 'float32' are taken as given."""
    if precision == "auto":
        device = torch.device(device or "cpu")
        fast = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_fast_bf16()
        return torch.bfloat16 if fast else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[precision]
