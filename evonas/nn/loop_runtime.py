"""How the generated time loop of `evonas.nn.loop_grad` is compiled and run.

- `compile_source`: the generated source (valid TorchScript and Python) compiled by TorchScript, with the
  helpers of `PRELUDE`; `NAMESPACE` holds the same helpers for running it as Python;
- `unoptimized`: a compiled function run by TorchScript's plain interpreter;
- `Functions`: the loop's four functions and how they run: in inference mode when compiled (each operator then
  skips autograd's dispatch), with their saved values in TorchScript lists (`Stores`) that never become
  Python objects.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from evonas.nn.ops import LEAKY_SLOPE, gate3, leaky_relu


def _aten(name: str) -> Callable[..., Any]:
    """An aten operator without the Python frame of `OpOverload.__call__` (~1 us a call, hundreds a step)."""
    op = getattr(torch.ops.aten, name).default
    return getattr(op, "_op", op)


# The helpers the generated code calls: Python callables for the Python run, TorchScript for the scripted one.
NAMESPACE: dict[str, Any] = {
    "torch": torch, "Tensor": Tensor, "List": list, "Tuple": tuple, "Optional": Optional, "gate3": gate3,
    "leaky_relu": leaky_relu,
    "layer_norm": torch.native_layer_norm, "sigmoid_bw": _aten("sigmoid_backward"),
    "tanh_bw": _aten("tanh_backward"), "threshold_bw": _aten("threshold_backward"),
    "leaky_bw": _aten("leaky_relu_backward"), "elu_bw": _aten("elu_backward"),
    "layer_norm_bw": _aten("native_layer_norm_backward"),
}
PRELUDE = f"""
def gate3(a: Tensor, b: Tensor, g: Tensor) -> Tensor:
    return torch.lerp(b, a, g)

def leaky_relu(a: Tensor) -> Tensor:
    return torch.nn.functional.leaky_relu(a, {LEAKY_SLOPE!r})

def layer_norm(a: Tensor, shape: List[int], w: Tensor, b: Tensor, eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    return torch.native_layer_norm(a, shape, w, b, eps)

def sigmoid_bw(g: Tensor, y: Tensor) -> Tensor:
    return torch.ops.aten.sigmoid_backward(g, y)

def tanh_bw(g: Tensor, y: Tensor) -> Tensor:
    return torch.ops.aten.tanh_backward(g, y)

def threshold_bw(g: Tensor, y: Tensor, threshold: int) -> Tensor:
    return torch.ops.aten.threshold_backward(g, y, threshold)

def leaky_bw(g: Tensor, a: Tensor, slope: float, is_result: bool) -> Tensor:
    return torch.ops.aten.leaky_relu_backward(g, a, slope, is_result)

def elu_bw(g: Tensor, alpha: float, scale: float, input_scale: float, is_result: bool, a: Tensor) -> Tensor:
    return torch.ops.aten.elu_backward(g, alpha, scale, input_scale, is_result, a)

def layer_norm_bw(g: Tensor, a: Tensor, shape: List[int], m: Tensor, r: Tensor, w: Tensor, b: Tensor,
                  mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    return torch.ops.aten.native_layer_norm_backward(g, a, shape, m, r, w, b, mask)
"""


SCRIPT_NAMES: dict[str, Any] = {"torch": torch, "Tensor": Tensor, "List": list, "Tuple": tuple, "Optional": Optional}


@functools.lru_cache(maxsize=64)
def compile_source(source: str) -> torch.jit.CompilationUnit:
    """The generated source compiled by TorchScript (cached: a cell trained at several rungs compiles once).

    Names the source does not define resolve from `SCRIPT_NAMES` (TorchScript parses type annotations itself):
    a third less compile time than resolving them from the caller's frame, and nothing else leaks in."""
    unit = torch.jit.CompilationUnit()
    unit.define(PRELUDE + source, rcb=SCRIPT_NAMES.get)
    return unit


class Stores:
    """TorchScript lists (`List[List[Tensor]]`) for the values a scripted forward saves for its backward.

    The scripted forward fills one and the scripted backward reads it, with no Python object made for each of
    their tensors (returning the lists to Python would make one per tensor, ~0.15 us each). A new typed list
    costs ~11 us, so a list comes back here, emptied, when the autograd node holding it is freed."""

    def __init__(self) -> None:
        self.free: list[Any] = []

    def take(self, owner: Any = None) -> Any:
        """An empty list, handed back (emptied) once `owner` (the node that keeps it) is gone; without an
        owner, by `give_back`."""
        store = self.free.pop() if self.free else _new_store()
        if owner is not None:
            owner.store_ref = weakref.ref(owner, lambda _, store=store: self.give_back(store))
        return store

    def give_back(self, store: Any) -> None:
        """Take back a list (emptied here)."""
        store.clear()  # the saved tensors go now, as they would have with the node
        self.free.append(store)


def _new_store() -> Any:
    store = torch._C.ScriptList([[torch.empty(0)]])  # the element type is inferred from the contents
    store.pop()
    return store


FUNCTIONS = ("forward_save", "forward", "backward", "finish")


@dataclass(frozen=True)
class Functions:
    """The generated loop's four functions (see `LoopCode._function`, `_backward` and `_finish` in
    `evonas.nn.loop_grad`) and where their saved values live."""

    forward_save: Callable[..., tuple]
    forward: Callable[..., tuple]
    backward: Callable[..., tuple]
    finish: Callable[..., tuple]
    stores: Stores | None  # lists for the saved values and the backward's per-step gradients (None: Python lists)

    def store(self, owner: Any = None) -> Any:
        """An empty list of lists of tensors; with `owner`, kept until `owner` is freed, else until `release`."""
        return [] if self.stores is None else self.stores.take(owner)

    def release(self, store: Any) -> None:
        """Hand back a list taken without an owner."""
        if self.stores is not None:
            self.stores.give_back(store)

    def mode(self) -> contextlib.AbstractContextManager:
        """The mode the training loop's scripted functions run in: inference mode, where each operator skips
        autograd's dispatch (~0.15 us of ~2 us per operator at these sizes). Their values stay inside the loop:
        what leaves it is copied into ordinary tensors (`OUT`, `finish`, clones). Python runs keep the plain
        mode, where inference mode is slower per operator."""
        return torch.inference_mode() if self.stores is not None else contextlib.nullcontext()


_get_optimize, _set_optimize = torch._C._get_graph_executor_optimize, torch._C._set_graph_executor_optimize


def unoptimized(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A TorchScript function run by the plain interpreter: the profiling executor would spend its first two
    calls (~0.1 s) profiling, for no measured gain on these straight-line loops."""
    def call(*args: Any) -> Any:  # torch.jit.optimized_execution(False), without a context manager's ~1 us
        stored = _get_optimize()
        _set_optimize(False)
        try:
            return fn(*args)
        finally:
            _set_optimize(stored)

    return call
