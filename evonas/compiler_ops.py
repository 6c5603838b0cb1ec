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
    """`g * a + (1 - g) * b`, written as `b + g * (a - b)` (same value, fewer kernels)."""
    return torch.addcmul(b, g, a - b)


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


class StepStore:
    """Operands and output gradients of one recurrent product, per step, for the deferred weight gradient."""

    def __init__(self) -> None:
        self.operands: list[Tensor] = []
        self.grads: dict[int, Tensor] = {}


class DeferredWeight(torch.autograd.Function):
    """Identity on a weight matrix whose gradient is computed once for all steps, as one matrix product.

    Per step, `RecurrentAddmm` records its operand and output gradient instead of producing a weight
    gradient (a thin product per step, plus summing T full-size matrices); this node runs after all of
    them in the backward pass and returns `sum_t g_t^T a_t` as a single product over T*B rows.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, store: StepStore) -> Tensor:  # type: ignore[override]
        ctx.store = store
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None]:  # type: ignore[override]
        store: StepStore = ctx.store
        if not store.grads:
            return None, None
        steps = sorted(store.grads)
        grads = torch.cat([store.grads[t] for t in steps])
        operands = torch.cat([store.operands[t] for t in steps])
        store.grads.clear()
        return grads.t().mm(operands), None


class RecurrentAddmm(torch.autograd.Function):
    """`term + a @ weight.T` for one step; its weight gradient is left to `DeferredWeight`."""

    @staticmethod
    def forward(ctx, term: Tensor, a: Tensor, weight: Tensor, store: StepStore) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(weight)
        ctx.store, ctx.step, ctx.term_dim = store, len(store.operands), term.dim()
        store.operands.append(a)
        return torch.addmm(term, a, weight.t())

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        ctx.store.grads[ctx.step] = grad
        grad_term = grad_a = None
        if ctx.needs_input_grad[0]:
            grad_term = grad if ctx.term_dim == 2 else grad.sum(0)
        if ctx.needs_input_grad[1]:
            grad_a = grad.mm(weight)
        return grad_term, grad_a, None, None


def recurrent_weight(weight: Tensor) -> tuple[Tensor, StepStore]:
    """The weight to pass to `RecurrentAddmm` in every step of one forward, and their shared store."""
    store = StepStore()
    return DeferredWeight.apply(weight, store), store


def recurrent_addmm(term: Tensor, a: Tensor, weight: Tensor, store: StepStore) -> Tensor:
    """`term + a @ weight.T` (one step of a recurrent product; see `DeferredWeight`)."""
    return RecurrentAddmm.apply(term, a, weight, store)
