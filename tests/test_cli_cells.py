"""`evonas cells list` and `evonas cells show` through click's CliRunner."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from evonas.cli.main import cli

from evonas.cells import RULES, canonical_text, equations, parse
from evonas.cells.library import library


def run(*args: str):
    # click >= 8.2 keeps stderr apart from stdout by default (mix_stderr was removed).
    return CliRunner().invoke(cli, list(args), obj={}, catch_exceptions=False)


def test_list_prints_a_row_per_library_cell():
    result = run("cells", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("filters with max_nodes 21, max_height 10"), lines[0]
    assert lines[1].split()[:4] == ["name", "nodes", "height", "filters"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == set(library())
    assert rows["tanh_rnn"][1:4] == ["6", "3", "yes"]
    assert rows["lstm"][1:4] == ["31", "8", "no"]
    assert rows["gru"][3] == "yes"


def test_list_json():
    result = run("cells", "list", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    by_name = {d["name"]: d for d in data}
    assert by_name["lstm"]["failed"] == ["max_nodes"] and by_name["lstm"]["filters"] is False
    assert by_name["gru"]["filters"] is True and by_name["gru"]["nodes"] == 21


def test_show_lstm_prints_facts_filters_and_equations():
    result = run("cells", "show", "lstm")
    assert result.exit_code == 0, result.output
    out = result.stdout
    lstm = library()["lstm"].cell
    assert f"canonical:   {canonical_text(lstm)}" in out
    assert "nodes:       31" in out and "height:      8" in out
    assert "MM 8" in out and "Memory 1" in out and "Sigmoid 3" in out
    for rule in RULES:
        assert rule in out
    assert "max_nodes             FAIL  31 nodes, more than the limit of 21" in out
    for line in equations(lstm):
        assert f"  {line}" in out
    assert "c_t = " in out and "h_t = " in out
    assert result.stderr == ""


def test_show_accepts_text_with_aliases_and_upper_case_names():
    by_text = run("cells", "show", "Tanh(Add(MM(x_t), MM(h_{t-1})))")
    assert by_text.exit_code == 0
    assert "canonical:   Tanh(Add(MM(h_prev),MM(x)))" in by_text.stdout
    assert "name:" not in by_text.stdout  # not presented as a library entry
    by_name = run("cells", "show", "TANH_RNN")
    assert by_name.exit_code == 0 and "name:        tanh_rnn" in by_name.stdout


def test_show_json():
    result = run("cells", "show", "gru", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["name"] == "gru" and data["nodes"] == 21
    assert data["canonical"] == canonical_text(parse(library()["gru"].text))
    assert [f["rule"] for f in data["filters"]] == list(RULES) and all(f["passed"] for f in data["filters"])
    assert data["equations"][-1].startswith("h_t = ")


@pytest.mark.parametrize("text,fragment", [
    ("Tanh(Add(MM(x),MM(h_prev))", "column 27"),
    ("Tanh(Foo(x))", "column 6"),
    ("Tanh(\nh_prev))", "column 14"),
    ("lstmm", "neither a library cell"),
    ("Add(x,h_prev)", "mixes input-size and hidden-size"),
    ("Tanh(MM(x))", "no state"),
])
def test_bad_cells_print_one_line_and_exit_2(text, fragment):
    result = run("cells", "show", text)
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0]


def test_debug_flag_adds_a_traceback():
    result = run("--debug", "cells", "show", "Tanh(")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and result.stderr.rstrip().splitlines()[-1].startswith("error: ")


def test_limits_are_options_and_the_search_default_lets_the_lstm_pass():
    """`cells show/list --max-nodes 36` give the verdicts the default search (max_nodes 36) would give."""
    shown = run("cells", "show", "lstm", "--max-nodes", "36", "--json")
    assert shown.exit_code == 0, shown.output
    facts = json.loads(shown.stdout)
    assert facts["limits"] == {"max_nodes": 36, "max_height": 10}
    assert all(f["passed"] for f in facts["filters"]), facts["filters"]
    listed = json.loads(run("cells", "list", "--max-nodes", "36", "--json").stdout)
    assert {r["name"]: r["filters"] for r in listed}["lstm"] is True
    low = json.loads(run("cells", "show", "gru", "--max-height", "3", "--json").stdout)
    assert [f["rule"] for f in low["filters"] if not f["passed"]] == ["max_height"]
    bad = run("cells", "show", "lstm", "--max-nodes", "0")
    assert bad.exit_code == 2 and "--max-nodes" in bad.output
