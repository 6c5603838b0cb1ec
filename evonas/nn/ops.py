"""Operator semantics of the cell language as torch functions (shared by the reference and fast evaluators)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

DIV_EPS = 1e-3
LEAKY_SLOPE = 0.01


def safe_div(a: Tensor, b: Tensor) -> Tensor:
    """`a / (b + 1e-3 * sgn(b))` with sgn(0) = 1, so the denominator is never zero."""
    sign = (b >= 0).to(b.dtype) * 2.0 - 1.0
    return a / (b + DIV_EPS * sign)


def gate3(a: Tensor, b: Tensor, g: Tensor) -> Tensor:
    """`g * a + (1 - g) * b` as `torch.lerp(b, a, g)`: one kernel and one backward node (same value to float
    rounding: lerp computes `a - (a - b) * (1 - g)` where g >= 0.5)."""
    return torch.lerp(b, a, g)


def leaky_relu(a: Tensor) -> Tensor:
    """LeakyReLU with slope 0.01."""
    return F.leaky_relu(a, LEAKY_SLOPE)


def identity(a: Tensor) -> Tensor:
    """Memory's value is its argument."""
    return a


# Parameter-free operators: name -> function of the argument values.
ELEMENTWISE: dict[str, Callable[..., Tensor]] = {
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "ReLU": torch.relu,
    "Add": torch.add,
    "Mult": torch.mul,
    "Sub": torch.sub,
    "Div": safe_div,
    "Gate3": gate3,
    "Memory": identity,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "SELU": F.selu,
    "LeakyReLU": leaky_relu,
}


def position_encoding(steps: int, size: int, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """Sinusoidal encoding of step indices 0..steps-1 (Vaswani et al. 2017): `[steps, size]`.

    P[t, 2i] = sin(t / 10000^(2i/size)), P[t, 2i+1] = cos(t / 10000^(2i/size)).
    """
    pos = torch.arange(steps, dtype=torch.float64, device=device).unsqueeze(1)
    freq = torch.exp(torch.arange(0, size, 2, dtype=torch.float64, device=device) * (-math.log(10000.0) / size))
    pe = torch.zeros(steps, size, dtype=torch.float64, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: size // 2])
    return pe.to(dtype)


class WeightGradientTap(torch.autograd.Function):
    """Identity on the additive term `S[T, B, k*H]` of a recurrent product `S[t] + a_t @ W.T`, whose
    backward also returns W's gradient for all steps at once: `G^T A` as one product over T*B rows
    (G = the gradient of S, which is also the gradient of each step's output; A = the operands a_t).
    The steps then use `W.detach()`, so autograd computes no thin per-step weight products and sums no
    T full-size matrices.

    The operands exist only after the loop, so they reach the backward through `operands`, a list the
    caller fills during the loop and then replaces by `finish_operands` with one graph-free tensor: a
    list holding graph-connected tensors on ctx would be a reference cycle through the C++ graph that
    Python's GC cannot collect (every training step would leak). Repeated backward (retain_graph) works.
    """

    @staticmethod
    def forward(ctx, term: Tensor, weight: Tensor, operands: list[Tensor]) -> Tensor:  # type: ignore[override]
        ctx.operands = operands
        return term.view_as(term)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor | None, None]:  # type: ignore[override]
        grad_weight = None
        if ctx.needs_input_grad[1]:
            if len(ctx.operands) != 1:
                raise RuntimeError("WeightGradientTap: finish_operands was not called after the time loop")
            operands = ctx.operands[0]
            grad_weight = grad.reshape(operands.shape[0], grad.shape[-1]).t().mm(operands)
        return grad, grad_weight, None


def weight_gradient_tap(term: Tensor, weight: Tensor, operands: list[Tensor]) -> Tensor:
    """`term`, unchanged, with W's gradient attached (see `WeightGradientTap`); fill `operands` per step."""
    return WeightGradientTap.apply(term, weight, operands)


def finish_operands(operands: list[Tensor]) -> None:
    """After the loop: replace the per-step operands by their concatenation, cut from the graph."""
    with torch.no_grad():
        stacked = torch.cat(operands)
    operands[:] = [stacked]
