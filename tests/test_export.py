"""`evonas.nn.export`: the exported cell.py equals compile_cell given the same weights (outputs and gradients),
for every library cell and random cells over all operators, and runs where evonas cannot be imported."""

from __future__ import annotations

import importlib.util
import json
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest
import torch
from evonas.surrogate.sample import random_cell
from hypothesis import given, settings
from strategies import cells

from evonas.cells import ALL, Node, canonical, equations, parse
from evonas.cells.library import library, resolve
from evonas.errors import CellError, CheckpointError, EvonasError
from evonas.nn.compiler import compile_cell
from evonas.nn.export import cell_source, export_cell, needs_same_size, step_lines

_count = iter(range(1 << 30))


def load(source: str) -> ModuleType:
    """Import a generated cell.py from a temporary file under a fresh module name."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "cell.py"
        path.write_text(source, encoding="utf-8")
        spec = importlib.util.spec_from_file_location(f"exported_cell_{next(_count)}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def sizes(cell: Node) -> tuple[int, int]:
    return (6, 6) if needs_same_size(cell) else (5, 7)


def assert_same(cell: Node, fast: bool = True, steps: int = 4, batch: int = 3, seed: int = 0) -> None:
    """Sequence and step modules of the export equal compile_cell: outputs, final state, all gradients."""
    torch.manual_seed(seed)
    inp, hid = sizes(cell)
    ref = compile_cell(cell, inp, hid, fast=fast).double()
    mod = load(cell_source(cell, inp, hid))
    rnn = mod.RNN(inp, hid).double()
    rnn.load_state_dict(ref.state_dict())  # strict: the same keys and shapes
    x = torch.randn(steps, batch, inp, dtype=torch.float64)
    h0 = torch.randn(batch, hid, dtype=torch.float64)
    c0 = torch.randn(batch, hid, dtype=torch.float64) if ref.has_memory else None
    weight = torch.randn(steps, batch, hid, dtype=torch.float64)

    def run(module: torch.nn.Module, xs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        xs = xs.clone().requires_grad_(True)
        out, (h, c) = module(xs, (h0, c0))
        loss = (out * weight).sum() + h.square().sum() + (c.sum() if c is not None else 0.0)
        if loss.requires_grad:  # not for a cell such as `h_prev` alone
            loss.backward()
        grads = [g if g is not None else torch.zeros(()) for g in [xs.grad] + [p.grad for p in module.parameters()]]
        module.zero_grad()
        return torch.cat([out.flatten(), h.flatten()] + ([c.flatten()] if c is not None else [])), grads

    want, want_grads = run(ref, x)
    got, got_grads = run(rnn, x)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-9), (canonical(cell), (got - want).abs().max())
    for g, w in zip(got_grads, want_grads, strict=True):
        assert torch.allclose(g, w, rtol=1e-8, atol=1e-9), canonical(cell)
    # the step module, carried across the sequence through its state tuple
    step = mod.Cell(inp, hid).double()
    step.load_state_dict(ref.state_dict())
    state = mod.State(h0, c0, None, 0)
    with torch.no_grad():
        ref_out, _ = ref(x, (h0, c0))
        for t in range(steps):
            h, state = step(x[t], state)
            assert torch.allclose(h, ref_out[t], rtol=1e-9, atol=1e-9), (canonical(cell), t)
            assert state.t == t + 1


@pytest.mark.parametrize("name", sorted(library()))
def test_every_library_cell_exports_exactly(name: str, one_torch_thread) -> None:
    assert_same(resolve(name), fast=True)


SPECIAL = [
    "Tanh(Add(MM(x_prev),MM(h_prev)))",
    "Tanh(PosEnc(Add(MM(x),MM(h_prev))))",
    "Tanh(Add(MM(PosEnc(x)),MM(h_prev)))",
    "Add(Diag(h_prev),MM(Diag(x)))",
    "LayerNorm(Add(MM(LayerNorm(x)),MM(h_prev)))",
    "Div(MM(x),Sub(h_prev,MM(x_prev)))",
    "LeakyReLU(Add(SELU(MM(x)),Sin(Cos(h_prev))))",
    "Gate3(MM(x),h_prev,Sigmoid(MM(h_prev)))",
    "Memory(Add(Mult(c_prev,Sigmoid(MM(h_prev))),MM(x)))",
    "Tanh(Memory(Add(c_prev,MM(PosEnc(x_prev)))))",
    "Add(x,h_prev)",  # x without an MM: input size must equal hidden size
    "h_prev",
    "Memory(h_prev)",
]


@pytest.mark.parametrize("text", SPECIAL)
@pytest.mark.parametrize("fast", [True, False])
def test_special_cells_export_exactly(text: str, fast: bool, one_torch_thread) -> None:
    assert_same(parse(text), fast=fast, steps=5)


def test_random_cells_from_the_search_sampler_export_exactly(one_torch_thread) -> None:
    rng = random.Random(16)
    for i in range(20):
        assert_same(random_cell(rng, ops=ALL, max_depth=5), seed=i)


@settings(max_examples=25)
@given(cells(max_depth=5))
def test_random_well_formed_cells_export_exactly(cell: Node) -> None:
    assert_same(cell, steps=3, batch=2)


def test_code_lines_follow_the_equations() -> None:
    cell = resolve("gru")
    body, _ = step_lines(cell)
    labels = [line.split(" = ")[0] for line in body]
    eq = [line.split(" = ")[0].replace("_t", "") for line in equations(cell)]
    assert labels == eq
    for code, eqn in zip(body, equations(cell), strict=True):  # self.mm[k] is the equations' W{k+1}
        assert re.findall(r"self\.mm\[(\d+)\]", code) == [str(int(k) - 1) for k in re.findall(r"W(\d+)", eqn)]


def test_source_has_equations_and_imports_only_torch() -> None:
    src = cell_source(parse("Tanh(PosEnc(Add(MM(x),Div(MM(h_prev),LeakyReLU(h_prev)))))"), 4, 8)
    imports = {line.split()[1] for line in src.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"__future__", "math", "typing", "torch", "torch.nn.functional"}, imports
    assert "h_t = tanh(a5)" in src or "h_t = " in src
    assert "exec(" not in src and "eval(" not in src


def test_sizes_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CellError):
        export_cell(parse("Add(x,h_prev)"), tmp_path / "d", 3, 5)
    mod = load(cell_source(parse("Add(x,h_prev)"), 4, 4))
    with pytest.raises(ValueError, match="input_size == hidden_size"):
        mod.RNN(3, 5)


def test_batch_first_and_empty_sequence() -> None:
    cell = resolve("lstm")
    ref = compile_cell(cell, 3, 4)
    rnn = load(cell_source(cell, 3, 4)).RNN(3, 4, batch_first=True)
    rnn.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        out, (h, c) = rnn(x)
        want, (wh, wc) = ref(x.transpose(0, 1))
    assert out.shape == (2, 5, 4) and torch.allclose(out, want.transpose(0, 1), atol=1e-6)
    assert torch.allclose(h, wh, atol=1e-6) and torch.allclose(c, wc, atol=1e-6)
    out, (h, c) = rnn(torch.zeros(2, 0, 3))
    assert out.shape == (2, 0, 4) and h.abs().sum() == 0


def test_export_writes_genotype_code_and_weights(tmp_path: Path) -> None:
    cell = resolve("gru")
    ref = compile_cell(cell, 3, 6)
    torch.save(ref.state_dict(), tmp_path / "cell.pt")
    out = tmp_path / "out"
    g = export_cell(cell, out, 3, 6, written=library()["gru"].text, title="gru", weights=tmp_path / "cell.pt",
                    source={"kind": "library", "name": "gru"})
    saved = json.loads((out / "genotype.json").read_text())
    assert saved == g and saved["format"] == 1 and saved["cell"] == str(canonical(cell))
    assert saved["ops"] == sorted({"Add", "Gate3", "MM", "Mult", "Sigmoid", "Tanh"}) and saved["op_set"] == "core"
    assert saved["parameters"] == sum(p.numel() for p in ref.parameters())
    rnn = load((out / "cell.py").read_text()).RNN()
    rnn.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    assert (rnn.input_size, rnn.hidden_size) == (3, 6)
    with pytest.raises(EvonasError, match="--force"):
        export_cell(cell, out, 3, 6)
    export_cell(cell, out, 3, 6, force=True)  # replacing without weights drops the stale weights.pt
    assert not (out / "weights.pt").exists()


def test_weights_that_do_not_fit_are_a_checkpoint_error(tmp_path: Path) -> None:
    torch.save(compile_cell(resolve("lstm"), 3, 6).state_dict(), tmp_path / "lstm.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        export_cell(resolve("gru"), tmp_path / "out", 3, 6, weights=tmp_path / "lstm.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable state dict"):
        export_cell(resolve("gru"), tmp_path / "out", 3, 6, weights=tmp_path / "bad.pt")
    assert not (tmp_path / "out").exists()


NO_EVONAS = "import runpy, sys; sys.modules['evonas'] = None; runpy.run_path(sys.argv[1], run_name='__main__')"


@pytest.mark.parametrize("name", ["lstm", "Tanh(Add(MM(PosEnc(x_prev)),Div(MM(h_prev),Diag(h_prev))))"])
def test_cell_py_runs_without_evonas(tmp_path: Path, name: str) -> None:
    cell = resolve(name)
    ref = compile_cell(cell, 4, 8)
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    export_cell(cell, tmp_path / "d", 4, 8, weights=tmp_path / "w.pt")
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-I", "-c", NO_EVONAS, str(tmp_path / "d" / "cell.py")],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "loaded" in done.stdout and "output [5, 2, 8]" in done.stdout and "matches RNN: True" in done.stdout
    check = ("import importlib.util, sys; sys.modules['evonas'] = None\n"
             "spec = importlib.util.spec_from_file_location('cell', sys.argv[1])\n"
             "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
             "print(m.RNN()(m.torch.zeros(2, 1, m.INPUT_SIZE))[0].shape, sys.modules['evonas'],"
             " sorted(n for n in sys.modules if n.startswith('evonas')))")
    done = subprocess.run([sys.executable, "-I", "-c", check, str(tmp_path / "d" / "cell.py")],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "torch.Size([2, 1, 8]) None ['evonas']", done.stdout


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff (a dev dependency) is not installed")
def test_generated_code_is_lint_clean(tmp_path: Path) -> None:
    """Readable code: no unused imports or names, sorted imports, for cells using every helper."""
    texts = ["lstm", "Tanh(Add(MM(PosEnc(x_prev)),Div(MM(h_prev),LeakyReLU(Diag(LayerNorm(h_prev))))))",
             "SELU(Add(x,h_prev))"]
    for i, text in enumerate(texts):
        cell = resolve(text, 4, 4)
        (tmp_path / f"cell{i}.py").write_text(cell_source(cell, 4, 4), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--isolated", "--line-length", "200", "--select",
                           "E,F,W,I,B,UP", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
