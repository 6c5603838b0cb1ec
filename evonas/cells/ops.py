"""The operators of the cell language (see DESIGN.md) and the named operator sets."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OpSpec:
    """One operator: its name, arity, whether argument order is irrelevant, and a formula template."""

    name: str
    arity: int
    commutative: bool = False
    formula: str = ""  # readable form; {0}, {1}, {2} are the arguments


SOURCES: tuple[str, ...] = ("x", "x_prev", "h_prev", "c_prev")
INPUT_SOURCES = frozenset({"x", "x_prev"})  # have the input size; everything else the hidden size

OPS: dict[str, OpSpec] = {
    op.name: op
    for op in [
        OpSpec("MM", 1, formula="W·{0} + b"),
        OpSpec("Sigmoid", 1, formula="σ({0})"),
        OpSpec("Tanh", 1, formula="tanh({0})"),
        OpSpec("ReLU", 1, formula="relu({0})"),
        OpSpec("Add", 2, True, "{0} + {1}"),
        OpSpec("Mult", 2, True, "{0} ⊙ {1}"),
        OpSpec("Gate3", 3, formula="{2} ⊙ {0} + (1 - {2}) ⊙ {1}"),
        OpSpec("Memory", 1, formula="{0}"),
        OpSpec("Sub", 2, formula="{0} - {1}"),
        OpSpec("Div", 2, formula="{0} / ({1} + 1e-3·sgn({1}))"),
        OpSpec("Sin", 1, formula="sin({0})"),
        OpSpec("Cos", 1, formula="cos({0})"),
        OpSpec("SELU", 1, formula="selu({0})"),
        OpSpec("LeakyReLU", 1, formula="leaky_relu({0})"),
        OpSpec("PosEnc", 1, formula="{0} + P_t"),
        OpSpec("LayerNorm", 1, formula="layernorm({0})"),
        OpSpec("Diag", 1, formula="w ⊙ {0}"),
    ]
}

CORE: frozenset[str] = frozenset({"MM", "Sigmoid", "Tanh", "ReLU", "Add", "Mult", "Gate3", "Memory"})
EXTENDED: frozenset[str] = CORE | {"Sub", "Div", "Sin", "Cos", "PosEnc", "LayerNorm", "SELU"}
ALL: frozenset[str] = frozenset(OPS)
OP_SETS: dict[str, frozenset[str]] = {"core": CORE, "extended": EXTENDED, "all": ALL}

# Spellings the parser accepts for the sources, besides their plain names.
SOURCE_ALIASES: dict[str, str] = {
    "x_t": "x",
    "x_{t}": "x",
    "x_{t-1}": "x_prev",
    "h_{t-1}": "h_prev",
    "c_{t-1}": "c_prev",
}


def op_set(name_or_ops: str | list[str] | frozenset[str]) -> frozenset[str]:
    """Resolve an operator set given by name (`core`, `extended`, `all`) or as a list of operator names."""
    from evonas.errors import ConfigError

    if isinstance(name_or_ops, str):
        if name_or_ops in OP_SETS:
            return OP_SETS[name_or_ops]
        raise ConfigError(f"unknown operator set {name_or_ops!r}; expected one of {sorted(OP_SETS)}")
    if not isinstance(name_or_ops, list | tuple | set | frozenset) or not all(
        isinstance(op, str) for op in name_or_ops
    ):
        raise ConfigError(
            f"ops must be an operator-set name ({', '.join(sorted(OP_SETS))}) or a list of operator names, "
            f"got {name_or_ops!r}"
        )
    unknown = sorted(set(name_or_ops) - set(OPS))
    if unknown:
        raise ConfigError(f"unknown operator(s) {unknown}; known: {sorted(OPS)}")
    return frozenset(name_or_ops)
