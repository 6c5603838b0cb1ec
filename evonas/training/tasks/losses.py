"""Losses the tasks share, written for the small output layers of a search's models.

Why: with a 29-symbol vocabulary, `F.cross_entropy` spends most of its time in `log_softmax` over the last
dimension, whose CPU kernel vectorizes along the 29 classes (about 85 us forward and 70 us backward for 1,120
rows: a tenth of a whole training step at hidden 32). Over the classes laid out along dim 0 the same kernel
vectorizes along the rows and takes a fifth of that. `linear_cross_entropy_sum` therefore computes the output
layer transposed (`[V, N]` logits), takes the log-softmax over dim 0 and writes the gradient out directly,
all in one autograd node: the values of `F.cross_entropy(F.linear(h, W, b), y, reduction="sum")` up to the
order of float additions (the products, the log-sum-exp and the total are summed in another order, which
moves results in the last bits).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class _LinearCrossEntropySum(torch.autograd.Function):
    """Summed cross-entropy of the logits `hidden @ weight.T + bias` against `target`, computed as `[V, N]`."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor, target: Tensor) -> Tensor:  # type: ignore[override]
        logp = _log_probs_t(hidden, weight, bias)
        ctx.save_for_backward(hidden, weight, logp, target)
        return logp.gather(0, target[None]).sum().neg()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:  # type: ignore[override]
        # d/dlogits = grad * (softmax - onehot), as log_softmax's backward computes it: grad * p, then -grad at y
        hidden, weight, logp, target = ctx.saved_tensors
        g = logp.exp().mul_(grad)  # not exp_: a retained graph reads the saved log-probabilities again
        g.scatter_add_(0, target[None], grad.neg().expand(1, target.shape[0]))
        return g.t().mm(weight), g.mm(hidden), g.sum(1), None


def _log_probs_t(hidden: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """log softmax of the logits `hidden @ weight.T + bias` over the classes, laid out as `[V, N]`."""
    return torch.log_softmax(torch.mm(weight, hidden.t()).add_(bias[:, None]), 0)


def linear_cross_entropy_sum(hidden: Tensor, weight: Tensor, bias: Tensor, target: Tensor) -> Tensor:
    """Sum over rows of -log softmax(hidden @ weight.T + bias)[target]: hidden `[N, H]`, weight `[V, H]`,
    bias `[V]`, target `[N]` class ids (a linear output layer and its cross-entropy in one step)."""
    if hidden.dim() != 2 or weight.shape[1:] != hidden.shape[1:] or target.shape != hidden.shape[:1]:
        raise ValueError(f"expected hidden [N, H], weight [V, H] and target [N], got {tuple(hidden.shape)}, "
                         f"{tuple(weight.shape)} and {tuple(target.shape)}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (hidden, weight, bias)):
        return _LinearCrossEntropySum.apply(hidden, weight, bias, target)
    return _log_probs_t(hidden, weight, bias).gather(0, target[None]).sum().neg()
