"""Compile a cell (DESIGN.md "Compiled cells") into a torch module that runs it over a whole sequence.

Contract: `module.cell` is the canonical cell; `module.mm` holds one `nn.Linear` per `MM` in pre-order of
`module.cell`, `module.diag` one vector per `Diag` and `module.layernorm` one `nn.LayerNorm` per `LayerNorm`,
likewise in pre-order. `forward(x[T, B, I], state=None) -> (h[T, B, H], (h_T, c_T or None))`.
Within one call steps are numbered t = 0, 1, ...: `x_prev` is zeros and `PosEnc` adds P_0 at t = 0, so a
sequence run in chunks with carried state equals the whole run only for cells without `x_prev`/`PosEnc`.

`forward` runs PyTorch's fused kernel when the cell is exactly the LSTM or the PyTorch-form GRU and runs on
the CPU (`evonas.nn.fused`; `module.use_fused = False` turns that off; on CUDA, cuDNN would copy the
stacked weights into its own layout, not measured yet), else the fast plan of `evonas.nn.fast`
(grouped, hoisted MMs); `reference_forward` is the plain node-by-node evaluator that the tests and
`benchmarks/cell_speed.py` compare it against.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from evonas.cells import Node, canonical, check, parse, preorder, to_text
from evonas.cells.ops import INPUT_SOURCES
from evonas.errors import CellError
from evonas.nn.fast import Plan, fast_forward
from evonas.nn.fused import adjacent_params, fused_forward, match, stack_members
from evonas.nn.ops import ELEMENTWISE, position_encoding

State = tuple[Tensor, Tensor | None]


def _node_sizes(cell: Node, input_size: int, hidden_size: int) -> list[int]:
    """The vector size of every node's value, in pre-order."""
    sizes: list[int] = []

    def visit(n: Node) -> int:
        slot = len(sizes)
        sizes.append(0)
        kids = [visit(c) for c in n.children]
        if n.is_source:
            size = input_size if n.op in INPUT_SOURCES else hidden_size
        elif n.op == "MM":
            size = hidden_size
        else:
            size = kids[0]
        sizes[slot] = size
        return size

    visit(cell)
    return sizes


def _diag_vector(size: int) -> nn.Parameter:
    """A Diag weight vector, initialised like PyTorch's recurrent weights: U(-1/sqrt(size), 1/sqrt(size))."""
    bound = size**-0.5
    return nn.Parameter(torch.empty(size).uniform_(-bound, bound))


class CompiledCell(nn.Module):
    """A cell as a sequence-level recurrent module (see the module docstring for the contract)."""

    def __init__(self, cell: Node, input_size: int, hidden_size: int, fast: bool = True):
        super().__init__()
        self.fast = fast  # False: run the plain node-by-node reference evaluator
        self.cell = cell
        self.text = to_text(cell)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.has_memory = any(n.op == "Memory" for n in preorder(cell))
        sizes = _node_sizes(cell, input_size, hidden_size)
        nodes = list(preorder(cell))
        operand = {id(n): sizes[i + 1] for i, n in enumerate(nodes) if n.children}  # first child follows parent
        self.mm = nn.ModuleList(nn.Linear(operand[id(n)], hidden_size) for n in nodes if n.op == "MM")
        self.diag = nn.ParameterList(_diag_vector(operand[id(n)]) for n in nodes if n.op == "Diag")
        self.layernorm = nn.ModuleList(nn.LayerNorm(operand[id(n)]) for n in nodes if n.op == "LayerNorm")
        self.plan = Plan(cell, input_size, hidden_size)
        self.fused = match(cell)  # the LSTM or PyTorch-form GRU: which MM is which gate, else None
        self.use_fused = True
        self.loop_grad = True  # False: the plan's loop under autograd instead of evonas.nn.loop_grad
        self.loop_script = True  # False: evonas.nn.loop_grad's loop runs as Python instead of TorchScript
        # Set by `use_stacked` (from evonas.training.optim.flatten): leaf tensors sharing memory (values and
        # gradients) with the groups of `adjacent_params`, stacked; the fused forward uses them while they alias
        # the parameters of module.mm
        self.stacked: list[Tensor] | None = None
        self._stacked_from: list[list[tuple[nn.Module, str, Tensor]]] = []

    def __getstate__(self) -> dict:
        """Copy/pickle without the plan (it holds closures); `__setstate__` rebuilds it from the cell."""
        state = dict(super().__getstate__())
        state.pop("plan", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.plan = Plan(self.cell, self.input_size, self.hidden_size)

    def extra_repr(self) -> str:
        return f"{self.text!r}, input_size={self.input_size}, hidden_size={self.hidden_size}"

    def adjacent_params(self) -> list[list[Tensor]]:
        """Parameter groups worth laying out one after another in memory (the fused kernel's stacked weights);
        none when an MM's weight is computed (weight drop)."""
        if self.fused is None or any(parametrize.is_parametrized(lin) for lin in self.mm):
            return []
        return adjacent_params(self.fused, self.mm)

    def use_stacked(self, stacks: list[Tensor] | None) -> None:
        """Let the fused forward read `stacks` (one tensor per group of `adjacent_params`, each sharing memory
        with its group's parameters laid out one after another) instead of stacking copies; None: stop."""
        self.stacked = stacks
        self._stacked_from = [] if stacks is None else [
            [(lin, name, getattr(lin, name)) for lin, name in group]
            for group in stack_members(self.fused, self.mm)]  # type: ignore[arg-type]

    def _aliased_stacks(self) -> list[Tensor] | None:
        """`stacked` while every stacked parameter is still the module's own (not replaced, not parametrized)
        and lies where its stack says, else None (the forward then stacks copies)."""
        if self.stacked is None:
            return None
        for group, stack in zip(self._stacked_from, self.stacked, strict=True):
            ptr, size = stack.data_ptr(), stack.element_size()
            for lin, name, param in group:
                if lin._parameters.get(name) is not param or param.data_ptr() != ptr:
                    return None
                ptr += param.numel() * size
        return self.stacked

    def initial_state(self, x: Tensor, state: State | None) -> State:
        """The given state, with zeros filled in where it is missing."""
        batch = x.shape[1]
        h0, c0 = state if state is not None else (None, None)
        if h0 is None:
            h0 = x.new_zeros(batch, self.hidden_size)
        if self.has_memory and c0 is None:
            c0 = x.new_zeros(batch, self.hidden_size)
        return h0, (c0 if self.has_memory else None)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Run the cell over `x[T, B, I]` from `state` (zeros when None); return all h and the final state."""
        if not self.fast:
            return reference_forward(self, x, state)
        _check_input(self, x)
        h, c = self.initial_state(x, state)
        if x.shape[0] == 0:
            return x.new_zeros(0, x.shape[1], self.hidden_size), (h, c)
        if self.fused is not None and self.use_fused and x.device.type == "cpu":
            out, h, c = fused_forward(self.fused, self.mm, x, h, c, self.training, self._aliased_stacks())
        else:
            out, h, c = fast_forward(self.plan, self, x, h, c)
        return out, (h, c)


def _check_input(module: CompiledCell, x: Tensor) -> None:
    if x.dim() != 3 or x.shape[2] != module.input_size:
        raise ValueError(f"expected x of shape [T, B, {module.input_size}], got {list(x.shape)}")


def reference_forward(module: CompiledCell, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
    """Plain node-by-node evaluation, one step at a time: the correctness reference and speed baseline."""
    _check_input(module, x)
    steps = x.shape[0]
    h, c = module.initial_state(x, state)
    x_prev = torch.zeros_like(x[0]) if steps else None
    pe_cache: dict[int, Tensor] = {}
    outs: list[Tensor] = []
    for t in range(steps):
        env = {"x": x[t], "x_prev": x_prev, "h_prev": h, "c_prev": c}
        counters = {"MM": 0, "Diag": 0, "LayerNorm": 0}
        memory: list[Tensor] = []

        def ev(n: Node, t: int = t, env: dict = env, counters: dict = counters, memory: list = memory) -> Tensor:
            if n.is_source:
                return env[n.op]
            if n.op in counters:
                k = counters[n.op]
                counters[n.op] += 1
                a = ev(n.children[0])
                if n.op == "MM":
                    return module.mm[k](a)
                if n.op == "Diag":
                    return module.diag[k] * a
                return module.layernorm[k](a)
            args = [ev(child) for child in n.children]
            if n.op == "PosEnc":
                size = args[0].shape[-1]
                if size not in pe_cache:
                    pe_cache[size] = position_encoding(steps, size, x.dtype, x.device)
                return args[0] + pe_cache[size][t]
            value = ELEMENTWISE[n.op](*args)
            if n.op == "Memory":
                memory.append(value)
            return value

        h = ev(module.cell)
        if module.has_memory:
            c = memory[0]
        outs.append(h)
        x_prev = x[t]
    if not outs:
        return x.new_zeros(0, x.shape[1], module.hidden_size), (h, c)
    return torch.stack(outs), (h, c)


def compile_cell(cell: Node | str, input_size: int, hidden_size: int, fast: bool = True) -> CompiledCell:
    """Check and canonicalise a cell, then build its module (fresh weights, PyTorch default init).

    `fast=False` runs the plain node-by-node evaluator (the correctness reference); both compute the same
    function with the same parameters, and `module.fast` can be switched at any time.
    """
    if input_size < 1 or hidden_size < 1:
        raise CellError(f"sizes must be positive, got input_size={input_size}, hidden_size={hidden_size}")
    node = parse(cell) if isinstance(cell, str) else cell
    node = canonical(check(node, input_size, hidden_size))
    return CompiledCell(node, input_size, hidden_size, fast=fast)
