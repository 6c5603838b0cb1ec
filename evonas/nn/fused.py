"""PyTorch's fused recurrent kernels for the cells that are exactly the LSTM or the PyTorch-form GRU.

A compiled cell whose canonical form is the LSTM, or the GRU as PyTorch writes it (the reset gate applied
after the recurrent MM), runs through `torch._VF.lstm` / `torch._VF.gru`, the kernels behind `nn.LSTM` /
`nn.GRU` (the whole time loop in C++; the compiled cell uses them on the CPU only, see `evonas.nn.compiler`):
the same function, with the weights of `module.mm` stacked in PyTorch's gate order inside each forward, so
gradients reach the contract's parameters. When the training loop has laid those weights out one after another
in memory (`adjacent_params`, used by `evonas.training.optim`), it hands the module leaf tensors over those
stacks (`CompiledCell.use_stacked`), and the forward uses them instead of stacking copies. Every other cell
runs the plan of `evonas.nn.fast`.
`match(cell)` finds which MM of the cell is which gate by matching a pattern, trying both argument orders of
`Add` and `Mult`, so any spelling with the same canonical form is recognised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from evonas.cells import Node

# Patterns: a source name, ("MM:<slot>", operand), or (op, *children). Gates: Add(MM(x), MM(h_prev)).


def _gate(name: str) -> tuple:
    return ("Add", (f"MM:{name}_x", "x"), (f"MM:{name}_h", "h_prev"))


LSTM = ("Mult", ("Sigmoid", _gate("o")), ("Tanh", ("Memory", ("Add", ("Mult", ("Sigmoid", _gate("f")), "c_prev"),
                                                             ("Mult", ("Sigmoid", _gate("i")), ("Tanh", _gate("g")))))))
GRU = ("Gate3", "h_prev", ("Tanh", ("Add", ("MM:n_x", "x"), ("Mult", ("Sigmoid", _gate("r")), ("MM:n_h", "h_prev")))),
       ("Sigmoid", _gate("z")))
GATES = {"lstm": "ifgo", "gru": "rzn"}  # PyTorch's order of the gates in its stacked weights
COMMUTATIVE = ("Add", "Mult")


@dataclass(frozen=True)
class Fused:
    """A recognised cell: `kind` (lstm or gru) and the `module.mm` indices of the x- and h-MMs, gate order."""

    kind: str
    x_mms: tuple[int, ...]
    h_mms: tuple[int, ...]


def _match(pattern: object, node: Node, path: tuple[int, ...], found: dict[str, tuple[int, ...]]) -> bool:
    """Match `node` (at `path`) against `pattern`, recording each MM slot's path in `found`."""
    if isinstance(pattern, str):
        return node.op == pattern and not node.children
    op, *kids = pattern  # type: ignore[misc]
    if op.startswith("MM:"):
        if node.op != "MM" or not _match(kids[0], node.children[0], (*path, 0), found):
            return False
        found[op[3:]] = path
        return True
    if node.op != op or len(node.children) != len(kids):
        return False
    orders = [kids, kids[::-1]] if op in COMMUTATIVE else [kids]
    for order in orders:
        trial = dict(found)
        if all(_match(p, c, (*path, i), trial) for i, (p, c) in enumerate(zip(order, node.children, strict=True))):
            found.update(trial)
            return True
    return False


def _mm_paths(node: Node) -> list[tuple[int, ...]]:
    """The path of every MM, in pre-order (the order of `module.mm`)."""
    out: list[tuple[int, ...]] = []

    def visit(n: Node, path: tuple[int, ...]) -> None:
        if n.op == "MM":
            out.append(path)
        for i, c in enumerate(n.children):
            visit(c, (*path, i))

    visit(node, ())
    return out


def match(cell: Node) -> Fused | None:
    """The fused form of a canonical cell when it is exactly the LSTM or the PyTorch-form GRU, else None."""
    for kind, pattern in (("lstm", LSTM), ("gru", GRU)):
        found: dict[str, tuple[int, ...]] = {}
        if _match(pattern, cell, (), found):
            index = {p: i for i, p in enumerate(_mm_paths(cell))}
            gates = GATES[kind]
            x_mms = tuple(index[found[f"{g}_x"]] for g in gates)
            return Fused(kind, x_mms, tuple(index[found[f"{g}_h"]] for g in gates))
    return None


def stack_members(fused: Fused, mm: nn.ModuleList) -> list[list[tuple[nn.Module, str]]]:
    """What the fused kernel stacks, as (module, parameter name), each stack in gate order: x weights, h weights,
    x biases, h biases."""
    x, h = [mm[i] for i in fused.x_mms], [mm[i] for i in fused.h_mms]
    return [[(lin, name) for lin in part] for name in ("weight", "bias") for part in (x, h)]


def adjacent_params(fused: Fused, mm: nn.ModuleList) -> list[list[Tensor]]:
    """The parameter groups the fused kernel stacks (see `stack_members`)."""
    return [[getattr(lin, name) for lin, name in group] for group in stack_members(fused, mm)]


def fused_forward(fused: Fused, mm: nn.ModuleList, x: Tensor, h: Tensor, c: Tensor | None, training: bool,
                  stacked: list[Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Run the fused kernel over `x[T, B, I]` from (h, c); return all h, h_T and c_T (None for the GRU).

    `stacked`: the four stacks of `adjacent_params` as tensors already (else they are concatenated here)."""
    params = stacked if stacked is not None else [torch.cat(group) for group in adjacent_params(fused, mm)]
    if fused.kind == "lstm":
        assert c is not None
        out, h_n, c_n = torch._VF.lstm(x, (h.unsqueeze(0), c.unsqueeze(0)), params, True, 1, 0.0, training,
                                       False, False)
        return out, h_n[0], c_n[0]
    out, h_n = torch._VF.gru(x, h.unsqueeze(0), params, True, 1, 0.0, training, False, False)
    return out, h_n[0], None
