"""The compiled cell: contract, agreement with torch.nn.LSTM/GRU, gradients, fast == reference, errors."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from evonas.cells import ALL, EXTENDED, OPS, SOURCES, Node, canonical_text, check, parse, preorder
from evonas.errors import CellError, CellSyntaxError
from evonas.nn.compiler import CompiledCell, compile_cell, reference_forward
from evonas.nn.ops import position_encoding, safe_div

LSTM = (
    "Mult(Sigmoid(Add(MM(x),MM(h_prev))),Tanh(Memory(Add(Mult(Sigmoid(Add(MM(x),MM(h_prev))),c_prev),"
    "Mult(Sigmoid(Add(MM(x),MM(h_prev))),Tanh(Add(MM(x),MM(h_prev))))))))"
)
GRU_PYTORCH = (
    "Gate3(h_prev,Tanh(Add(MM(x),Mult(Sigmoid(Add(MM(x),MM(h_prev))),MM(h_prev)))),Sigmoid(Add(MM(x),MM(h_prev))))"
)


def library_text(name: str) -> str:
    """The cell text of a configs/cells.yaml entry."""
    from evonas.cells.library import library

    return library()[name].text


# --- mapping torch weights onto the tree (derived by walking module.cell, not by fixed indices) ---


def mm_index(cell: Node) -> dict[int, int]:
    """id(MM node) -> its index in module.mm (pre-order)."""
    return {id(n): k for k, n in enumerate(n for n in preorder(cell) if n.op == "MM")}


def set_linear(module: CompiledCell, node: Node, weight: torch.Tensor, bias: torch.Tensor) -> None:
    assert node.op == "MM"
    lin = module.mm[mm_index(module.cell)[id(node)]]
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)


def set_gate(module: CompiledCell, add: Node, rnn: nn.RNNBase, gate: int) -> None:
    """`Add(MM(x), MM(h_prev))` gets rows `gate` of the input and hidden weights of a torch RNN."""
    assert add.op == "Add" and len(add.children) == 2
    h = rnn.hidden_size
    rows = slice(gate * h, (gate + 1) * h)
    for mm in add.children:
        src = mm.children[0].op
        kind = {"x": "ih", "h_prev": "hh"}[src]
        set_linear(module, mm, getattr(rnn, f"weight_{kind}_l0")[rows], getattr(rnn, f"bias_{kind}_l0")[rows])


def split_by(node: Node, pred) -> tuple[Node, Node]:
    """The two children of a binary node as (the one satisfying pred, the other)."""
    a, b = node.children
    assert pred(a) != pred(b), f"cannot tell the children of {node} apart"
    return (a, b) if pred(a) else (b, a)


def load_lstm(module: CompiledCell, lstm: nn.LSTM) -> None:
    """torch gate order i, f, g, o: h = o * tanh(c), c = f * c_prev + i * g."""
    root = module.cell
    out_gate, tanh_c = split_by(root, lambda n: n.op == "Sigmoid")
    memory = tanh_c.children[0]
    assert tanh_c.op == "Tanh" and memory.op == "Memory"
    forget_term, input_term = split_by(memory.children[0], lambda n: any(c.op == "c_prev" for c in n.children))
    forget, _ = split_by(forget_term, lambda n: n.op == "Sigmoid")
    inp, cand = split_by(input_term, lambda n: n.op == "Sigmoid")
    for gate_node, k in [(inp, 0), (forget, 1), (cand, 2), (out_gate, 3)]:
        set_gate(module, gate_node.children[0], lstm, k)


def load_gru(module: CompiledCell, gru: nn.GRU) -> None:
    """torch gate order r, z, n: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h = (1 - z) * n + z * h_prev."""
    keep, new, z = module.cell.children
    assert module.cell.op == "Gate3" and keep.op == "h_prev" and z.op == "Sigmoid" and new.op == "Tanh"
    set_gate(module, z.children[0], gru, 1)
    x_mm, reset_mult = split_by(new.children[0], lambda n: n.op == "MM")
    reset, h_mm = split_by(reset_mult, lambda n: n.op == "Sigmoid")
    set_gate(module, reset.children[0], gru, 0)
    h = gru.hidden_size
    set_linear(module, x_mm, gru.weight_ih_l0[2 * h :], gru.bias_ih_l0[2 * h :])
    set_linear(module, h_mm, gru.weight_hh_l0[2 * h :], gru.bias_hh_l0[2 * h :])


@pytest.mark.parametrize("source", ["brief", "library"])
@pytest.mark.parametrize("fast", [True, False])
def test_lstm_matches_torch(fast: bool, source: str) -> None:
    torch.manual_seed(0)
    steps, batch, inp, hid = 50, 3, 5, 7
    lstm = nn.LSTM(inp, hid)
    module = compile_cell(LSTM if source == "brief" else library_text("lstm"), inp, hid)
    module.fast = fast
    load_lstm(module, lstm)
    x = torch.randn(steps, batch, inp)
    h0, c0 = torch.randn(batch, hid), torch.randn(batch, hid)
    want, (want_h, want_c) = lstm(x, (h0[None], c0[None]))
    got, (got_h, got_c) = module(x, (h0, c0))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_h, want_h[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(got_c, want_c[0], atol=1e-5, rtol=0)
    # Zero initial state as well, and the gradient of the input agrees.
    x.requires_grad_(True)
    (g_want,) = torch.autograd.grad(lstm(x)[0].square().sum(), x)
    (g_got,) = torch.autograd.grad(module(x)[0].square().sum(), x)
    torch.testing.assert_close(g_got, g_want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("source", ["brief", "library"])
@pytest.mark.parametrize("fast", [True, False])
def test_gru_matches_torch(fast: bool, source: str) -> None:
    torch.manual_seed(1)
    steps, batch, inp, hid = 50, 3, 4, 6
    gru = nn.GRU(inp, hid)
    module = compile_cell(GRU_PYTORCH if source == "brief" else library_text("gru_pytorch"), inp, hid)
    module.fast = fast
    load_gru(module, gru)
    x = torch.randn(steps, batch, inp)
    h0 = torch.randn(batch, hid)
    want, want_h = gru(x, h0[None])
    got, (got_h, got_c) = module(x, (h0, None))
    assert got_c is None
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_h, want_h[0], atol=1e-5, rtol=0)


# --- the contract ---


def test_module_contract() -> None:
    text = "Add(MM(Diag(x)),Mult(LayerNorm(MM(h_prev)),Diag(LayerNorm(h_prev))))"
    module = compile_cell(text, 3, 5)
    assert canonical_text(module.cell) == module.text == canonical_text(parse(text))
    order = [n for n in preorder(module.cell) if n.op in ("MM", "Diag", "LayerNorm")]
    mms = [n for n in order if n.op == "MM"]
    assert [lin.in_features for lin in module.mm] == [3 if n.children[0].op == "Diag" else 5 for n in mms]
    assert all(isinstance(lin, nn.Linear) and lin.out_features == 5 for lin in module.mm)
    assert [p.shape[0] for p in module.diag] == [3 if n.children[0].op == "x" else 5 for n in order if n.op == "Diag"]
    assert [ln.normalized_shape for ln in module.layernorm] == [(5,), (5,)]
    # MM(Diag(x)) 3*5+5, MM(h_prev) 5*5+5, Diag 3 and 5, two LayerNorms 5+5 each
    assert sum(p.numel() for p in module.parameters()) == 20 + 30 + 8 + 20


def test_compile_accepts_node_and_text() -> None:
    a = compile_cell(parse("Tanh(Add(MM(x),MM(h_prev)))"), 2, 3)
    b = compile_cell("Tanh(Add(MM(h_prev),MM(x)))", 2, 3)
    assert a.cell == b.cell


def test_swapped_arguments_compute_the_same_function() -> None:
    torch.manual_seed(2)
    a = compile_cell(LSTM, 4, 4)
    swapped = LSTM.replace("Add(MM(x),MM(h_prev))", "Add(MM(h_prev),MM(x))")
    swapped = swapped.replace(
        "Mult(Sigmoid(Add(MM(h_prev),MM(x))),c_prev)", "Mult(c_prev,Sigmoid(Add(MM(h_prev),MM(x))))"
    )
    assert swapped != LSTM
    b = compile_cell(swapped, 4, 4)
    b.load_state_dict(a.state_dict())
    x = torch.randn(10, 2, 4)
    out_a, (ha, ca) = a(x)
    out_b, (hb, cb) = b(x)
    torch.testing.assert_close(out_a, out_b, atol=0, rtol=0)
    torch.testing.assert_close(ca, cb, atol=0, rtol=0)


@pytest.mark.parametrize("fast", [True, False])
def test_state_passing_two_halves_equal_whole(fast: bool) -> None:
    torch.manual_seed(3)
    for text in [LSTM, GRU_PYTORCH, "Tanh(Add(MM(x),Diag(LayerNorm(h_prev))))"]:
        module = compile_cell(text, 3, 4)
        module.fast = fast
        x = torch.randn(12, 2, 3)
        whole, (h, c) = module(x)
        first, state = module(x[:5])
        second, (h2, c2) = module(x[5:], state)
        torch.testing.assert_close(torch.cat([first, second]), whole, atol=1e-6, rtol=0)
        torch.testing.assert_close(h2, h)
        assert (c is None) == (c2 is None) == ("Memory" not in text)


def test_empty_sequence_returns_the_state() -> None:
    module = compile_cell(LSTM, 3, 4)
    h0, c0 = torch.randn(2, 4), torch.randn(2, 4)
    out, (h, c) = module(torch.zeros(0, 2, 3), (h0, c0))
    assert out.shape == (0, 2, 4) and torch.equal(h, h0) and torch.equal(c, c0)


def test_x_prev_is_zero_at_the_first_step_and_posenc_uses_the_step() -> None:
    module = compile_cell("Add(PosEnc(MM(x_prev)),Mult(h_prev,MM(x_prev)))", 2, 4)
    with torch.no_grad():
        for lin in module.mm:
            lin.weight.zero_()
            lin.weight[:2, :2] = torch.eye(2)
            lin.bias.zero_()
    x = torch.randn(3, 1, 2)
    out, _ = module(x)
    pe = position_encoding(3, 4, torch.float32, "cpu")
    want0 = pe[0]
    want1 = pe[1] + torch.cat([x[0, 0], torch.zeros(2)])
    torch.testing.assert_close(out[0, 0], want0)
    torch.testing.assert_close(out[1, 0], want1 + out[0, 0] * torch.cat([x[0, 0], torch.zeros(2)]))
    assert torch.allclose(pe[:, 0], torch.sin(torch.arange(3.0))) and torch.allclose(
        pe[:, 1], torch.cos(torch.arange(3.0))
    )


def test_div_is_safe_at_zero() -> None:
    a = torch.tensor([1.0, 1.0, 1.0])
    b = torch.tensor([0.0, -1e-9, 2.0])
    got = safe_div(a, b)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, torch.tensor([1000.0, -1 / (1e-3 + 1e-9), 1 / 2.001]))


# --- gradients ---

OPERATOR_CELLS = {
    "MM": ["Tanh(Add(MM(x),MM(h_prev)))"],
    "Add": ["Add(MM(x),MM(h_prev))"],
    "Mult": ["Mult(MM(x),MM(h_prev))"],
    "Sub": ["Sub(MM(x),MM(h_prev))", "Sub(MM(Sub(x,x_prev)),h_prev)"],
    "Div": ["Div(MM(x),Add(Tanh(MM(h_prev)),MM(x)))"],
    "Gate3": ["Gate3(MM(x),h_prev,Sigmoid(MM(h_prev)))"],
    "Memory": ["Tanh(Memory(Add(MM(x),Mult(c_prev,Sigmoid(MM(h_prev))))))"],
    "PosEnc": ["PosEnc(MM(h_prev))", "Add(MM(PosEnc(x)),MM(h_prev))"],
    "LayerNorm": ["LayerNorm(Add(MM(x),MM(h_prev)))", "Add(MM(LayerNorm(x)),MM(h_prev))"],
    "Diag": ["Add(Diag(h_prev),MM(x))", "Add(MM(Diag(x_prev)),h_prev)"],
}
for _op in ["Sigmoid", "Tanh", "ReLU", "Sin", "Cos", "SELU", "LeakyReLU"]:
    OPERATOR_CELLS[_op] = [f"{_op}(Add(MM(x),MM(h_prev)))", f"Add(MM({_op}(x)),{_op}(MM(h_prev)))"]


def test_every_operator_has_a_gradcheck_cell() -> None:
    assert set(OPERATOR_CELLS) == set(ALL)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("op", sorted(OPERATOR_CELLS))
def test_gradcheck(op: str, fast: bool) -> None:
    torch.manual_seed(4)
    for text in OPERATOR_CELLS[op]:
        module = compile_cell(text, 2, 3).double()
        module.fast = fast
        names = [name for name, _ in module.named_parameters()]
        params = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
        x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
        h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
        c0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True) if module.plan.memory is not None else None

        def run(x, h0, *ps, c0=c0, names=names, module=module):
            out, (h, c) = torch.func.functional_call(module, dict(zip(names, ps, strict=True)), (x, (h0, c0)))
            return (out, c) if c is not None else out

        assert torch.autograd.gradcheck(run, (x, h0, *params), eps=1e-6, atol=1e-5), text


# --- the fast evaluator agrees with the reference ---


def random_cell(rng: random.Random, ops: list[str], depth: int) -> Node:
    """A random tree; MM is drawn more often so that mixed input/hidden sizes type-check more often."""
    if depth == 0 or rng.random() < 0.15:
        return Node(rng.choice(SOURCES))
    op = rng.choice([*ops, "MM", "MM", "MM"])
    return Node(op, tuple(random_cell(rng, ops, depth - 1) for _ in range(OPS[op].arity)))


def random_cells(seed: int, count: int, ops: frozenset[str], inp: int, hid: int) -> list[Node]:
    """Well-formed random cells of 8..40 nodes with at least two MMs, one of them reading x."""
    rng, found = random.Random(seed), []
    while len(found) < count:
        cell = random_cell(rng, sorted(ops), 6)
        nodes = list(preorder(cell))
        mms = [n for n in nodes if n.op == "MM"]
        if not 8 <= len(nodes) <= 40 or len(mms) < 2 or not any(n.op == "x" for n in nodes):
            continue
        try:
            check(cell, inp, hid)
        except CellError:
            continue
        found.append(cell)
    return found


# Cells that exercise each path of the fast plan: paired static/dynamic groups (LSTM), folds with and
# without static MM addends, shared non-source operands, a static Memory, Memory(h_prev), dynamic PosEnc.
PLAN_CASES = [
    LSTM,
    GRU_PYTORCH,
    "Tanh(Add(Sigmoid(MM(x)),MM(h_prev)))",
    "Add(Add(MM(x),MM(h_prev)),Mult(MM(h_prev),Add(MM(x_prev),MM(h_prev))))",
    "Add(MM(Tanh(h_prev)),Mult(MM(Tanh(h_prev)),MM(x)))",
    "Add(Memory(Tanh(MM(x))),Mult(MM(c_prev),MM(h_prev)))",
    "Gate3(Memory(h_prev),MM(x),Sigmoid(MM(c_prev)))",
    "PosEnc(Add(LayerNorm(MM(h_prev)),Diag(MM(PosEnc(x)))))",
    "Add(Add(MM(x),MM(x_prev)),h_prev)",  # a static subtree used per step as it is
]


def assert_fast_equals_reference(cell: Node | str, inp: int, hid: int) -> None:
    """Outputs, final c and gradients (inputs, state, parameters) of both evaluators agree to 1e-5."""
    module = compile_cell(cell, inp, hid).double()
    x = torch.randn(7, 3, inp, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, hid, dtype=torch.float64, requires_grad=True)
    c0 = None
    if module.plan.memory is not None:
        c0 = torch.randn(3, hid, dtype=torch.float64, requires_grad=True)
    wrt = [x, h0, *([c0] if c0 is not None else []), *module.parameters()]
    want, (wh, wc) = reference_forward(module, x, (h0, c0))
    grads_ref = torch.autograd.grad(want.tanh().sum(), wrt, allow_unused=True)
    for use_fused in (True, False) if module.fused is not None else (False,):  # PyTorch's kernel and the plan
        module.use_fused = use_fused
        _assert_agree(module, x, (h0, c0), wrt, want, wc, grads_ref)


def _assert_agree(module: CompiledCell, x: torch.Tensor, state: tuple, wrt: list, want: torch.Tensor,
                  wc: torch.Tensor | None, grads_ref: tuple) -> None:
    got, (gh, gc) = module(x, state)
    grads_fast = torch.autograd.grad(got.tanh().sum(), wrt, allow_unused=True)
    msg = f"{module.text} (fused: {module.use_fused})"
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, equal_nan=True, msg=msg)
    if gc is not None or wc is not None:
        torch.testing.assert_close(gc, wc, atol=1e-5, rtol=1e-5, equal_nan=True, msg=msg)
    for gf, gr in zip(grads_fast, grads_ref, strict=True):
        if gf is None or gr is None:
            assert gf is None or not gf.any(), msg
            assert gr is None or not gr.any(), msg
        else:
            torch.testing.assert_close(gf, gr, atol=1e-5, rtol=1e-5, equal_nan=True, msg=msg)


def test_fused_kernel_recognises_exactly_the_lstm_and_pytorch_gru() -> None:
    """Any spelling of the LSTM / PyTorch-form GRU maps its MMs to PyTorch's gates; near misses do not match."""
    swapped = LSTM.replace("Add(MM(x),MM(h_prev))", "Add(MM(h_prev),MM(x))")
    for text in (LSTM, swapped, library_text("lstm")):
        assert compile_cell(text, 3, 4).fused.kind == "lstm"
    assert compile_cell(GRU_PYTORCH, 3, 4).fused.kind == "gru"
    near = [library_text("gru"), LSTM.replace("c_prev", "h_prev"), LSTM.replace("Tanh(Memory", "Sigmoid(Memory"),
            LSTM.replace("Mult(Sigmoid(Add(MM(x),MM(h_prev))),c_prev)", "Mult(Sigmoid(MM(x)),c_prev)")]
    for text in near:
        assert compile_cell(text, 3, 4).fused is None, text


@pytest.mark.parametrize("text", PLAN_CASES)
def test_fast_equals_reference_on_plan_cases(text: str) -> None:
    torch.manual_seed(5)
    assert_fast_equals_reference(text, 4, 4)
    assert_fast_equals_reference(text, 3, 5)


@pytest.mark.parametrize("ops,inp,hid", [(EXTENDED, 3, 4), (ALL, 4, 4), (ALL, 2, 5)])
def test_fast_equals_reference_on_random_cells(ops: frozenset[str], inp: int, hid: int) -> None:
    torch.manual_seed(5)
    for cell in random_cells(len(ops) + inp + hid, 15, ops, inp, hid):
        assert_fast_equals_reference(cell, inp, hid)


# --- errors and devices ---


@pytest.mark.parametrize(
    "text,rule",
    [
        ("Tanh(MM(x))", "state"),
        ("Add(x,h_prev)", "sizes"),
        ("Add(MM(x),c_prev)", "memory"),
        ("Add(Memory(MM(x)),Memory(h_prev))", "memory"),
        ("Memory(Tanh(x))", "sizes"),
    ],
)
def test_ill_formed_cells_raise_cell_error(text: str, rule: str) -> None:
    with pytest.raises(CellError) as info:
        compile_cell(text, 3, 4)
    assert info.value.rule == rule


def test_bad_text_and_sizes() -> None:
    with pytest.raises(CellSyntaxError):
        compile_cell("Tanh(MM(h_prev)", 3, 4)
    with pytest.raises(CellError):
        compile_cell("Tanh(MM(h_prev))", 0, 4)
    module = compile_cell("Tanh(MM(h_prev))", 3, 4)
    with pytest.raises(ValueError):
        module(torch.zeros(2, 1, 5))


def test_equal_sizes_make_input_and_hidden_interchangeable() -> None:
    module = compile_cell("Add(x,h_prev)", 4, 4)
    x = torch.randn(3, 2, 4)
    out, _ = module(x)
    torch.testing.assert_close(out[-1], x.sum(0))


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_device(device: str) -> None:
    torch.manual_seed(6)
    module = compile_cell("Tanh(Add(PosEnc(MM(x)),Mult(LayerNorm(h_prev),Diag(MM(h_prev)))))", 3, 4)
    x = torch.randn(5, 2, 3)
    want, _ = module(x)
    module = module.to(device)
    assert all(p.device.type == device for p in module.parameters())
    got, (h, c) = module(x.to(device))
    assert got.device.type == device and h.device.type == device and c is None
    got.sum().backward()
    assert all(p.grad is not None and p.grad.device.type == device for p in module.parameters())
    torch.testing.assert_close(got.cpu(), want, atol=1e-5, rtol=1e-5)


def test_library_cells_compile_and_fast_equals_reference() -> None:
    from evonas.cells.library import library

    torch.manual_seed(7)
    entries = library()
    assert {"lstm", "gru_pytorch"} <= set(entries)
    for entry in entries.values():
        assert_fast_equals_reference(entry.text, 3, 5)


def test_no_grad_forward_equals_reference() -> None:
    torch.manual_seed(8)
    for text in PLAN_CASES:
        module = compile_cell(text, 3, 5)
        x = torch.randn(6, 2, 3)
        with torch.no_grad():
            got, (h, _) = module(x)
            want, (wh, _) = reference_forward(module, x)
        assert not got.requires_grad
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell, seed", [
    (GRU_PYTORCH, 9),
    ("Tanh(Memory(Add(MM(x),Mult(c_prev,Sigmoid(MM(h_prev))))))", 2),  # on the plan's loop (evonas.nn.loop_grad)
])
def test_weight_gradients_with_partial_loss_and_repeated_backward(cell: str, seed: int) -> None:
    """Weight gradients deferred to one product (and the loop's own backward): partial losses and retain_graph
    stay right."""
    torch.manual_seed(seed)
    module = compile_cell(cell, 3, 4)
    x = torch.randn(8, 2, 3)
    out, _ = reference_forward(module, x)
    want = torch.autograd.grad(out[:5].square().sum(), list(module.parameters()))
    out, _ = module(x)
    loss = out[:5].square().sum()
    loss.backward(retain_graph=True)
    loss.backward()
    for p, w in zip(module.parameters(), want, strict=True):
        torch.testing.assert_close(p.grad, 2 * w, atol=1e-5, rtol=1e-5)


def test_copy_and_pickle_rebuild_the_plan() -> None:
    """deepcopy and in-memory pickling (Ray, multiprocessing) work; nothing here is written to disk."""
    import copy
    import pickle

    torch.manual_seed(10)
    module = compile_cell(LSTM, 3, 4)
    x = torch.randn(5, 2, 3)
    want, _ = module(x)
    for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        got, _ = clone(x)
        torch.testing.assert_close(got, want, atol=0, rtol=0)
        assert clone.plan is not module.plan and [n for n, _ in clone.named_parameters()] == [
            n for n, _ in module.named_parameters()
        ]


def test_forward_backward_frees_the_graph() -> None:
    """No reference cycle through the autograd graph: a training step leaves nothing alive."""
    import weakref

    module = compile_cell(LSTM, 3, 4)
    x = torch.randn(6, 2, 3)
    h0 = torch.randn(2, 4, requires_grad=True)  # the operand of the first step's recurrent product
    out, (h, c) = module(x, (h0, torch.zeros(2, 4)))
    out.sum().backward()
    assert h0.grad is not None
    refs = [weakref.ref(h0), weakref.ref(h)]
    del out, h, c, h0
    assert all(ref() is None for ref in refs)
