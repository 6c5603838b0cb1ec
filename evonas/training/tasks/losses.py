"""Losses the tasks share, written for the small output layers of a search's models.

Why: with a 29-symbol vocabulary, `F.cross_entropy` spends most of its time in `log_softmax` over the last
dimension, whose CPU kernel vectorizes along the 29 classes (about 85 us forward and 70 us backward for 1,120
rows, a twelfth of a whole training step at hidden 32). Over the classes laid out along dim 0 the same kernel
vectorizes along the rows instead and takes a fifth of that. `cross_entropy_sum` computes the log-softmax that
way and writes the gradient out directly: the same values as `F.cross_entropy(..., reduction="sum")` up to
the order of float additions (the log-sum-exp and the total are summed in another order).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _log_softmax_t(logits: Tensor) -> Tensor:
    """log softmax of `[N, V]` logits over V, returned transposed as `[V, N]` (a contiguous copy first: the
    kernel reads a transposed view at half the speed)."""
    return torch.log_softmax(logits.t().contiguous(), 0)


class _CrossEntropySum(torch.autograd.Function):
    """Summed cross-entropy of logits `[N, V]` against targets `[N]`, log-softmax taken over `[V, N]`."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, target: Tensor) -> Tensor:  # type: ignore[override]
        logp = _log_softmax_t(logits)
        ctx.save_for_backward(logp, target)
        return logp.gather(0, target[None]).sum().neg()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        # d/dlogits = grad * (softmax - onehot), as log_softmax's backward computes it: grad*p, then -grad at y
        logp, target = ctx.saved_tensors
        g = logp.exp().mul_(grad)
        g.scatter_add_(0, target[None], grad.neg().expand(1, target.shape[0]))
        return g.t(), None


def cross_entropy_sum(logits: Tensor, target: Tensor) -> Tensor:
    """Sum over rows of -log softmax(logits)[target]: logits `[N, V]` floats, target `[N]` class ids."""
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [N, V] and target [N], got {tuple(logits.shape)} and {tuple(target.shape)}")
    if not (torch.is_grad_enabled() and logits.requires_grad):
        return _log_softmax_t(logits).gather(0, target[None]).sum().neg()
    return _CrossEntropySum.apply(logits, target)
