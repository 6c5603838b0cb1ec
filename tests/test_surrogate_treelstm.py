"""The batched TreeLSTM equals a node-by-node child-sum TreeLSTM on the full unrolled trees (Tai et al. 2015):
the level schedule, the merging of equal subtrees and the weighted pooling change the speed, not the values."""

from __future__ import annotations

import pytest
import torch
from evonas.surrogate.graph import GraphCache, batch_graphs, tree_graph
from evonas.surrogate.treelstm import TreeLSTMRanker, feature_id
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import cells

from evonas.cells import Node, canonical, parse
from evonas.cells.library import library

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _reference(model: TreeLSTMRanker, cell: Node) -> torch.Tensor:
    """Score of one cell, computed recursively over every node of its full unrolled tree (of the canonical cell:
    the model scores equivalent spellings as one architecture)."""
    g = tree_graph(canonical(cell))
    table, hid = model.x.table(), model.hidden
    kids: dict[int, list[int]] = {}
    for c, p in zip(g.src, g.dst, strict=True):
        kids.setdefault(p, []).append(c)
    hs: list[torch.Tensor] = []

    def state(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = table[int(feature_id(torch.tensor(g.op[i]), torch.tensor(g.step[i]), torch.tensor(g.slot[i])))]
        children = [state(c) for c in kids.get(i, [])]
        h_sum = sum((h for h, _ in children), torch.zeros(hid))
        iou = x[: 3 * hid] + model.u_iou(h_sum)
        i_gate, o_gate, u = iou[:hid].sigmoid(), iou[hid: 2 * hid].sigmoid(), iou[2 * hid:].tanh()
        c = i_gate * u + sum((torch.sigmoid(x[3 * hid:] + model.u_f(hk)) * ck for hk, ck in children),
                             torch.zeros(hid))
        h = o_gate * c.tanh()
        hs.append(h)
        return h, c

    root, _ = state(0)
    mean = torch.stack(hs).mean(0)
    return model.head(torch.cat([root, mean])[None]).squeeze()


def _batched(model: TreeLSTMRanker, cells_: list[Node]) -> torch.Tensor:
    return model(batch_graphs(GraphCache("tree").many(cells_), "tree"))


LIBRARY = ["lstm", "gru", "lstm_peephole", "nas", "ugrnn", "qrnn", "indrnn"]


def test_library_cells_score_as_node_by_node_and_gradients_agree():
    torch.manual_seed(0)
    model = TreeLSTMRanker(hidden=8, head=8)
    batch = [library()[name].cell for name in LIBRARY]
    fast = _batched(model, batch)
    ref = torch.stack([_reference(model, c) for c in batch])
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    weights = torch.arange(1.0, len(batch) + 1)
    g_fast = torch.autograd.grad((fast * weights).sum(), list(model.parameters()))
    g_ref = torch.autograd.grad((ref * weights).sum(), list(model.parameters()))
    for name, a, b in zip([n for n, _ in model.named_parameters()], g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=f"gradient of {name} differs")


@settings(max_examples=25, deadline=None)
@given(st.lists(cells(max_depth=4), min_size=1, max_size=4))
def test_any_cells_score_as_node_by_node(batch):
    torch.manual_seed(1)
    model = TreeLSTMRanker(hidden=8, head=8).eval()
    with torch.no_grad():
        fast = _batched(model, batch)
        ref = torch.stack([_reference(model, c) for c in batch])
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_merging_shares_the_copies_of_the_t_minus_1_cell():
    lstm = parse(library()["lstm"].text)
    full = len(tree_graph(lstm).op)
    merged = batch_graphs(GraphCache("tree").many([lstm]), "tree").g.num_nodes()
    # four h_prev at t, each a copy of the t-1 cell (26 nodes), plus c_prev's Memory subtree: all held once
    assert merged < full / 3, (merged, full)
