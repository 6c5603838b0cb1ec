"""The cell library (configs/cells.yaml): every entry parses, is well-formed, and passes the filters we expect."""

from __future__ import annotations

import pytest

from evonas.cells import RULES, canonical_text, check, filter_report, parse, to_text
from evonas.cells.library import LIBRARY_FILE, LibraryCell, library, lookup, resolve
from evonas.errors import CellError, CellSyntaxError, ConfigError

# name -> the default-config filter rules the entry FAILS (every other rule passes).
EXPECTED_FAILURES: dict[str, set[str]] = {
    "tanh_rnn": set(),
    "lstm": {"max_nodes"},
    "lstm_peephole": {"max_nodes"},
    "nig": {"max_nodes"},
    "nfg": {"max_nodes"},
    "nog": {"max_nodes"},
    "niaf": {"max_nodes"},
    "noaf": {"max_nodes"},
    "np": {"max_nodes"},
    "cifg": {"max_nodes"},
    "fgr": {"max_nodes"},
    "gru": set(),
    "gru_pytorch": set(),
    "mgu": set(),
    "ugrnn": set(),
    "indrnn": set(),
    "qrnn": {"uses_x_and_h", "max_nodes"},  # gates read x and x_prev only; the state is c_prev
    "highway": set(),
    "nas": {"max_nodes", "max_height"},
    "enas": {"max_nodes", "max_height"},
}

# Entries that are, by construction, the same architecture as another (see their descriptions).
SAME_ARCHITECTURE = {"np": "lstm", "fgr": "lstm_peephole", "mgu": "gru"}

DESIGN_GRU = ("Gate3(Tanh(Add(MM(x),MM(Mult(Sigmoid(Add(MM(x),MM(h_prev))),h_prev)))),h_prev,"
              "Sigmoid(Add(MM(x),MM(h_prev))))")
DESIGN_LSTM = ("Mult(Sigmoid(Add(MM(x),MM(h_prev))),Tanh(Memory(Add(Mult(Sigmoid(Add(MM(x),MM(h_prev))),c_prev),"
               "Mult(Sigmoid(Add(MM(x),MM(h_prev))),Tanh(Add(MM(x),MM(h_prev))))))))")


def test_library_has_exactly_the_expected_entries():
    assert list(library()) == list(EXPECTED_FAILURES)


@pytest.mark.parametrize("name", sorted(EXPECTED_FAILURES))
def test_entry_parses_is_well_formed_and_fails_exactly_the_expected_filters(name):
    entry = library()[name]
    assert isinstance(entry, LibraryCell) and entry.name == name
    assert entry.citation and entry.description and "\n" not in entry.description
    node = check(entry.text)
    assert to_text(parse(entry.text)) == entry.text
    failed = {r.rule for r in filter_report(node) if not r.passed}
    assert failed == EXPECTED_FAILURES[name]
    assert failed <= set(RULES)


def test_design_reference_cells_are_in_the_library():
    assert library()["gru"].text == DESIGN_GRU
    assert library()["lstm"].text == DESIGN_LSTM


def test_duplicates_are_the_declared_ones_only():
    by_canon: dict[str, list[str]] = {}
    for name, entry in library().items():
        by_canon.setdefault(canonical_text(entry.cell), []).append(name)
    groups = sorted(sorted(g) for g in by_canon.values() if len(g) > 1)
    assert groups == sorted(sorted([a, b]) for a, b in SAME_ARCHITECTURE.items())


def test_peephole_and_gate_structure():
    lib = library()
    assert "Diag(c_prev)" in lib["lstm_peephole"].text and "Diag" not in lib["lstm"].text
    assert lib["cifg"].cell.op == "Mult" and "Gate3(Tanh(" in lib["cifg"].text
    assert lib["nog"].cell.op == "Tanh" and lib["noaf"].cell.children[1].op == "Memory"
    assert "Diag(h_prev)" in lib["indrnn"].text and "ReLU" in lib["indrnn"].text
    assert "x_prev" in lib["qrnn"].text and "h_prev" not in lib["qrnn"].text
    for name in ("nas", "enas"):
        assert "approximat" in lib[name].description.lower() or "differen" in lib[name].description.lower()


def test_lookup_and_resolve_accept_names_case_insensitively():
    assert lookup("LSTM") is library()["lstm"]
    assert lookup("  Gru_PyTorch ") is library()["gru_pytorch"]
    assert lookup("Tanh(Add(MM(x),MM(h_prev)))") is None
    assert resolve("LSTM") == parse(DESIGN_LSTM)
    assert resolve("Tanh( Add( MM(x_t), MM(h_{t-1}) ) )") == library()["tanh_rnn"].cell


def test_resolve_errors_are_one_line_and_specific():
    with pytest.raises(CellSyntaxError, match="neither a library cell") as info:
        resolve("lstmm")
    assert "\n" not in str(info.value) and info.value.column == 1
    with pytest.raises(CellSyntaxError, match="column 27"):
        resolve("Tanh(Add(MM(x),MM(h_prev))")
    with pytest.raises(CellSyntaxError, match="expected '\\('"):
        resolve("Tanh")
    with pytest.raises(CellError, match="input size"):
        resolve("x")
    with pytest.raises(CellError):
        resolve("Add(x,h_prev)")
    assert resolve("Add(x,h_prev)", input_size=4, hidden_size=4) == parse("Add(x,h_prev)")
    with pytest.raises(CellSyntaxError):
        resolve(None)  # type: ignore[arg-type]


def _write(tmp_path, body: str):
    p = tmp_path / "cells.yaml"
    p.write_text(body, encoding="utf-8")
    return p


GOOD = 'cells:\n  - {name: a, citation: c, text: "Tanh(MM(h_prev))", description: d}\n'


def test_library_loads_another_file(tmp_path):
    lib = library(_write(tmp_path, GOOD))
    assert list(lib) == ["a"] and lib["a"].text == "Tanh(MM(h_prev))"
    assert resolve("A", path=tmp_path / "cells.yaml") == parse("Tanh(MM(h_prev))")


@pytest.mark.parametrize("body,fragment", [
    ("cells: [", "not valid YAML"),
    ("- a\n", "exactly one key"),
    ("cells: [1]\n", "must be a mapping"),
    (GOOD.replace("description: d", "description: d, extra: 1"), "unknown key"),
    (GOOD.replace(", description: d", ""), "missing key"),
    (GOOD.replace("name: a", "name: A"), "lowercase"),
    (GOOD.replace("name: a", "name: h_prev"), "shadow"),
    (GOOD.replace("citation: c", "citation: ''"), "non-empty"),
    (GOOD.replace("Tanh(MM(h_prev))", "Tanh(MM(h_prev)"), "column 16"),
    (GOOD.replace("Tanh(MM(h_prev))", "Tanh(x)"), "bad cell text"),
    (GOOD + GOOD[len("cells:\n"):], "duplicate name"),
    (GOOD.replace("description: d", 'description: "two\\nlines"'), "one line"),
])
def test_bad_library_files_raise_one_line_config_errors(tmp_path, body, fragment):
    with pytest.raises(ConfigError, match=fragment) as info:
        library(_write(tmp_path, body))
    assert "\n" not in str(info.value)


def test_missing_library_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        library(tmp_path / "nope.yaml")


def test_default_library_file_is_in_the_repo():
    assert LIBRARY_FILE.name == "cells.yaml" and LIBRARY_FILE.parent.name == "configs" and LIBRARY_FILE.is_file()
