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
    fields = ("op", "step", "slot", "level", "src", "dst", "eslot")
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
    assert list(g.level) == [6, 5, 1, 0, 4, 3, 2, 1, 0, 1, 0]  # height above the deepest leaf below


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
    assert t.root == 0 and (t.level[t.src] < t.level[t.dst]).all()
    highest_child = np.full(t.num_nodes, -1)
    np.maximum.at(highest_child, t.dst, t.level[t.src])
    assert (t.level == highest_child + 1).all()  # height: one above the highest child, leaves 0
    d = D(cell)
    assert d.num_nodes <= t.num_nodes
    assert (d.level[d.src] > d.level[d.dst]).all()  # acyclic, edges go towards the root
    assert d.level[d.root] == 0


def test_cache_keys_on_canonical_text():
    cache = GraphCache("tree")
    a = cache.get("Tanh(Add(MM(x), MM(h_prev)))")
    b = cache.get("Tanh(Add(MM(h_prev),MM(x)))")
    assert a is b
    with pytest.raises(CellSyntaxError):
        cache.get("Tanh(Add(MM(x),MM(h_prev))")


def _subtree_keys(g) -> list:
    """Per node of a full tree: a hashable key of its whole subtree (operator, step, slot, children's keys)."""
    kids: dict[int, list[int]] = {}
    for c, p in zip(g.src.tolist(), g.dst.tolist(), strict=True):
        kids.setdefault(p, []).append(c)
    keys: list = [None] * g.num_nodes
    for i in sorted(range(g.num_nodes), key=lambda i: g.level[i]):
        keys[i] = (int(g.op[i]), int(g.step[i]), int(g.slot[i]), tuple(keys[c] for c in kids.get(i, [])))
    return keys


def test_tree_batch_merges_equal_subtrees_and_keeps_the_trees():
    gs = [T(parse(t)) for t in (RNN, GRU, LSTM)]
    b = batch_graphs([tree_graph(parse(t)) for t in (RNN, GRU, LSTM)], "tree")
    all_keys = [_subtree_keys(g) for g in gs]
    distinct = {k for keys in all_keys for k in keys}
    assert sum(b.level_sizes) == b.g.num_nodes() == len(distinct) < sum(g.num_nodes for g in gs)
    level = b.g.ndata["level"].numpy()
    assert (np.diff(level) >= 0).all()  # lowest level first, one contiguous block per level
    assert [VOCAB[o] for o in b.g.ndata["op"][b.roots].tolist()] == ["Tanh", "Gate3", "Mult"]
    # rebuild every node's subtree key from the batch: the merged graph holds exactly the distinct subtrees
    op, step, slot = (b.g.ndata[k].numpy() for k in ("op", "step", "slot"))
    bkeys: list = [None] * b.g.num_nodes()
    start = 0
    for size, idx in zip(b.level_sizes, b.levels, strict=True):
        for r in range(size):
            v = start + r
            bkeys[v] = (int(op[v]), int(step[v]), int(slot[v]), tuple(bkeys[c] for c in idx[r].tolist()
                                                                      if c < b.g.num_nodes()))
        start += size
    assert set(bkeys) == distinct and len(set(bkeys)) == len(bkeys)
    # pooling triples: each node counted as often as it occurs in each cell
    for cell, keys in enumerate(all_keys):
        mask = b.pool_cell == cell
        got = {bkeys[v]: int(w) for v, w in zip(b.pool_node[mask].tolist(), b.pool_weight[mask].tolist(),
                                                  strict=True)}
        want: dict = {}
        for k in keys:
            want[k] = want.get(k, 0) + 1
        assert got == want
        assert bkeys[int(b.roots[cell])] == keys[0]
    # the DGL graph's edges are the children lists
    n_edges = sum(int((lv < b.g.num_nodes()).sum()) for lv in b.levels)
    assert n_edges == b.g.num_edges()


def test_single_cell_graph_is_a_dgl_graph():
    g = cell_graph(LSTM, "dag")
    assert g.num_nodes() == D(parse(LSTM)).num_nodes
    assert set(g.ndata) == {"op", "step", "slot", "level"} and "slot" in g.edata
    assert len(list(preorder(parse(LSTM)))) < cell_graph(LSTM, "tree").num_nodes()


def _same_batch(a, b) -> bool:
    """Two GraphBatches hold the same arrays."""
    tensors = [(a.roots, b.roots), (a.pool_cell, b.pool_cell), (a.pool_node, b.pool_node),
               (a.pool_weight, b.pool_weight), *zip(a.levels, b.levels, strict=True)]
    tensors += [(a.g.ndata[k], b.g.ndata[k]) for k in ("op", "step", "slot", "level")]
    tensors += [(x, y) for x, y in zip(a.g.edges(), b.g.edges(), strict=True)]
    return a.level_sizes == b.level_sizes and all(x.shape == y.shape and bool((x == y).all()) for x, y in tensors)


@settings(max_examples=40)
@given(styled_texts())
def test_fast_path_reads_any_spelling_like_the_parser(pair):
    node, text = pair
    tp = template(text)
    assert tp is not None and tp.key == canonical_text(node)
    fast, ref = _from_template(tp, "dag"), dag_graph(node)
    for f in ("op", "step", "slot", "level", "weight"):
        assert getattr(fast, f) == getattr(ref, f)
    assert fast.root == ref.root
    edges = sorted(zip(fast.src, fast.dst, fast.eslot, strict=True))
    assert edges == sorted(zip(ref.src, ref.dst, ref.eslot, strict=True))
    # tree form: the fast graph holds the t-1 copy once, weighted; batched, it is the full tree merged
    fast, ref = _from_template(tp, "tree"), tree_graph(node)
    assert sum(fast.weight) == ref.num_nodes and fast.num_nodes <= ref.num_nodes
    assert _same_batch(batch_graphs([fast], "tree"), batch_graphs([ref], "tree"))
    assert _same_batch(batch_graphs([fast, ref], "tree"), batch_graphs([ref, ref], "tree"))


@pytest.mark.parametrize("text", [RNN, GRU, LSTM, "Sub(x_prev,h_prev)", "Memory(Add(c_prev,MM(x)))",
                                  "Memory(Add(c_prev,MM(h_prev)))", "Tanh(Add(Memory(Add(c_prev,MM(x))),MM(x)))",
                                  "Gate3(Memory(Mult(c_prev,h_prev)),c_prev,Sigmoid(h_prev))"])
def test_shared_copy_is_the_full_tree_merged(text):
    node = parse(text)
    fast, ref = _from_template(template(text), "tree"), tree_graph(node)
    assert sum(fast.weight) == ref.num_nodes
    assert _same_batch(batch_graphs([fast], "tree"), batch_graphs([ref], "tree"))


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
