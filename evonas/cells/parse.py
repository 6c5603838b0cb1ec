"""Parse cell text into a `Node` tree. Any input string gives a tree or a `CellSyntaxError`."""

from __future__ import annotations

import re

from evonas.cells.ops import OPS, SOURCE_ALIASES, SOURCES
from evonas.cells.tree import Node
from evonas.errors import CellSyntaxError

MAX_DEPTH = 100  # nesting deeper than this is refused (keeps every recursive walk far from Python's limit)
MAX_LENGTH = 100_000

_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\{[^{}()\s,]*\})?)|(?P<punct>[(),]))")


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, value, 1-based column) for names and punctuation; anything else is a syntax error."""
    out: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            col = pos + len(text[pos:]) - len(text[pos:].lstrip()) + 1
            if col > len(text):  # only whitespace left
                break
            raise CellSyntaxError(f"unexpected character {text[col - 1]!r}", text, col)
        kind = "name" if m.group("name") else "punct"
        value = m.group(kind)
        out.append((kind, value, m.start(kind) + 1))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def error(self, message: str, column: int | None = None) -> CellSyntaxError:
        if column is None:
            column = self.toks[self.i][2] if self.i < len(self.toks) else len(self.text) + 1
        return CellSyntaxError(message, self.text, column)

    def peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def expect(self, value: str) -> None:
        tok = self.peek()
        if tok is None or tok[1] != value:
            got = "end of text" if tok is None else repr(tok[1])
            raise self.error(f"expected {value!r}, got {got}")
        self.i += 1

    def expr(self, depth: int) -> Node:
        tok = self.peek()
        if tok is None:
            raise self.error("expected an operator or a source, got end of text")
        kind, value, col = tok
        if kind != "name":
            raise self.error(f"expected an operator or a source, got {value!r}")
        if depth > MAX_DEPTH:
            raise self.error(f"cell nested deeper than {MAX_DEPTH} levels")
        self.i += 1
        name = SOURCE_ALIASES.get(value, value)
        if name in SOURCES:
            nxt = self.peek()
            if nxt is not None and nxt[1] == "(":
                raise self.error(f"source {value!r} takes no arguments", nxt[2])
            return Node(name)
        if name not in OPS:
            raise self.error(f"unknown operator or source {value!r}", col)
        spec = OPS[name]
        self.expect("(")
        args = [self.expr(depth + 1)]
        while (nxt := self.peek()) is not None and nxt[1] == ",":
            self.i += 1
            args.append(self.expr(depth + 1))
        if len(args) != spec.arity:
            raise self.error(f"{name} takes {spec.arity} argument(s), got {len(args)}", col)
        self.expect(")")
        return Node(name, tuple(args))


def parse(text: str) -> Node:
    """Parse one cell expression. Raises `CellSyntaxError` (with column and caret) for anything else."""
    if not isinstance(text, str):
        raise CellSyntaxError(f"cell text must be a string, got {type(text).__name__}", "", 1)
    if len(text) > MAX_LENGTH:
        raise CellSyntaxError(f"cell text longer than {MAX_LENGTH} characters", text[:80], 1)
    p = _Parser(text)
    if not p.toks:
        raise CellSyntaxError("empty cell text", text, 1)
    node = p.expr(0)
    if p.peek() is not None:
        raise p.error(f"unexpected {p.peek()[1]!r} after the end of the cell")
    return node
