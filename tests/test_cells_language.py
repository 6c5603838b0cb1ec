"""The cell language: parse/print round trip, canonical form, errors with columns, well-formedness, filters."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import cells, mutated, styled_texts, token_strings, trees

from evonas.cells import (
    RULES,
    FilterConfig,
    Node,
    canonical,
    canonical_text,
    check,
    equations,
    filter_report,
    height,
    node_count,
    parse,
    passes_filters,
    preorder,
    to_text,
)
from evonas.errors import CellError, CellSyntaxError, ConfigError, EvonasError

LSTM = ("Mult(Sigmoid(Add(MM(x),MM(h_prev))),Tanh(Memory(Add(Mult(Sigmoid(Add(MM(x),MM(h_prev))),c_prev),"
        "Mult(Sigmoid(Add(MM(x),MM(h_prev))),Tanh(Add(MM(x),MM(h_prev))))))))")
GRU = ("Gate3(Tanh(Add(MM(x),MM(Mult(Sigmoid(Add(MM(x),MM(h_prev))),h_prev)))),h_prev,"
       "Sigmoid(Add(MM(x),MM(h_prev))))")
RNN = "Tanh(Add(MM(x),MM(h_prev)))"


def _replace_at(node: Node, path: tuple[int, ...], new: Node) -> Node:
    if not path:
        return new
    kids = list(node.children)
    kids[path[0]] = _replace_at(kids[path[0]], path[1:], new)
    return Node(node.op, tuple(kids))


def _paths(node: Node, prefix: tuple[int, ...] = ()) -> list[tuple[tuple[int, ...], Node]]:
    out = [(prefix, node)]
    for i, c in enumerate(node.children):
        out += _paths(c, prefix + (i,))
    return out


# ---------------------------------------------------------------- round trip and canonical form

@given(trees())
def test_print_parse_round_trip_any_tree(node):
    assert parse(to_text(node)) == node


@given(cells())
def test_generated_cells_are_well_formed_and_round_trip(node):
    assert check(node) is node
    assert parse(to_text(node)) == node
    assert check(to_text(node)) == node


@given(styled_texts())
def test_whitespace_and_aliases_do_not_change_the_tree(pair):
    node, text = pair
    assert parse(text) == node


@given(cells())
def test_canonical_is_idempotent_and_prints_without_spaces(node):
    c = canonical(node)
    assert canonical(c) == c
    assert canonical_text(c) == canonical_text(node) == to_text(c)
    assert " " not in canonical_text(node)
    assert parse(canonical_text(node)) == c
    assert node_count(c) <= node_count(node)  # equivalent spellings merge (see test_equivalent_spellings_...)


@given(cells(), st.data())
def test_canonical_invariant_under_swapping_add_mult_arguments(node, data):
    commutative = [(p, n) for p, n in _paths(node) if n.op in ("Add", "Mult")]
    if not commutative:
        node = Node("Add", (node, Node("MM", (Node("x"),))))
        commutative = [((), node)]
    for _ in range(data.draw(st.integers(1, 3))):
        path, n = data.draw(st.sampled_from(commutative))
        swapped = _replace_at(node, path, Node(n.op, n.children[::-1]))
        assert canonical_text(swapped) == canonical_text(node)


def test_canonical_keeps_gate3_and_sub_argument_order():
    a = parse("Gate3(MM(x),h_prev,Sigmoid(MM(h_prev)))")
    b = parse("Gate3(h_prev,MM(x),Sigmoid(MM(h_prev)))")
    assert canonical_text(a) != canonical_text(b)
    assert canonical_text(parse("Sub(MM(x),h_prev)")) != canonical_text(parse("Sub(h_prev,MM(x))"))
    assert canonical_text(parse("Add(MM(x),h_prev)")) == canonical_text(parse("Add(h_prev , MM( x ))"))


def test_canonical_sorts_nested_commutative_arguments():
    assert canonical_text(parse("Mult(Add(x_prev,x),Add(h_prev,c_prev))")) == \
        "Mult(Add(c_prev,h_prev),Add(x,x_prev))"


# ---------------------------------------------------------------- nothing but our errors escape

def _only_cell_errors(text: str) -> None:
    try:
        node = check(text)
    except (CellSyntaxError, CellError) as e:
        msg = str(e)
        assert msg and "\n" not in msg, f"error message must be one line: {msg!r}"
        if isinstance(e, CellSyntaxError):
            assert 1 <= e.column <= len(text) + 1
    else:
        assert isinstance(node, Node)


@settings(max_examples=300)
@given(st.text(max_size=60))
def test_arbitrary_strings_only_raise_cell_errors(text):
    _only_cell_errors(text)


@settings(max_examples=300)
@given(token_strings())
def test_token_soup_only_raises_cell_errors(text):
    _only_cell_errors(text)


@settings(max_examples=300)
@given(st.data())
def test_mutated_valid_cells_only_raise_cell_errors(data):
    node = data.draw(cells(max_depth=4))
    _only_cell_errors(data.draw(mutated(to_text(node))))


@pytest.mark.parametrize("text", [LSTM, GRU, RNN])
def test_every_single_character_deletion_is_handled(text):
    for i in range(len(text)):
        _only_cell_errors(text[:i] + text[i + 1:])


def test_non_string_and_huge_inputs_raise_cell_syntax_error():
    for bad in (None, 3, b"MM(x)"):
        with pytest.raises(CellSyntaxError):
            parse(bad)
    with pytest.raises(CellSyntaxError, match="longer than"):
        parse("Tanh(" * 30_000 + "h_prev" + ")" * 30_000)
    with pytest.raises(CellSyntaxError, match="nested deeper"):
        parse("Tanh(" * 200 + "h_prev" + ")" * 200)


def test_error_classes_are_evonas_and_value_errors():
    assert issubclass(CellSyntaxError, EvonasError) and issubclass(CellSyntaxError, ValueError)
    assert issubclass(CellError, EvonasError) and issubclass(CellError, ValueError)


# ---------------------------------------------------------------- aliases and columns

@pytest.mark.parametrize("alias,source", [
    ("x_t", "x"), ("x_{t}", "x"), ("x_{t-1}", "x_prev"), ("h_{t-1}", "h_prev"), ("c_{t-1}", "c_prev"),
])
def test_aliases_parse(alias, source):
    assert parse(alias) == Node(source)
    assert parse(f"Tanh(Add(MM({alias}),MM(h_{{t-1}})))") == parse(f"Tanh(Add(MM({source}),MM(h_prev)))")


def test_aliases_in_a_full_cell():
    text = "Gate3( Tanh(MM(x_t)) , h_{t-1} , Sigmoid(Add(MM(x_{t-1}), MM(h_{t-1}))) )"
    assert to_text(parse(text)) == "Gate3(Tanh(MM(x)),h_prev,Sigmoid(Add(MM(x_prev),MM(h_prev))))"


@pytest.mark.parametrize("text,column,fragment", [
    ("Tanh(Add(MM(x),MM(h_prev))", 27, "expected ')'"),       # missing ')' at the end
    ("Tanh(Foo(x))", 6, "unknown operator or source 'Foo'"),
    ("MM(x,h_prev)", 1, "MM takes 1 argument"),
    ("Add(MM(x))", 1, "Add takes 2 argument"),
    ("Tanh(x$)", 7, "unexpected character '$'"),
    ("   h_prev(", 10, "takes no arguments"),
    ("Tanh(h_prev) x", 14, "after the end of the cell"),
    ("Tanh(,h_prev)", 6, "got ','"),
    ("", 1, "empty"),
    ("   ", 1, "empty"),
    ("Tanh(é)", 6, "unexpected character 'é'"),
    ("Tanh(\n  h_prev))", 16, "after the end"),
    ("Tanh h_prev", 6, "expected '('"),
    ("h_{t - 1}", 3, "unexpected character '{'"),
])
def test_syntax_errors_name_the_column(text, column, fragment):
    with pytest.raises(CellSyntaxError) as info:
        parse(text)
    e = info.value
    assert e.column == column, str(e)
    assert fragment in str(e)
    assert str(e).endswith(f"at column {column}")
    line, mark = e.caret().split("\n")  # the line holding the column, and the caret under it
    line_start = text.rfind("\n", 0, column - 1) + 1
    assert mark == " " * (column - 1 - line_start) + "^"
    assert line == text[line_start:].split("\n")[0]


def test_caret_keeps_tabs_aligned():
    with pytest.raises(CellSyntaxError) as info:
        parse("Tanh(\th_prev$)")
    line, mark = info.value.caret().split("\n")
    assert line == "Tanh(\th_prev$)" and mark == "     \t      ^"


# ---------------------------------------------------------------- well-formedness

@pytest.mark.parametrize("text,rule", [
    ("Add(x,h_prev)", "sizes"),
    ("Tanh(x)", "sizes"),
    ("Add(MM(x),Memory(x))", "sizes"),
    ("Add(Memory(MM(x)),Memory(h_prev))", "memory"),
    ("Add(MM(x),c_prev)", "memory"),
    ("Tanh(MM(x))", "state"),
    ("Tanh(Add(MM(x),MM(x_prev)))", "state"),
])
def test_check_rejects_ill_formed_cells_naming_the_rule(text, rule):
    with pytest.raises(CellError) as info:
        check(text)
    assert info.value.rule == rule
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", [
    RNN, LSTM, GRU, "Memory(Add(c_prev,MM(x)))", "Tanh(Add(MM(Add(x,x_prev)),h_prev))",
    "Mult(Sigmoid(MM(x)),Memory(Gate3(c_prev,Tanh(MM(x_prev)),Sigmoid(MM(x)))))",  # state through c_prev only
])
def test_check_accepts_well_formed_cells(text):
    assert check(text) == parse(text)


def test_equal_sizes_make_every_value_type_check():
    with pytest.raises(CellError):
        check("Add(x,h_prev)", input_size=8, hidden_size=16)
    assert check("Add(x,h_prev)", input_size=16, hidden_size=16) == parse("Add(x,h_prev)")


def test_check_rejects_hand_built_bad_nodes():
    with pytest.raises(CellError, match="unknown operator"):
        check(Node("Foo", (Node("h_prev"),)))
    with pytest.raises(CellError, match="takes 2"):
        check(Node("Add", (Node("h_prev"),)))
    with pytest.raises(CellError, match="source"):
        check(Node("h_prev", (Node("x"),)))
    deep = Node("h_prev")
    for _ in range(5000):  # far beyond Python's recursion limit
        deep = Node("Tanh", (deep,))
    with pytest.raises(CellError, match="deeper than"):
        check(deep)


# ---------------------------------------------------------------- structural filters

def _rule(text: str, rule: str, cfg: FilterConfig | None = None):
    node = check(text)
    return next(r for r in filter_report(node, cfg) if r.rule == rule)


# Each rule: a cell that passes it and one that fails it (all well-formed).
FILTER_CASES = {
    "gate_is_sigmoid": (GRU, "Gate3(h_prev,Tanh(MM(x)),Tanh(MM(h_prev)))"),
    "uses_x_and_h": (RNN, "Tanh(Add(MM(x_prev),MM(h_prev)))"),
    "max_nodes": (GRU, LSTM),
    "max_height": (LSTM, "Tanh(Add(MM(x)," + "Sigmoid(Tanh(" * 5 + "MM(h_prev)" + "))" * 5 + "))"),
    "no_stacked_unary": (RNN, "Tanh(Tanh(Add(MM(x),MM(h_prev))))"),
    "no_redundant_nesting": (LSTM, "Add(MM(x),Sigmoid(Memory(Sigmoid(Add(MM(h_prev),c_prev)))))"),
    "memory_recurrence": (LSTM, "Tanh(Memory(Add(MM(x),MM(h_prev))))"),
    "memory_min_nodes": (LSTM, "Add(Memory(c_prev),Add(MM(x),MM(h_prev)))"),
}


def test_every_rule_has_a_case():
    assert set(FILTER_CASES) == set(RULES)


@pytest.mark.parametrize("rule", sorted(FILTER_CASES))
def test_each_filter_rule_passes_and_fails(rule):
    good, bad = FILTER_CASES[rule]
    assert _rule(good, rule).passed and _rule(good, rule).reason is None
    verdict = _rule(bad, rule)
    assert not verdict.passed and verdict.reason and "\n" not in verdict.reason
    assert not passes_filters(check(bad))
    off = FilterConfig(disabled=frozenset({rule}))
    assert rule not in {r.rule for r in filter_report(check(bad), off)}
    assert passes_filters(check(bad), off) == all(r.passed for r in filter_report(check(bad), off))


def test_filter_parameters_and_disabling():
    lstm = check(LSTM)
    assert not _rule(LSTM, "max_nodes").passed
    assert _rule(LSTM, "max_nodes", FilterConfig(max_nodes=31)).passed
    assert not _rule(LSTM, "max_nodes", FilterConfig(max_nodes=30)).passed
    assert not _rule(LSTM, "max_height", FilterConfig(max_height=7)).passed
    assert passes_filters(lstm, FilterConfig(disabled=frozenset({"max_nodes"})))
    assert "max_nodes" not in {r.rule for r in filter_report(lstm, FilterConfig(disabled=frozenset({"max_nodes"})))}
    assert [r.rule for r in filter_report(lstm)] == list(RULES)


def test_filter_config_from_dict_validates():
    assert FilterConfig.from_dict({"max_nodes": 30, "disabled": ["max_height"]}) == \
        FilterConfig(max_nodes=30, disabled=frozenset({"max_height"}))
    for bad in ({"max_node": 3}, {"max_nodes": -1}, {"max_nodes": True}, {"disabled": "max_nodes"},
                {"disabled": ["nope"]}):
        with pytest.raises(ConfigError):
            FilterConfig.from_dict(bad)


# ---------------------------------------------------------------- sizes, equations

def test_node_count_and_height():
    assert node_count(parse("h_prev")) == 1 and height(parse("h_prev")) == 0
    assert node_count(parse(RNN)) == 6 and height(parse(RNN)) == 3
    assert node_count(parse(LSTM)) == 31 and height(parse(LSTM)) == 8
    node = parse(GRU)
    assert [n.op for n in preorder(node)][:3] == ["Gate3", "Tanh", "Add"]


def test_equations_of_lstm():
    lines = equations(parse(LSTM))
    assert lines[-1].startswith("h_t = ")
    assert sum(line.startswith("c_t = ") for line in lines) == 1
    assert sum("W" in line for line in lines) == 8  # one line per MM, numbered W1..W8
    assert "W8·" in "".join(lines) and "W9" not in "".join(lines)
    assert "c_{t-1}" in "".join(lines)


@given(cells())
def test_equations_one_line_each_and_end_with_h_t(node):
    lines = equations(node)
    assert lines and lines[-1].startswith("h_t = ")
    assert all("\n" not in line for line in lines)
    mms = sum(n.op == "MM" for n in preorder(canonical(node)))  # the equations are those of the canonical cell
    assert sum(f"W{mms}·" in line for line in lines) == (1 if mms else 0)


# ---------------------------------------------------------------- exact equivalences in the canonical form

@pytest.mark.parametrize("written, same_as", [
    ("Tanh(Add(MM(x),MM(x)))", "Tanh(MM(x))"),  # one linear map written twice
    ("Tanh(Add(Add(MM(x),MM(h_prev)),MM(x)))", "Tanh(Add(MM(x),MM(h_prev)))"),
    ("Tanh(Add(MM(h_prev),Add(h_prev,MM(x))))", "Tanh(Add(Add(MM(x),h_prev),MM(h_prev)))"),  # associativity
    ("Tanh(Mult(Mult(x_prev,MM(x)),MM(h_prev)))", "Tanh(Mult(MM(x),Mult(MM(h_prev),x_prev)))"),
    ("Tanh(MM(MM(Add(MM(x),h_prev))))", "Tanh(MM(Add(MM(x),h_prev)))"),  # a linear map of a linear map
    ("Tanh(MM(Add(MM(h_prev),MM(h_prev))))", "Tanh(MM(h_prev))"),
    ("Tanh(Sub(MM(h_prev),MM(h_prev)))", "Tanh(MM(h_prev))"),
    ("Gate3(MM(x),h_prev,ReLU(Sigmoid(MM(h_prev))))", "Gate3(MM(x),h_prev,Sigmoid(MM(h_prev)))"),  # sigmoid > 0
])
def test_equivalent_spellings_share_one_canonical_form(written, same_as):
    assert canonical_text(parse(written)) == canonical_text(parse(same_as))


@pytest.mark.parametrize("a, b", [
    ("Tanh(Add(MM(x),MM(h_prev)))", "Tanh(MM(h_prev))"),  # maps of different operands stay apart
    ("Tanh(Add(Tanh(x),Tanh(x)))", "Tanh(Tanh(x))"),  # 2 tanh(x) is not tanh(x)
    ("Tanh(Mult(MM(x),MM(x)))", "Tanh(MM(x))"),  # a product of two maps is quadratic
    ("Gate3(MM(x),h_prev,Sigmoid(MM(h_prev)))", "Gate3(h_prev,MM(x),Sigmoid(MM(h_prev)))"),  # Gate3 is ordered
])
def test_different_functions_keep_different_forms(a, b):
    assert canonical_text(parse(a)) != canonical_text(parse(b))


@given(cells())
def test_canonical_form_is_idempotent_and_well_formed(cell):
    once = canonical(cell)
    assert canonical(once) == once
    check(once)  # never loses a source or the Memory: a well-formed cell stays well formed
