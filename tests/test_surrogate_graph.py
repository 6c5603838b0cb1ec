"""Cell -> unrolled graph: the unroll rules, node features, both forms, batching and the cache."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from evonas.surrogate.graph import (
    OP_INDEX,
    VOCAB,
    GraphCache,
    _from_template,
    batch_graphs,
    canonical_key,
    cell_graph,
    dag_graph,
    tree_graph,
)
from evonas.surrogate.template import template
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import cells, mutated, styled_texts, token_strings

from evonas.cells import canonical_text, node_count, op_counts, parse, preorder
from evonas.cells.tree import find
from evonas.errors import CellSyntaxError

LSTM = ("Mult(Sigmoid(Add(MM(x),MM(h_prev))),Tanh(Memory(Add(Mult(Sigmoid(Add(MM(x),MM(h_prev))),c_prev),"
        "Mult(Sigmoid(Add(MM(x),MM(h_prev))),Tanh(Add(MM(x),MM(h_prev))))))))")
GRU = ("Gate3(Tanh(Add(MM(x),MM(Mult(Sigmoid(Add(MM(x),MM(h_prev))),h_prev)))),h_prev,"
       "Sigmoid(Add(MM(x),MM(h_prev))))")
RNN = "Tanh(Add(MM(x),MM(h_prev)))"


def _np(gr) -> SimpleNamespace:
    """The graph's lists as numpy arrays, for fancy indexing in assertions."""
    fields = ("op", "step", "slot", "depth", "src", "dst", "eslot")
    arrays = {f: np.asarray(getattr(gr, f), dtype=np.int64) for f in fields}
    return SimpleNamespace(**arrays, root=gr.root, num_nodes=gr.num_nodes)


def T(cell) -> SimpleNamespace:
    return _np(tree_graph(cell))


def D(cell) -> SimpleNamespace:
    return _np(dag_graph(cell))


def _expected_tree_size(cell) -> int:
    """Every h_prev at t becomes a whole t-1 cell, every c_prev at t the t-1 Memory subtree."""
    counts = op_counts(cell)
    mem = find(cell, "Memory")
    size = node_count(cell) + counts["h_prev"] * (node_count(cell) - 1)
    if mem is not None:
        size += counts["c_prev"] * (node_count(mem) - 1)
    return size


@pytest.mark.parametrize("text", [RNN, GRU, LSTM, "Sub(x_prev,h_prev)", "Memory(Add(c_prev,MM(x)))"])
def test_tree_unroll_sizes(text):
    cell = parse(text)
    g = T(cell)
    assert g.num_nodes == _expected_tree_size(cell)
    assert len(g.src) == g.num_nodes - 1  # a tree


def test_plain_rnn_unrolled_by_hand():
    g = T(parse(RNN))
    names = [VOCAB[o] for o in g.op]
    # t: Tanh Add MM x MM [t-1: Tanh Add MM x MM h_prev]
    assert names == ["Tanh", "Add", "MM", "x", "MM", "Tanh", "Add", "MM", "x", "MM", "h_prev"]
    assert list(g.step) == [0] * 5 + [1] * 6
    assert list(g.depth) == [0, 1, 2, 3, 2, 3, 4, 5, 6, 5, 6]


def test_t_minus_2_sources_stay_leaves_and_no_state_source_at_t():
    for text in (GRU, LSTM):
        g = T(parse(text))
        at_t = {VOCAB[o] for o, s in zip(g.op, g.step, strict=True) if s == 0}
        assert not at_t & {"h_prev", "c_prev", "x_prev"}
        parents = set(g.dst.tolist())
        for i, o in enumerate(g.op):
            if VOCAB[o] in ("h_prev", "c_prev"):
                assert g.step[i] == 1 and i not in parents  # a leaf: the state of t-2


def test_c_prev_is_replaced_by_the_t_minus_1_memory_subtree():
    cell = parse(LSTM)
    g = T(cell)
    mem = [i for i, o in enumerate(g.op) if VOCAB[o] == "Memory"]
    counts = op_counts(cell)
    # the cell's own Memory, one in each t-1 copy of the cell, one replacing c_prev
    assert sorted(g.step[mem].tolist()) == [0] + [1] * (counts["h_prev"] + counts["c_prev"])
    parent = dict(zip(g.src.tolist(), g.dst.tolist(), strict=True))
    direct = [i for i in mem if g.step[i] == 1 and g.step[parent[i]] == 0]
    assert len(direct) == 1 and VOCAB[g.op[parent[direct[0]]]] == "Mult"  # sits where c_prev was: Mult(f, c_prev)


def test_x_prev_at_t_is_x_at_t_minus_1():
    g = T(parse("Sub(x_prev,h_prev)"))
    assert (VOCAB[g.op[1]], g.step[1]) == ("x", 1)
    g1 = T(parse("Add(MM(x_prev),h_prev)"))
    leaves = [(VOCAB[o], s) for o, s in zip(g1.op, g1.step, strict=True) if VOCAB[o].startswith("x")]
    assert ("x", 1) in leaves and ("x_prev", 1) in leaves


def test_argument_slots_only_for_noncommutative_ops():
    g = T(parse("Gate3(Sub(h_prev,MM(x)),Add(h_prev,MM(x)),Sigmoid(Div(h_prev,MM(x))))"))
    kids = {}
    for s, d in zip(g.src, g.dst, strict=True):
        kids.setdefault(int(d), []).append(int(g.slot[s]))
    by_op = {VOCAB[g.op[p]]: slots for p, slots in kids.items() if g.step[p] == 0}
    assert by_op["Gate3"] == [1, 2, 3]
    assert by_op["Sub"] == [1, 2] and by_op["Div"] == [1, 2]
    assert by_op["Add"] == [0, 0] and by_op["Sigmoid"] == [0]


def test_dag_shares_the_t_minus_1_cell_and_sources():
    cell = parse(GRU)
    g = D(cell)
    prev_root = int(np.where((g.op == OP_INDEX["Gate3"]) & (g.step == 1))[0][0])
    assert (g.src == prev_root).sum() == op_counts(cell)["h_prev"]
    keys = [(int(o), int(s)) for o, s in zip(g.op, g.step, strict=True) if VOCAB[o] in ("x", "x_prev", "h_prev")]
    assert len(keys) == len(set(keys))  # one node per (source, step)
    # the t-1 Gate3 is used in slot 1 (inner h_prev sits under Mult: slot 0) and slot 2
    assert sorted(g.eslot[g.src == prev_root].tolist()) == [0, 0, 0, 2]
    lstm = D(parse(LSTM))
    mem1 = int(np.where((lstm.op == OP_INDEX["Memory"]) & (lstm.step == 1))[0][0])
    assert (lstm.src == mem1).sum() == 1 + 1  # read by c_prev at t and by Tanh at t-1


@settings(max_examples=40)
@given(cells())
def test_any_well_formed_cell_unrolls(cell):
    t = T(cell)
    assert t.num_nodes == _expected_tree_size(cell)
    assert t.root == 0 and t.depth[0] == 0 and (t.depth[t.src] == t.depth[t.dst] + 1).all()
    d = D(cell)
    assert d.num_nodes <= t.num_nodes
    assert (d.depth[d.src] > d.depth[d.dst]).all()  # acyclic, edges go towards the root
    assert d.depth[d.root] == 0


def test_cache_keys_on_canonical_text():
    cache = GraphCache("tree")
    a = cache.get("Tanh(Add(MM(x), MM(h_prev)))")
    b = cache.get("Tanh(Add(MM(h_prev),MM(x)))")
    assert a is b
    assert canonical_key(parse(GRU)) == canonical_text(parse(GRU))
    with pytest.raises(CellSyntaxError):
        cache.get("Tanh(Add(MM(x),MM(h_prev))")


def test_tree_batch_levels_are_consistent():
    gs = [T(parse(t)) for t in (RNN, GRU, LSTM)]
    b = batch_graphs(gs, "tree")
    assert sum(b.level_sizes) == b.g.num_nodes() == sum(g.num_nodes for g in gs)
    depth = b.g.ndata["depth"].numpy()
    assert (np.diff(depth) <= 0).all()  # deepest first
    assert [VOCAB[o] for o in b.g.ndata["op"][b.roots].tolist()] == ["Tanh", "Gate3", "Mult"]
    n_edges = sum(int((lv < size).sum()) for lv, size in zip(b.levels, b.level_sizes[1:] + [0], strict=False))
    assert n_edges == b.g.num_edges()


def test_single_cell_graph_is_a_dgl_graph():
    g = cell_graph(LSTM, "dag")
    assert g.num_nodes() == D(parse(LSTM)).num_nodes
    assert set(g.ndata) == {"op", "step", "slot", "depth"} and "slot" in g.edata
    assert len(list(preorder(parse(LSTM)))) < cell_graph(LSTM, "tree").num_nodes()


@settings(max_examples=40)
@given(styled_texts())
def test_fast_path_reads_any_spelling_like_the_parser(pair):
    node, text = pair
    tp = template(text)
    assert tp is not None and tp.key == canonical_text(node)
    for form, reference in (("tree", tree_graph), ("dag", dag_graph)):
        fast, ref = _from_template(tp, form), reference(node)
        for f in ("op", "step", "slot", "depth"):
            assert getattr(fast, f) == getattr(ref, f)
        assert fast.root == ref.root
        edges = sorted(zip(fast.src, fast.dst, fast.eslot, strict=True))
        assert edges == sorted(zip(ref.src, ref.dst, ref.eslot, strict=True))


@settings(max_examples=150)
@given(st.one_of(token_strings(), mutated(GRU), mutated(LSTM)))
def test_fast_path_never_accepts_what_the_parser_refuses(text):
    try:
        node = parse(text)
    except CellSyntaxError:
        assert template(text) is None
        with pytest.raises(CellSyntaxError):
            GraphCache("tree").get(text)
        return
    tp = template(text)
    assert tp is None or tp.key == canonical_text(node)
    GraphCache("dag").get(text)
