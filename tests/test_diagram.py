"""Cell diagrams: Graphviz text for any well-formed cell; .svg/.png need the `dot` program."""

from __future__ import annotations

import shutil

import pytest

from evonas.cells import parse
from evonas.errors import EvonasError
from evonas.reporting.diagram import to_dot, write_diagram

LSTM = ("Mult(Sigmoid(Add(MM(x),MM(h_prev))),Tanh(Memory(Add(Mult(Sigmoid(Add(MM(x),MM(h_prev))),c_prev),"
        "Mult(Sigmoid(Add(MM(x),MM(h_prev))),Tanh(Add(MM(x),MM(h_prev))))))))")


def test_dot_marks_sources_memory_and_output():
    dot = to_dot(parse(LSTM), "LSTM")
    assert dot.startswith("digraph cell {") and dot.rstrip().endswith("}")
    assert dot.count('label="MM"') == 8, "one node per MM occurrence (the LSTM has 8)"
    for source in ("x_t", "h_{t-1}", "c_{t-1}"):
        assert dot.count(f'label="{source}"') == 1, f"source {source} drawn exactly once"
    assert "Memory\\n(c_t)" in dot and 'h_t [label="h_t"' in dot


def test_gate3_edges_name_their_slot():
    dot = to_dot(parse("Gate3(Tanh(MM(x)),h_prev,Sigmoid(MM(h_prev)))"))
    assert '[label="a"]' in dot and '[label="b"]' in dot and '[label="g"]' in dot


def test_write_dot_and_unknown_format(tmp_path):
    out = write_diagram(parse(LSTM), tmp_path / "lstm.dot")
    assert out.read_text().startswith("digraph")
    with pytest.raises(EvonasError, match="not supported"):
        write_diagram(parse(LSTM), tmp_path / "lstm.pdf")


def test_svg_needs_graphviz(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(EvonasError, match="apt-get install graphviz"):
        write_diagram(parse(LSTM), tmp_path / "lstm.svg")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot not installed")
def test_svg_with_graphviz(tmp_path):
    out = write_diagram(parse(LSTM), tmp_path / "lstm.svg")
    assert "<svg" in out.read_text()
