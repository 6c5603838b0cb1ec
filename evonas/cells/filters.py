"""Structural filters of the search (Schrimpf et al. 2017): each rule is a named check a config can switch off.

Filters restrict what evolution may propose; any well-formed cell can still be compiled, trained and scored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

from evonas.cells.tree import Node, find, height, node_count, preorder, uses
from evonas.errors import ConfigError


@dataclass(frozen=True)
class FilterConfig:
    """Which filters are on and their parameters. `disabled` names rules to skip."""

    max_nodes: int = 21
    max_height: int = 10
    min_memory_nodes: int = 3
    disabled: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_dict(cls, d: dict) -> FilterConfig:
        """Build from a config mapping; unknown keys, unknown rule names and bad values raise ConfigError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown filter key(s) {unknown}; known: {sorted(known)}")
        kw = dict(d)
        for key in ("max_nodes", "max_height", "min_memory_nodes"):
            if key in kw and (not isinstance(kw[key], int) or isinstance(kw[key], bool) or kw[key] < 0):
                raise ConfigError(f"filters.{key} must be a non-negative integer, got {kw[key]!r}")
        if "disabled" in kw:
            names = kw["disabled"]
            if not isinstance(names, list | tuple | set | frozenset):
                raise ConfigError(f"filters.disabled must be a list of rule names, got {names!r}")
            bad = sorted(set(names) - set(RULES))
            if bad:
                raise ConfigError(f"unknown filter rule(s) {bad} in filters.disabled; known: {sorted(RULES)}")
            kw["disabled"] = frozenset(names)
        return cls(**kw)


def _gate_is_sigmoid(cell: Node, cfg: FilterConfig) -> str | None:
    for n in preorder(cell):
        if n.op == "Gate3" and n.children[2].op != "Sigmoid":
            return f"the gate (third argument) of Gate3 is {n.children[2].op}, not Sigmoid"
    return None


def _uses_x_and_h(cell: Node, cfg: FilterConfig) -> str | None:
    missing = [s for s in ("x", "h_prev") if not uses(cell, s)]
    return f"the cell does not use {' or '.join(missing)}" if missing else None


def _max_nodes(cell: Node, cfg: FilterConfig) -> str | None:
    n = node_count(cell)
    return f"{n} nodes, more than the limit of {cfg.max_nodes}" if n > cfg.max_nodes else None


def _max_height(cell: Node, cfg: FilterConfig) -> str | None:
    h = height(cell)
    return f"height {h}, more than the limit of {cfg.max_height}" if h > cfg.max_height else None


def _no_stacked_unary(cell: Node, cfg: FilterConfig) -> str | None:
    for n in preorder(cell):
        if len(n.children) == 1 and n.children[0].op == n.op:
            return f"{n.op} is applied directly to {n.op}"
    return None


def _no_redundant_nesting(cell: Node, cfg: FilterConfig) -> str | None:
    """Sigmoid, ReLU or MM directly inside the same operator, looking through Memory (an identity)."""
    for n in preorder(cell):
        if n.op not in ("Sigmoid", "ReLU", "MM"):
            continue
        inner = n.children[0]
        while inner.op == "Memory":
            inner = inner.children[0]
        if inner.op == n.op:
            return f"{n.op} is applied directly to {n.op} (through Memory)" if inner is not n.children[0] \
                else f"{n.op} is applied directly to {n.op}"
    return None


def _memory_recurrence(cell: Node, cfg: FilterConfig) -> str | None:
    mem = find(cell, "Memory")
    if mem is not None and not uses(mem, "c_prev"):
        return "no path from c_prev to Memory: the cell state does not recur"
    return None


def _memory_min_nodes(cell: Node, cfg: FilterConfig) -> str | None:
    mem = find(cell, "Memory")
    if mem is not None and node_count(mem) < cfg.min_memory_nodes:
        return f"the Memory subtree has {node_count(mem)} nodes, fewer than {cfg.min_memory_nodes}"
    return None


RULES: dict[str, Callable[[Node, FilterConfig], str | None]] = {
    "gate_is_sigmoid": _gate_is_sigmoid,
    "uses_x_and_h": _uses_x_and_h,
    "max_nodes": _max_nodes,
    "max_height": _max_height,
    "no_stacked_unary": _no_stacked_unary,
    "no_redundant_nesting": _no_redundant_nesting,
    "memory_recurrence": _memory_recurrence,
    "memory_min_nodes": _memory_min_nodes,
}


@dataclass(frozen=True)
class FilterResult:
    """The verdict of one rule on one cell: `reason` is None when it passed."""

    rule: str
    passed: bool
    reason: str | None = None


def filter_report(cell: Node, cfg: FilterConfig | None = None) -> list[FilterResult]:
    """Every enabled rule's verdict, in the order of RULES."""
    cfg = cfg or FilterConfig()
    out = []
    for name, rule in RULES.items():
        if name in cfg.disabled:
            continue
        reason = rule(cell, cfg)
        out.append(FilterResult(name, reason is None, reason))
    return out


def passes_filters(cell: Node, cfg: FilterConfig | None = None) -> bool:
    """True when every enabled rule passes (stops at the first failure)."""
    cfg = cfg or FilterConfig()
    return all(rule(cell, cfg) is None for name, rule in RULES.items() if name not in cfg.disabled)
