"""GIN ranker over the shared-node DAG form: GINE layers (Hu et al. 2020) on the graph with edges in both
directions, the edge feature telling direction and argument slot; readout = mean, max and root state."""

from __future__ import annotations

from typing import Any

import dgl
import torch
from dgl.nn import GINEConv
from evonas.surrogate.graph import N_SLOTS, N_STEPS, VOCAB, GraphBatch
from evonas.surrogate.model import Ranker, register
from torch import nn

MAX_DEPTH = 32  # depths beyond this share one embedding


@register
class GNNRanker(Ranker):
    """`layers` residual GINE layers with LayerNorm; messages flow child->parent and parent->child."""

    kind = "gnn"
    form = "dag"

    def __init__(self, hidden: int = 64, layers: int = 4, head: int = 64, dropout: float = 0.0,
                 depth_feature: bool = False):
        super().__init__()
        self.hidden, self.layers, self.head_size, self.dropout = hidden, layers, head, dropout
        self.depth_feature = depth_feature
        self.depth = nn.Embedding(MAX_DEPTH, hidden) if depth_feature else None
        self.op = nn.Embedding(len(VOCAB), hidden)
        self.step = nn.Embedding(N_STEPS, hidden)
        self.slot = nn.Embedding(N_SLOTS, hidden)
        self.edge = nn.ModuleList(nn.Embedding(2 * N_SLOTS, hidden) for _ in range(layers))
        self.convs = nn.ModuleList(
            GINEConv(nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden)), learn_eps=True)
            for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        # LayerNorm + GELU: no dead units, so a fit cannot get stuck on a constant prediction
        self.head = nn.Sequential(nn.LayerNorm(3 * hidden), nn.Linear(3 * hidden, head), nn.GELU(),
                                  nn.Dropout(dropout), nn.Linear(head, 1))

    def sizes(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "layers": self.layers, "head": self.head_size, "dropout": self.dropout,
                "depth_feature": self.depth_feature}

    def forward(self, batch: GraphBatch) -> torch.Tensor:
        g = batch.g
        nd = g.ndata
        h = self.op(nd["op"]) + self.step(nd["step"]) + self.slot(nd["slot"])
        if self.depth is not None:  # longest distance from the root: where in the unrolled cell a node sits
            h = h + self.depth(nd["level"].clamp(max=MAX_DEPTH - 1))
        src, dst = g.edges()
        both = dgl.graph((torch.cat([src, dst]), torch.cat([dst, src])), num_nodes=g.num_nodes())
        eslot = g.edata["slot"]
        etype = torch.cat([eslot, eslot + N_SLOTS])  # child->parent: slot; parent->child: slot + N_SLOTS
        for emb, conv, norm in zip(self.edge, self.convs, self.norms, strict=True):
            h = norm(h + torch.relu(conv(both, h, emb(etype))))
        b = batch.batch_size
        cell = batch.pool_cell  # DAG form: one pooling triple per node, in node order, weight 1
        assert len(cell) == len(h), f"expected a DAG-form batch (one pooling entry per node), got {len(cell)}"
        counts = torch.bincount(cell, minlength=b).clamp(min=1).unsqueeze(1).to(h.dtype)
        mean = h.new_zeros(b, self.hidden).index_add(0, cell, h) / counts
        idx = cell.unsqueeze(1).expand_as(h)
        mx = h.new_full((b, self.hidden), -1e4).scatter_reduce(0, idx, h, "amax", include_self=False)
        return self.head(torch.cat([mean, mx, h[batch.roots]], dim=1)).squeeze(1)
