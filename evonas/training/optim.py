"""The training loop's optimizer step over one flat buffer: zero, clip, Adam or SGD in a handful of kernels.

Why: at the search's sizes (hidden 32-64) a model has 10-20 small parameter tensors, and on the CPU
PyTorch's "foreach" optimizers and `clip_grad_norm_` loop over them one kernel at a time (Adam about 12
kernels per tensor: a fifth of a whole LSTM evaluation at hidden 32). `FlatParams` moves every parameter into
one buffer and every gradient into another (each parameter and its `.grad` stay ordinary tensors, now views
of those buffers; autograd adds into the gradient views in place), so zeroing, clipping and the update each
run once over all parameters. The arithmetic per element is that of `torch.optim.Adam` / `SGD`
(`foreach=True`, no momentum) and of `clip_grad_norm_` (whose norm is summed in another order).

`adjacent` groups of parameters are laid out one after another in the given order, so that a cell that
stacks them (the fused LSTM/GRU of `evonas.nn.fused`) reads them as one tensor instead of a copy (`flatten`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from evonas.nn.compiler import CompiledCell


class FlatParams:
    """Parameters (unique, trainable) that live in one flat buffer, and their gradients in another.

    The gradients are never set to None: `zero_grad` zeroes the buffer, so a parameter that gets no gradient
    in a step has a zero one. A parameter that never gets one stays put (its Adam state stays zero); one that
    misses a gradient after having had some would still move by Adam's momentum, where PyTorch's Adam skips a
    parameter whose gradient is None. In evonas' models every parameter gets a gradient at every step.
    """

    def __init__(self, params: Iterable[Tensor], adjacent: Sequence[Sequence[Tensor]] = ()):
        unique = list({id(p): p for p in params if p.requires_grad}.values())  # tied weights once, in order
        known, placed = {id(p) for p in unique}, set()
        order: list[Tensor] = []
        for p in [p for group in adjacent for p in group] + unique:
            if id(p) in known and id(p) not in placed:
                order.append(p)
                placed.add(id(p))
        if not order:
            raise ValueError("FlatParams needs at least one trainable parameter")
        first = order[0]
        if any(p.dtype != first.dtype or p.device != first.device for p in order):
            raise ValueError("FlatParams needs all parameters on one device with one dtype")
        self.params = order  # buffer order
        self.model_order = unique  # the order the parameters were given in
        total = sum(p.numel() for p in order)
        self.data = torch.empty(total, dtype=first.dtype, device=first.device)
        self.grad = torch.zeros(total, dtype=first.dtype, device=first.device)
        offset = 0
        self._offset: dict[int, int] = {}  # id(parameter) -> its first element in the buffers
        with torch.no_grad():
            for p in order:
                n = p.numel()
                self._offset[id(p)] = offset
                self.data[offset:offset + n].copy_(p.reshape(-1))
                p.data = self.data[offset:offset + n].view_as(p)
                p.grad = self.grad[offset:offset + n].view_as(p)
                offset += n

    def stacked(self, group: Sequence[Tensor]) -> Tensor | None:
        """A leaf tensor over `group` stacked along dim 0, sharing the parameters' memory and gradients (autograd
        adds into the gradient buffer through it); None when the group does not lie one after another here."""
        start = self._offset.get(id(group[0]))
        if start is None:
            return None
        n = 0
        for p in group:
            if self._offset.get(id(p)) != start + n or p.shape[1:] != group[0].shape[1:]:
                return None
            n += p.numel()
        shape = (sum(p.shape[0] for p in group), *group[0].shape[1:])
        leaf = nn.Parameter(self.data[start:start + n].view(shape))
        leaf.grad = self.grad[start:start + n].view(shape)
        return leaf

    def zero_grad(self) -> None:
        """Zero every gradient (one kernel); the gradient tensors stay views of the buffer."""
        self.grad.zero_()

    def clip_grad_norm_(self, max_norm: float) -> float:
        """Scale the gradients to total 2-norm at most `max_norm` (inf: no scaling); return the norm before.

        What `torch.nn.utils.clip_grad_norm_` computes (coefficient max_norm / (norm + 1e-6), applied when below
        1), with the norm taken over the whole buffer in one reduction instead of as the norm of per-tensor
        norms: the same value up to the order of float additions (a tenth of the time).
        """
        total = float(torch.linalg.vector_norm(self.grad, 2.0))
        coef = max_norm / (total + 1e-6)
        if coef < 1.0:
            self.grad.mul_(coef)
        return total


def flatten(model: nn.Module) -> FlatParams:
    """FlatParams over a model's parameters, with each compiled cell's fused stacks laid out one after another
    and handed to the cell as leaf tensors (`CompiledCell.stacked`), so its forward copies no weights."""
    cells = [m for m in model.modules() if isinstance(m, CompiledCell)]
    groups = [m.adjacent_params() for m in cells]
    flat = FlatParams(model.parameters(), [g for gs in groups for g in gs])
    for m, gs in zip(cells, groups, strict=True):
        stacks = [flat.stacked(g) for g in gs]
        m.use_stacked(stacks if stacks and all(st is not None for st in stacks) else None)  # type: ignore[arg-type]
    return flat


class FlatAdam:
    """Adam (Kingma & Ba) over a `FlatParams`, element for element `torch.optim.Adam(foreach=True)`."""

    def __init__(self, flat: FlatParams, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        self.flat, self.lr, self.betas, self.eps, self.weight_decay = flat, lr, betas, eps, weight_decay
        self.steps = 0
        self.exp_avg = torch.zeros_like(flat.data)
        self.exp_avg_sq = torch.zeros_like(flat.data)

    @torch.no_grad()
    def step(self) -> None:
        """One update from the current gradients."""
        beta1, beta2 = self.betas
        self.steps += 1
        grad = self.flat.grad
        if self.weight_decay:
            grad = grad.add(self.flat.data, alpha=self.weight_decay)
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = (self.lr / (1 - beta1 ** float(self.steps))) * -1
        denom = self.exp_avg_sq.sqrt().div_(math.sqrt(1 - beta2 ** float(self.steps))).add_(self.eps)
        self.flat.data.addcdiv_(self.exp_avg, denom, value=step_size)

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state: plain values and tensors (saved with torch.save, read with weights_only)."""
        return {"flat_adam": {"steps": self.steps, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict`, or a `torch.optim.Adam` state dict over the same parameters in model order.

        The second form is what training states saved before the flat optimizer hold. ValueError when the
        state does not fit these parameters.
        """
        if "flat_adam" in state:
            s = state["flat_adam"]
            steps, avg, avg_sq = int(s["steps"]), s["exp_avg"], s["exp_avg_sq"]
        else:
            avg, avg_sq, steps = _from_torch_adam(state, self.flat)
        if avg.shape != self.exp_avg.shape or avg_sq.shape != self.exp_avg_sq.shape:
            raise ValueError(f"optimizer state holds {avg.numel()} values, the model {self.exp_avg.numel()}")
        self.steps = steps
        self.exp_avg.copy_(avg)
        self.exp_avg_sq.copy_(avg_sq)


class FlatSGD:
    """Plain SGD (no momentum) over a `FlatParams`, element for element `torch.optim.SGD(foreach=True)`."""

    def __init__(self, flat: FlatParams, lr: float, weight_decay: float = 0.0):
        self.flat, self.lr, self.weight_decay = flat, lr, weight_decay

    @torch.no_grad()
    def step(self) -> None:
        """One update from the current gradients."""
        grad = self.flat.grad
        if self.weight_decay:
            grad = grad.add(self.flat.data, alpha=self.weight_decay)
        self.flat.data.add_(grad, alpha=-self.lr)

    def state_dict(self) -> dict[str, Any]:
        """SGD without momentum keeps no state."""
        return {"flat_sgd": {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore (any SGD state dict is accepted)."""


def _from_torch_adam(state: dict[str, Any], flat: FlatParams) -> tuple[Tensor, Tensor, int]:
    """exp_avg, exp_avg_sq (laid out as `flat`) and the step count from a `torch.optim.Adam` state dict whose
    parameter indices follow the order the parameters were given to FlatParams' caller (model order)."""
    try:
        per_param = state["state"]
        count = len(state["param_groups"][0]["params"])
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"not an optimizer state: {type(e).__name__}: {e}") from None
    if count != len(flat.params):
        raise ValueError(f"optimizer state has {count} parameters, the model {len(flat.params)}")
    avg, avg_sq = torch.zeros_like(flat.data), torch.zeros_like(flat.data)
    steps = 0
    for i, p in enumerate(flat.model_order):
        s = per_param.get(i)
        if s is None:
            continue
        start, n = flat._offset[id(p)], p.numel()
        avg[start:start + n] = s["exp_avg"].reshape(-1)
        avg_sq[start:start + n] = s["exp_avg_sq"].reshape(-1)
        steps = max(steps, int(float(s["step"])))
    return avg, avg_sq, steps
