"""Export a cell out of evonas: `genotype.json` plus a standalone `cell.py` that imports only torch.

The source of `cell.py` is produced from the parsed, canonical tree (operator and source names the parser
accepted, numbered labels), never by formatting user text into code. Its parameters are laid out exactly as
`compile_cell`'s (`mm`, `diag`, `layernorm` in pre-order of the canonical cell), so a state dict of a compiled
cell loads into its modules with `load_state_dict`. Its values match `evonas.nn.ops` operator by operator.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from evonas.cells import Node, canonical, equations, is_well_formed, preorder, to_text
from evonas.cells.ops import CORE, EXTENDED, INPUT_SOURCES
from evonas.errors import CheckpointError, EvonasError
from evonas.nn.compiler import compile_cell
from evonas.nn.ops import DIV_EPS, LEAKY_SLOPE

FORMAT = 1
FILES = ("genotype.json", "cell.py", "weights.pt")
_PARAM_OPS = ("MM", "Diag", "LayerNorm")
_CALLS = {"Sigmoid": "torch.sigmoid", "Tanh": "torch.tanh", "ReLU": "torch.relu", "Sin": "torch.sin",
          "Cos": "torch.cos", "SELU": "F.selu"}
SIZE_ARGS = {"inp": "input_size", "hid": "hidden_size"}
_INFIX = {"Add": "+", "Mult": "*", "Sub": "-"}


def _size_class(node: Node) -> str:
    """`inp` when the node's value has the input size, else `hid` (the compiler's size rule, symbolically)."""
    if node.is_source:
        return "inp" if node.op in INPUT_SOURCES else "hid"
    return "hid" if node.op == "MM" else _size_class(node.children[0])


def step_lines(cell: Node) -> tuple[list[str], list[str]]:
    """Code lines computing `h` (and `c`) from `x, x_prev, h_prev, c_prev, t`, and the parameter constructors.

    Labels follow `evonas.cells.equations` (a1, a2, ... , c for c_t, h for h_t), so each code line matches
    one equation line; `self.mm[k]` is the equations' W{k+1}, numbered in pre-order like `compile_cell`.
    """
    cell = canonical(cell)
    lines: list[str] = []
    params: dict[str, list[str]] = {op: [] for op in _PARAM_OPS}
    used: set[str] = set()
    auto = iter(range(1, 1 << 30))

    def visit(n: Node, name: str | None = None) -> str:
        if n.is_source:
            return n.op
        if n.op == "Memory":
            inner = visit(n.children[0], "c")
            if inner != "c":
                lines.append(f"c = {inner}")
            return "c"
        k = -1
        if n.op in params:  # numbered on entry: pre-order, the order of compile_cell's parameter lists
            k = len(params[n.op])
            size = _size_class(n.children[0])
            used.update({size} if n.op != "MM" else {size, "hid"})
            params[n.op].append({"MM": f"nn.Linear({size}, hid)", "Diag": f"_diag_vector({size})",
                                 "LayerNorm": f"nn.LayerNorm({size})"}[n.op])
        args = [visit(c) for c in n.children]
        if n.op == "MM":
            rhs = f"self.mm[{k}]({args[0]})"
        elif n.op == "Diag":
            rhs = f"self.diag[{k}] * {args[0]}"
        elif n.op == "LayerNorm":
            rhs = f"self.layernorm[{k}]({args[0]})"
        elif n.op in _INFIX:
            rhs = f"{args[0]} {_INFIX[n.op]} {args[1]}"
        elif n.op == "Gate3":
            a, b, g = args
            rhs = f"{g} * {a} + (1 - {g}) * {b}"
        elif n.op == "Div":
            rhs = f"_safe_div({args[0]}, {args[1]})"
        elif n.op == "LeakyReLU":
            rhs = f"F.leaky_relu({args[0]}, {LEAKY_SLOPE!r})"
        elif n.op == "PosEnc":
            rhs = f"{args[0]} + _position_encoding(t, {args[0]}.shape[-1], {args[0]}.dtype, {args[0]}.device)"
        elif n.op in _CALLS:
            rhs = f"{_CALLS[n.op]}({args[0]})"
        else:  # a new operator in cells/ops.py without an export rule
            raise EvonasError(f"export does not know operator {n.op!r}")
        label = name or f"a{next(auto)}"
        lines.append(f"{label} = {rhs}")
        return label

    out = visit(cell, "h")
    if out != "h":
        lines.append(f"h = {out}")
    names = [n for n in ("inp", "hid") if n in used]  # only the size names the constructors below read
    decl = [f"{', '.join(names)} = {', '.join(SIZE_ARGS[n] for n in names)}"] if names else []
    lists = (("mm", "MM", "nn.ModuleList", "W{0}, b{0}"), ("diag", "Diag", "nn.ParameterList", "w{0}"),
             ("layernorm", "LayerNorm", "nn.ModuleList", "LN{0}"))
    for attr, op, kind, label in lists:
        if not params[op]:
            decl.append(f"self.{attr} = {kind}()  # no {op} in this cell")
            continue
        decl.append(f"self.{attr} = {kind}([")
        decl += [f"    {p},  # {label.format(i + 1)}" for i, p in enumerate(params[op])]
        decl.append("])")
    return lines, decl


_HELPERS = {
    "Div": f'''

def _safe_div(a: Tensor, b: Tensor) -> Tensor:
    """`a / (b + {DIV_EPS!r} * sgn(b))` with sgn(0) = 1, so the denominator is never zero."""
    sign = (b >= 0).to(b.dtype) * 2.0 - 1.0
    return a / (b + {DIV_EPS!r} * sign)
''',
    "PosEnc": '''

def _position_encoding(t: int, size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """P_t, the sinusoidal encoding of step t: P_t[2i] = sin(t / 10000^(2i/size)), P_t[2i+1] = cos(...)."""
    pos = torch.full((1, 1), float(t), dtype=torch.float64, device=device)
    freq = torch.exp(torch.arange(0, size, 2, dtype=torch.float64, device=device) * (-math.log(10000.0) / size))
    pe = torch.zeros(1, size, dtype=torch.float64, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: size // 2])
    return pe[0].to(dtype)
''',
}

_TEMPLATE = '''"""{title}: a recurrent cell exported by evonas {version}, as plain PyTorch (imports only torch).

Cell (canonical form): {text}

Equations, one line per intermediate value; each is one line of `_CellBase.step` below
(W{{k}}, b{{k}} = self.mm[k-1].weight, .bias; w{{k}} = self.diag[k-1]; LN{{k}} = self.layernorm[k-1];
P_t = the sinusoidal position encoding of step t; x_{{t-1}} = the previous input, zeros at t = 0):

{equations}

Modules (parameters laid out as evonas's `compile_cell`, so its state dict loads with `load_state_dict`):
- `Cell(input_size, hidden_size)`: one step, `h, state = cell(x[B, I], state)`. The state is a tuple
  `State(h, c, x_prev, t)`: h [B, H]; c [B, H] (None for a cell without Memory); the previous input x_prev
  (None: zeros) and the step index t (the `x_{{t-1}}` and `P_t` of the equations). `state=None` starts at
  t = 0 with zeros. (The `nn.LSTMCell` convention, with the whole state in one tuple.)
- `RNN(input_size, hidden_size, batch_first=False)`: a whole sequence, the `nn.LSTM` convention:
  `output, (h_n, c_n) = rnn(x[T, B, I], state)` with output [T, B, H] ([B, T, H] with batch_first) and
  `state = (h_0, c_0)` or None (zeros). Steps are numbered t = 0, 1, ... within each call.
{size_note}
`python cell.py` runs a tiny forward pass (with weights.pt from beside this file when it is there).
"""

from __future__ import annotations
{imports}
from typing import NamedTuple

import torch
{functional}from torch import Tensor, nn

CELL = {text!r}
INPUT_SIZE = {input_size}
HIDDEN_SIZE = {hidden_size}
HAS_MEMORY = {has_memory}
SAME_SIZE = {same_size}  # True: the cell mixes x with hidden-size values, so input_size must equal hidden_size


class State(NamedTuple):
    """The step state: h, c (None without Memory), the previous input (None: zeros) and the step index."""

    h: Tensor
    c: Tensor | None
    x_prev: Tensor | None
    t: int


def _diag_vector(size: int) -> nn.Parameter:
    """A Diag weight vector, initialised U(-1/sqrt(size), 1/sqrt(size)) as evonas does."""
    bound = size**-0.5
    return nn.Parameter(torch.empty(size).uniform_(-bound, bound))
{helpers}

class _CellBase(nn.Module):
    """The parameters and the step function shared by `Cell` and `RNN`."""

    def __init__(self, input_size: int = INPUT_SIZE, hidden_size: int = HIDDEN_SIZE):
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"sizes must be positive, got {{input_size}} and {{hidden_size}}")
        if SAME_SIZE and input_size != hidden_size:
            raise ValueError(f"this cell needs input_size == hidden_size, got {{input_size}} and {{hidden_size}}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        {decl}

    def step(self, x: Tensor, h_prev: Tensor, c_prev: Tensor | None, x_prev: Tensor,
             t: int) -> tuple[Tensor, Tensor | None]:
        """One step of the equations: (h_t, c_t); c_t is None for a cell without Memory."""
        {body}
        return {ret}

    def _zeros(self, x: Tensor, batch: int) -> Tensor:
        return x.new_zeros(batch, self.hidden_size)


class Cell(_CellBase):
    """One step of the cell: `h, state = cell(x[B, I], state=None)`; see the module docstring."""

    def forward(self, x: Tensor, state: State | tuple | None = None) -> tuple[Tensor, State]:
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"expected x of shape [B, {{self.input_size}}], got {{list(x.shape)}}")
        h_prev, c_prev, x_prev, t = state if state is not None else (None, None, None, 0)
        if h_prev is None:
            h_prev = self._zeros(x, x.shape[0])
        if HAS_MEMORY and c_prev is None:
            c_prev = self._zeros(x, x.shape[0])
        if x_prev is None:
            x_prev = torch.zeros_like(x)
        h, c = self.step(x, h_prev, c_prev, x_prev, int(t))
        return h, State(h, c, x, int(t) + 1)


class RNN(_CellBase):
    """The cell over a sequence: `output, (h_n, c_n) = rnn(x, state=None)`; see the module docstring."""

    def __init__(self, input_size: int = INPUT_SIZE, hidden_size: int = HIDDEN_SIZE, batch_first: bool = False):
        super().__init__(input_size, hidden_size)
        self.batch_first = batch_first

    def forward(self, x: Tensor, state: tuple | None = None) -> tuple[Tensor, tuple[Tensor, Tensor | None]]:
        if self.batch_first and x.dim() == 3:
            x = x.transpose(0, 1)
        if x.dim() != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"expected x of shape [T, B, {{self.input_size}}] ([B, T, ...] with batch_first), "
                             f"got {{list(x.shape)}}")
        h, c = state if state is not None else (None, None)
        h = self._zeros(x, x.shape[1]) if h is None else h
        c = (self._zeros(x, x.shape[1]) if c is None else c) if HAS_MEMORY else None
        x_prev = torch.zeros_like(x[0]) if x.shape[0] else None
        outputs = []
        for t in range(x.shape[0]):
            h, c = self.step(x[t], h, c, x_prev, t)
            outputs.append(h)
            x_prev = x[t]
        out = torch.stack(outputs) if outputs else x.new_zeros(0, x.shape[1], self.hidden_size)
        return (out.transpose(0, 1) if self.batch_first else out), (h, c)


if __name__ == "__main__":
    from pathlib import Path

    rnn = RNN(INPUT_SIZE, HIDDEN_SIZE)
    weights = Path(__file__).with_name("weights.pt")
    if weights.is_file():
        rnn.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        print(f"loaded {{weights}}")
    x = torch.randn(5, 2, INPUT_SIZE)
    output, (h_n, c_n) = rnn(x)
    print(f"RNN: x {{list(x.shape)}} -> output {{list(output.shape)}}, h_n {{list(h_n.shape)}}, "
          f"c_n {{None if c_n is None else list(c_n.shape)}}")
    cell = Cell(INPUT_SIZE, HIDDEN_SIZE)
    cell.load_state_dict(rnn.state_dict())
    h, state = cell(x[0])
    h, state = cell(x[1], state)
    print(f"Cell: x {{list(x[1].shape)}} -> h {{list(h.shape)}}, step {{state.t}}; "
          f"matches RNN: {{torch.allclose(h, output[1], atol=1e-6)}}")
'''


def needs_same_size(cell: Node) -> bool:
    """True when the cell type-checks only with input size == hidden size (x mixed with hidden values)."""
    return not is_well_formed(cell)


def cell_source(cell: Node, input_size: int, hidden_size: int, title: str = "cell", version: str = "") -> str:
    """The text of a standalone `cell.py` for a well-formed cell (see the module docstring)."""
    cell = canonical(cell)
    body, decl = step_lines(cell)
    ops = {n.op for n in preorder(cell)}
    text = to_text(cell)
    eqs = "\n".join(f"    {line}" for line in equations(cell))
    if not title.replace("_", "").isalnum():  # a library name or "cell"; never free user text
        title = "cell"
    version = "".join(ch for ch in version if ch.isalnum() or ch in ".+-")  # package metadata, kept to its charset
    size_note = ("Input and hidden size must be equal: the cell uses x where a hidden-size value goes.\n"
                 if needs_same_size(cell) else "")
    source = _TEMPLATE.format(
        title=title, version=version, text=text, equations=eqs, size_note=size_note,
        imports="\nimport math" if "PosEnc" in ops else "",
        functional="import torch.nn.functional as F\n" if ops & {"SELU", "LeakyReLU"} else "",
        input_size=int(input_size), hidden_size=int(hidden_size), has_memory="Memory" in ops,
        same_size=needs_same_size(cell), helpers="".join(_HELPERS[op] for op in sorted(_HELPERS) if op in ops),
        decl="\n        ".join(decl), body="\n        ".join(body),
        ret="h, c" if "Memory" in ops else "h, None")
    compile(source, "cell.py", "exec")  # a generator bug fails here, not in the user's hands
    return source


def op_set_name(ops: set[str]) -> str:
    """The smallest named operator set (core, extended, all) holding these operators."""
    return "core" if ops <= CORE else "extended" if ops <= EXTENDED else "all"


def _load_weights(path: Path, module: torch.nn.Module) -> None:
    """Check that a state dict file loads into the compiled cell; CheckpointError naming the problem."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:  # weights_only: tensors only
        raise CheckpointError(f"{path}: not a readable state dict ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict (parameter name -> tensor)")
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: does not fit the cell: {' '.join(str(e).split())[:300]}") from None


def evonas_version() -> str:
    """The installed evonas version (read from the package metadata: this layer may not import the facade)."""
    try:
        return metadata.version("evonas")
    except metadata.PackageNotFoundError:
        return "unknown"


def export_cell(cell: Node, out: str | Path, input_size: int, hidden_size: int, *, written: str | None = None,
                title: str = "cell", source: dict[str, Any] | None = None, op_set: Any = None,
                weights: str | Path | None = None, force: bool = False) -> dict[str, Any]:
    """Write genotype.json, cell.py (and weights.pt, a copy of `weights`) into `out`; return the genotype."""
    out = Path(out)
    module = compile_cell(cell, input_size, hidden_size)  # CellError for a cell that does not fit the sizes
    if weights is not None:
        _load_weights(Path(weights), module)
    if out.exists() and not out.is_dir():
        raise EvonasError(f"{out}: exists and is not a folder")
    existing = [f for f in FILES if (out / f).exists()]
    if existing and not force:
        raise EvonasError(f"{out} already holds {', '.join(existing)} (use --force to replace an export)")
    node = module.cell
    ops = sorted({n.op for n in preorder(node) if not n.is_source})
    genotype = {
        "format": FORMAT,
        "cell": to_text(node),
        "written": written if written is not None else to_text(cell),
        "ops": ops,
        "op_set": op_set if op_set is not None else op_set_name(set(ops)),
        "sources": sorted({n.op for n in preorder(node) if n.is_source}),
        "input_size": int(input_size),
        "hidden_size": int(hidden_size),
        "same_size_required": needs_same_size(node),
        "has_memory": module.has_memory,
        "parameters": sum(p.numel() for p in module.parameters()),
        "equations": equations(node),
        "evonas_version": evonas_version(),
        "source": source or {},
        "files": {"cell.py": "standalone PyTorch module (imports only torch)",
                  **({"weights.pt": "state dict of the trained cell (load_state_dict into cell.RNN)"}
                     if weights is not None else {})},
    }
    code = cell_source(node, input_size, hidden_size, title, evonas_version())
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write(out / "cell.py", code.encode("utf-8"))
        _write(out / "genotype.json", (json.dumps(genotype, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
        if weights is not None:
            tmp = out / "weights.pt.tmp"
            shutil.copyfile(weights, tmp)
            os.replace(tmp, out / "weights.pt")
        elif (out / "weights.pt").exists():  # --force over an export with weights: they belong to another cell
            (out / "weights.pt").unlink()
    except OSError as e:
        raise EvonasError(f"{out}: cannot write the export ({e.strerror or e})") from None
    return genotype


def _write(path: Path, data: bytes) -> None:
    """Write a file atomically (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
