"""Child-sum TreeLSTM (Tai et al. 2015) over the tree form, computed one height level at a time for a whole batch.

All nodes of one height (across every tree of the batch) are one tensor operation: their children are all
lower, so their states are gathered from a buffer of the levels already done with index tensors prepared by
`batch_graphs`. A node's state depends only on its subtree, so each distinct subtree of the batch is computed
once (the compressed tree form) and the result equals the node-by-node TreeLSTM on the full unrolled trees.
Non-commutative arguments are told apart by the slot feature of each child (child-sum itself is order-free).
The score reads the root state and the mean node state (weighted by occurrences in the full tree).
"""

from __future__ import annotations

from typing import Any

import torch
from evonas.surrogate.graph import N_SLOTS, N_STEPS, VOCAB, GraphBatch
from evonas.surrogate.model import Ranker, register
from torch import nn


class _FeatureTable(nn.Module):
    """Learned vectors for operator, step and slot, summed: a linear map of the one-hot node features.

    `table()` gives the vector of every (operator, step, slot) combination, so a batch needs one lookup per node.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.op = nn.Embedding(len(VOCAB), dim)
        self.step = nn.Embedding(N_STEPS, dim)
        self.slot = nn.Embedding(N_SLOTS, dim)

    def table(self) -> torch.Tensor:
        """[len(VOCAB) * N_STEPS * N_SLOTS, dim], row (op * N_STEPS + step) * N_SLOTS + slot."""
        t = self.op.weight[:, None, None] + self.step.weight[None, :, None] + self.slot.weight[None, None, :]
        return t.reshape(-1, t.shape[-1])


def feature_id(op: torch.Tensor, step: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """Row of `_FeatureTable.table()` for each node."""
    return (op * N_STEPS + step) * N_SLOTS + slot


@register
class TreeLSTMRanker(Ranker):
    """Child-sum TreeLSTM over the unrolled tree; readout = MLP(root state, mean node state)."""

    kind = "treelstm"
    form = "tree"

    def __init__(self, hidden: int = 64, head: int = 64, dropout: float = 0.0):
        super().__init__()
        self.hidden, self.head_size, self.dropout = hidden, head, dropout
        self.x = _FeatureTable(4 * hidden)  # [W_iou x + b_iou, W_f x + b_f]
        self.u_iou = nn.Linear(hidden, 3 * hidden, bias=False)
        self.u_f = nn.Linear(hidden, hidden, bias=False)
        # LayerNorm + GELU: no dead units, so a fit cannot get stuck on a constant prediction
        self.head = nn.Sequential(nn.LayerNorm(2 * hidden), nn.Linear(2 * hidden, head), nn.GELU(),
                                  nn.Dropout(dropout), nn.Linear(head, 1))

    def sizes(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "head": self.head_size, "dropout": self.dropout}

    def encode(self, batch: GraphBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Root state and mean node state of every cell of the batch."""
        nd = batch.g.ndata
        fid = feature_id(nd["op"], nd["step"], nd["slot"])
        table = self.x.table()
        hid = self.hidden
        n_all = batch.g.num_nodes()
        # [h | c | U_f h] of every node, written level by level (in place: the gathers keep only indices),
        # plus a zero row that the children padding points at
        done = table.new_zeros(n_all + 1, 3 * hid)
        start = 0
        for n, idx in zip(batch.level_sizes, batch.levels, strict=True):
            x = table.index_select(0, fid[start:start + n])  # (index_select: faster than [] indexing)
            iou = x[:, : 3 * hid]
            fc = None
            if idx.shape[1]:
                hc, cc, ufc = done.index_select(0, idx.reshape(-1)).view(n, -1, 3 * hid).split(hid, dim=2)
                f = torch.sigmoid(x[:, None, 3 * hid:] + ufc)
                fc = (f * cc).sum(1)
                iou = iou + self.u_iou(hc.sum(1))
            gates = torch.sigmoid(iou[:, : 2 * hid])
            c = gates[:, :hid] * torch.tanh(iou[:, 2 * hid:])
            if fc is not None:
                c = c + fc
            h = gates[:, hid:] * torch.tanh(c)
            done[start:start + n] = torch.cat([h, c, self.u_f(h)], dim=1)
            start += n
        h_all = done[:n_all, :hid]
        b = batch.batch_size
        w = batch.pool_weight.to(h_all.dtype)
        total = h_all.new_zeros(b).index_add(0, batch.pool_cell, w).clamp(min=1).unsqueeze(1)
        pool = h_all.new_zeros(b, hid).index_add(0, batch.pool_cell,
                                                 h_all.index_select(0, batch.pool_node) * w.unsqueeze(1))
        return h_all[batch.roots], pool / total

    def forward(self, batch: GraphBatch) -> torch.Tensor:
        roots, mean = self.encode(batch)
        return self.head(torch.cat([roots, mean], dim=1)).squeeze(1)
