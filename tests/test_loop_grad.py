"""The plan's time loop as one autograd node (evonas.nn.loop_grad) against autograd of the reference evaluator.

Differential: on many random cells over every operator, at input sizes that differ from the hidden size, the
outputs, c_T and the gradients of a loss on all h, h_T and c_T, with respect to the inputs, the initial state
and every parameter, agree with torch autograd through the node-by-node evaluator to 1e-5 (float64), for the
new path (compiled by TorchScript, and run as Python: the two equal bit for bit) and for the plan under
autograd (`module.loop_grad = False`), which stays selectable.
"""

from __future__ import annotations

import weakref

import pytest
import torch
from test_compiler import OPERATOR_CELLS, PLAN_CASES, random_cells

from evonas.cells import ALL, CORE, EXTENDED
from evonas.cells.library import resolve
from evonas.nn.compiler import CompiledCell, compile_cell, reference_forward
from evonas.nn.model import CellModel

SIZES = [(3, 5), (6, 4), (4, 4), (1, 2)]


def loss_of(out: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None, weights: list[torch.Tensor]) -> torch.Tensor:
    """A loss reading all h, h_T and c_T, with fixed random weights (so no gradient is trivially symmetric)."""
    loss = (out.tanh() * weights[0]).sum() + (h * weights[1]).sum()
    return loss + (c * weights[2]).sum() if c is not None else loss


def assert_loop_grad_equals_reference(cell: object, inp: int, hid: int, seed: int = 0) -> None:
    """Both plan paths agree with the reference in value and in every gradient; the new one is really used."""
    torch.manual_seed(seed)
    module = compile_cell(cell, inp, hid).double()
    module.use_fused = False
    assert module.plan.loop_code().supported, module.text
    x = torch.randn(6, 3, inp, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, hid, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(3, hid, dtype=torch.float64, requires_grad=True) if module.has_memory else None
    weights = [torch.randn(6, 3, hid, dtype=torch.float64), torch.randn(3, hid, dtype=torch.float64),
               torch.randn(3, hid, dtype=torch.float64)]
    wrt = [x, h0, *([c0] if c0 is not None else []), *module.parameters()]
    want, (wh, wc) = reference_forward(module, x, (h0, c0))
    grads_ref = torch.autograd.grad(loss_of(want, wh, wc, weights), wrt, allow_unused=True)
    results = {}
    for loop_grad, script in ((True, True), (True, False), (False, False)):
        module.loop_grad, module.loop_script = loop_grad, script
        got, (gh, gc) = module(x, (h0, c0))
        if loop_grad:
            assert type(got.grad_fn).__name__ == "_LoopBackward", module.text
        if script:
            assert module.plan.loop_code().script_error is None, module.plan.loop_code().script_error
        msg = f"{module.text} (loop_grad: {loop_grad}, TorchScript: {script}, sizes {inp}, {hid})"
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, equal_nan=True, msg=msg)
        torch.testing.assert_close(gh, wh, atol=1e-5, rtol=1e-5, equal_nan=True, msg=msg)
        if wc is not None:
            torch.testing.assert_close(gc, wc, atol=1e-5, rtol=1e-5, equal_nan=True, msg=msg)
        grads = torch.autograd.grad(loss_of(got, gh, gc, weights), wrt, allow_unused=True)
        for g, r in zip(grads, grads_ref, strict=True):
            if g is None or r is None:
                assert (g is None or not g.any()) and (r is None or not r.any()), msg
            else:
                torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5, equal_nan=True, msg=msg)
        results[(loop_grad, script)] = [got, gh, *grads]
    # the TorchScript loop runs the same operators as its Python source: equal, not just close
    for a, b in zip(results[(True, True)], results[(True, False)], strict=True):
        assert (a is None and b is None) or torch.equal(a.nan_to_num(), b.nan_to_num()), module.text


@pytest.mark.parametrize("op", sorted(OPERATOR_CELLS))
def test_every_operator_is_covered_and_exact(op: str) -> None:
    for text in OPERATOR_CELLS[op]:
        for inp, hid in SIZES:
            assert_loop_grad_equals_reference(text, inp, hid)


@pytest.mark.parametrize("text", PLAN_CASES)
def test_plan_cases(text: str) -> None:
    for inp, hid in SIZES:
        assert_loop_grad_equals_reference(text, inp, hid)


@pytest.mark.parametrize("ops", [CORE, EXTENDED, ALL], ids=["core", "extended", "all"])
@pytest.mark.parametrize("inp, hid", SIZES[:3])
def test_random_cells(ops: frozenset[str], inp: int, hid: int) -> None:
    for i, cell in enumerate(random_cells(1000 + len(ops) + 10 * inp + hid, 15, ops, inp, hid)):
        assert_loop_grad_equals_reference(cell, inp, hid, seed=i)


def test_library_cells() -> None:
    from evonas.cells.library import library

    for entry in library().values():
        assert_loop_grad_equals_reference(entry.text, 3, 5)


def test_no_grad_and_inference_mode_forward_equal_reference() -> None:
    torch.manual_seed(1)
    for text in PLAN_CASES:
        module = compile_cell(text, 3, 5)
        module.use_fused = False
        x = torch.randn(6, 2, 3)
        want, (wh, _) = reference_forward(module, x)
        for mode in (torch.no_grad, torch.inference_mode):
            with mode():
                got, (h, _) = module(x)
            assert not got.requires_grad
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(h, wh, atol=1e-5, rtol=1e-5)


def test_forward_backward_frees_the_graph() -> None:
    """No reference cycle through the autograd graph (c_T is also a saved value of the loop)."""
    module = compile_cell("Mult(Tanh(Memory(Add(MM(x),Mult(c_prev,MM(h_prev))))),Sigmoid(MM(h_prev)))", 3, 4)
    x = torch.randn(6, 2, 3)
    h0 = torch.randn(2, 4, requires_grad=True)
    out, (h, c) = module(x, (h0, torch.zeros(2, 4)))
    (out.sum() + c.sum()).backward()
    assert h0.grad is not None
    refs = [weakref.ref(h0), weakref.ref(h), weakref.ref(c)]
    del out, h, c, h0
    assert all(ref() is None for ref in refs)


@pytest.mark.parametrize("text", ["gru", PLAN_CASES[5], PLAN_CASES[7]])
def test_training_steps_match_the_autograd_path(text: str, one_torch_thread: None) -> None:
    """float32 Adam steps of a whole model: the same losses either way (float rounding only)."""
    losses: dict[bool, list[float]] = {}
    for loop_grad in (True, False):
        torch.manual_seed(3)
        model = CellModel(resolve(text), "tokens", 11, 11, 16)
        cell: CompiledCell = model.cells[0]
        cell.loop_grad = loop_grad
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(4)
        losses[loop_grad] = []
        for _ in range(8):
            x = torch.randint(0, 11, (9, 5), generator=gen)
            logits, _ = model(x)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), x.roll(-1, 0).reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[loop_grad].append(loss.item())
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_a_source_torchscript_refuses_runs_as_python(monkeypatch: pytest.MonkeyPatch) -> None:
    import evonas.nn.loop_grad as loop_grad

    def refuse(source: str) -> None:
        raise RuntimeError("Unknown builtin op: aten::made_up\nmore detail")

    torch.manual_seed(0)
    module = compile_cell(resolve("gru"), 4, 4)
    x = torch.randn(5, 2, 4, requires_grad=True)
    want = torch.autograd.grad(module(x)[0].square().sum(), x)[0]
    monkeypatch.setattr(loop_grad, "compile_source", refuse)
    fresh = compile_cell(resolve("gru"), 4, 4)
    fresh.load_state_dict(module.state_dict())
    got = torch.autograd.grad(fresh(x)[0].square().sum(), x)[0]
    code = fresh.plan.loop_code()
    assert code.script_error == "RuntimeError: Unknown builtin op: aten::made_up"
    assert code.functions() is code.functions(script=False)
    assert torch.equal(got, want)


@pytest.mark.parametrize("script", [True, False])
def test_a_retained_graph_gives_the_same_gradients_twice(script: bool) -> None:
    """The saved values outlive the first backward (loss1.backward(retain_graph=True); loss2.backward())."""
    torch.manual_seed(0)
    module = compile_cell(PLAN_CASES[5], 4, 5)
    module.use_fused, module.loop_script = False, script
    x = torch.randn(6, 3, 4, requires_grad=True)
    out, _ = module(x)
    assert type(out.grad_fn).__name__ == "_LoopBackward"
    loss = out.tanh().sum()
    first = torch.autograd.grad(loss, [x, *module.parameters()], retain_graph=True, allow_unused=True)
    second = torch.autograd.grad(loss, [x, *module.parameters()], allow_unused=True)
    for a, b in zip(first, second, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


def test_saved_value_lists_are_emptied_and_reused_once_the_graph_is_freed() -> None:
    """The scripted forward's lists of saved values come back, empty, when their autograd node goes."""
    module = compile_cell(resolve("gru"), 4, 4)
    module.use_fused = False
    x = torch.randn(5, 2, 4, requires_grad=True)
    pool = module.plan.loop_code().functions().stores  # the scripted loop's lists
    out, state = module(x)
    assert not pool.free
    out.sum().backward()  # the backward's own list of per-step gradients comes back at its end
    assert len(pool.free) == 1 and len(pool.free[0]) == 0
    pool.free.clear()
    kept = out.grad_fn.store_ref  # the node keeps its list until the graph goes
    assert kept() is not None and not pool.free
    del out, state
    assert kept() is None and len(pool.free) == 1 and len(pool.free[0]) == 0
    out, _ = module(x)
    assert not pool.free, "the next forward reuses the freed list"
    out.sum().backward()


def test_what_leaves_the_loop_is_an_ordinary_tensor() -> None:
    """The scripted loop runs in inference mode; its outputs and gradients must not be inference tensors (they
    could not be saved for backward, or changed in place, e.g. by gradient clipping)."""
    module = compile_cell("Tanh(Memory(Add(Mult(LayerNorm(MM(h_prev)),Diag(c_prev)),MM(x))))", 3, 4)
    x = torch.randn(5, 2, 3, requires_grad=True)
    h0, c0 = torch.randn(2, 4, requires_grad=True), torch.randn(2, 4, requires_grad=True)
    out, (h, c) = module(x, (h0, c0))
    assert type(out.grad_fn).__name__ == "_LoopBackward"
    assert not any(t.is_inference() for t in (out, h, c))
    (out.sum() + c.square().sum()).backward()
    grads = [x.grad, h0.grad, c0.grad, *(p.grad for p in module.parameters())]
    assert all(g is not None and not g.is_inference() for g in grads)
    for g in grads:
        g.mul_(0.5)  # clipping scales gradients in place
    with torch.no_grad():
        plain, _ = module(x, (h0, c0))
    assert not plain.is_inference()
