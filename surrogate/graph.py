"""Cell -> graph of the cell unrolled one step, in tree form (TreeLSTM) and shared-node DAG form (GNN).

Unrolling: the cell at step t is the root; each `h_prev` at t is replaced by a copy of the whole cell at
t-1, each `c_prev` at t by the t-1 copy of the `Memory` subtree; the sources of the t-1 copy (h_{t-2}, ...)
stay leaves. `x_prev` at t is the same value as `x` at t-1 and is labelled so.

Node features: operator (index into VOCAB: the sources, then every operator), step (0 = t, 1 = t-1) and
argument slot (1, 2, 3 for the arguments of the non-commutative operators Gate3, Sub, Div; 0 otherwise).
Edges point from child to parent (values flow to the root). In the DAG form a node may have several
parents, so the slot is also an edge feature there (`edata["slot"]`), and sources are one node per
(source, step). Per-cell arrays are cached by canonical text; batches are assembled with numpy and turned
into one DGL graph per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import dgl
import numpy as np
import torch
from evonas.surrogate.template import Template, dag_arrays, dag_depth, template, template_of, tree_arrays

from evonas.cells import OPS, SOURCES, Node, parse
from evonas.cells.tree import find, uses

VOCAB: tuple[str, ...] = tuple(SOURCES) + tuple(OPS)  # operator vocabulary (fixed order, saved with models)
OP_INDEX: dict[str, int] = {name: i for i, name in enumerate(VOCAB)}
NONCOMMUTATIVE: frozenset[str] = frozenset(n for n, s in OPS.items() if s.arity > 1 and not s.commutative)
N_STEPS = 2
N_SLOTS = 4
FORMS = ("tree", "dag")


@dataclass(frozen=True)
class CellGraph:
    """One unrolled cell as flat lists (numpy only per batch: cheaper for small cells): node features,
    child->parent edges, and the root's index."""

    op: list[int]
    step: list[int]
    slot: list[int]  # per node (tree form: its slot in its parent; DAG: 0 for shared nodes)
    depth: list[int]  # distance from the root (tree form); DAG: longest distance from the root
    src: list[int]
    dst: list[int]
    eslot: list[int]  # slot of each edge's child in its parent
    root: int

    @property
    def num_nodes(self) -> int:
        return len(self.op)


def canonical_key(cell: Node) -> str:
    """Canonical text in one bottom-up pass (same result as `evonas.cells.canonical_text`, linear time)."""
    if not cell.children:
        return cell.op
    kids = [canonical_key(c) for c in cell.children]
    if OPS[cell.op].commutative:
        kids.sort()
    return f"{cell.op}({','.join(kids)})"


def _arrays(ops, steps, slots, depth, src, dst, eslot, root) -> CellGraph:
    return CellGraph(list(ops), list(steps), list(slots), list(depth), list(src), list(dst), list(eslot), root)


def _source_label(op: str, step: int) -> tuple[int, int]:
    """x_prev at t is x at t-1; everything else keeps its name and step."""
    if op == "x_prev" and step == 0:
        return OP_INDEX["x"], 1
    return OP_INDEX[op], step


def tree_graph(cell: Node) -> CellGraph:
    """Tree form: the unrolled cell with subtrees duplicated (every node has one parent); root is node 0."""
    memory = find(cell, "Memory")
    ops: list[int] = []
    steps: list[int] = []
    slots: list[int] = []
    depth: list[int] = []
    src: list[int] = []
    dst: list[int] = []

    def emit(node: Node, step: int, slot: int, d: int, parent: int) -> None:
        if step == 0 and node.op == "h_prev":
            node, step = cell, 1
        elif step == 0 and node.op == "c_prev" and memory is not None:
            node, step = memory, 1
        i = len(ops)
        if node.children:
            ops.append(OP_INDEX[node.op])
            steps.append(step)
        else:
            o, s = _source_label(node.op, step)
            ops.append(o)
            steps.append(s)
        slots.append(slot)
        depth.append(d)
        if parent >= 0:
            src.append(i)
            dst.append(parent)
        numbered = node.op in NONCOMMUTATIVE
        for k, child in enumerate(node.children):
            emit(child, step, k + 1 if numbered else 0, d + 1, i)

    emit(cell, 0, 0, 0, -1)
    eslot = [slots[i] for i in src]
    return _arrays(ops, steps, slots, depth, src, dst, eslot, 0)


def dag_graph(cell: Node) -> CellGraph:
    """Shared-node DAG form: one t-1 copy used by every h_prev, its Memory node by every c_prev, one node per
    (source, step)."""
    ops: list[int] = []
    steps: list[int] = []
    parents: list[list[tuple[int, int]]] = []  # per node: (parent, slot)
    sources: dict[tuple[int, int], int] = {}
    memory_at: dict[int, int] = {}
    prev_root = -1

    def new(op: int, step: int) -> int:
        ops.append(op)
        steps.append(step)
        parents.append([])
        return len(ops) - 1

    def emit(node: Node, step: int) -> int:
        if step == 0 and node.op == "h_prev" and prev_root >= 0:
            return prev_root
        if step == 0 and node.op == "c_prev" and 1 in memory_at:
            return memory_at[1]
        if not node.children:
            key = _source_label(node.op, step)
            if key not in sources:
                sources[key] = new(*key)
            return sources[key]
        i = new(OP_INDEX[node.op], step)
        if node.op == "Memory":
            memory_at[step] = i
        numbered = node.op in NONCOMMUTATIVE
        for k, child in enumerate(node.children):
            j = emit(child, step)
            parents[j].append((i, k + 1 if numbered else 0))
        return i

    if uses(cell, "h_prev"):
        prev_root = emit(cell, 1)
    elif uses(cell, "c_prev") and (memory := find(cell, "Memory")) is not None:
        emit(memory, 1)
    root = emit(cell, 0)
    src, dst, eslot = [], [], []
    slots = []
    for j, ps in enumerate(parents):
        for p, s in ps:
            src.append(j)
            dst.append(p)
            eslot.append(s)
        slots.append(ps[0][1] if len(ps) == 1 else 0)
    depth = _longest_depth(len(ops), src, dst, root)
    return _arrays(ops, steps, slots, depth, src, dst, eslot, root)


def _longest_depth(n: int, src: list[int], dst: list[int], root: int) -> list[int]:
    """Longest path length from the root to each node of a DAG (children after parents in a topological sweep)."""
    children: list[list[int]] = [[] for _ in range(n)]
    indeg = [0] * n
    for s, d in zip(src, dst, strict=True):
        children[d].append(s)
        indeg[s] += 1
    depth = [0] * n
    frontier = [i for i in range(n) if indeg[i] == 0]
    while frontier:
        nxt = []
        for p in frontier:
            for c in children[p]:
                depth[c] = max(depth[c], depth[p] + 1)
                indeg[c] -= 1
                if indeg[c] == 0:
                    nxt.append(c)
        frontier = nxt
    return depth


_BUILDERS = {"tree": tree_graph, "dag": dag_graph}


def _from_template(tp: Template, form: str) -> CellGraph:
    """Fast builder (same graph as `tree_graph` / `dag_graph`, which are the readable reference)."""
    if form == "tree":
        ops, steps, slots, depth, parent = tree_arrays(tp, OP_INDEX)
        return CellGraph(ops, steps, slots, depth, list(range(1, len(ops))), parent[1:], slots[1:], 0)
    ops, steps, src, dst, eslot, root, topo = dag_arrays(tp, OP_INDEX)
    n = len(ops)
    uses = [0] * n
    for v in src:
        uses[v] += 1
    node_slot = [0] * n
    for v, e in zip(src, eslot, strict=True):
        if uses[v] == 1:
            node_slot[v] = e
    return CellGraph(ops, steps, node_slot, dag_depth(n, src, dst, topo), src, dst, eslot, root)


class GraphCache:
    """Cell text -> CellGraph, memoised by raw text and by canonical text (bounded; cleared when full)."""

    def __init__(self, form: str, max_size: int = 200_000):
        if form not in _BUILDERS:
            raise ValueError(f"unknown graph form {form!r}; expected one of {FORMS}")
        self.form = form
        self.max_size = max_size
        self._by_text: dict[str, CellGraph] = {}
        self._by_canon: dict[str, CellGraph] = {}

    def get(self, cell: str | Node) -> CellGraph:
        """The graph of one cell (text is parsed; a malformed text raises CellSyntaxError)."""
        if isinstance(cell, str):
            hit = self._by_text.get(cell)
            if hit is not None:
                return hit
            tp = template(cell)
            if tp is None:
                tp = template_of(parse(cell))  # parse raises the CellSyntaxError for a malformed text
        else:
            tp = template_of(cell)
        graph = self._by_canon.get(tp.key)
        if graph is None:
            if len(self._by_canon) >= self.max_size:
                self._by_canon.clear()
                self._by_text.clear()
            graph = _from_template(tp, self.form)
            self._by_canon[tp.key] = graph
        if isinstance(cell, str):
            self._by_text[cell] = graph
        return graph

    def many(self, cells: Sequence[str | Node]) -> list[CellGraph]:
        """Graphs of many cells, in order."""
        return [self.get(c) for c in cells]


@dataclass
class GraphBatch:
    """Many cell graphs as one batched DGL graph, plus the roots and (tree form) the level schedule.

    `levels[d]` = [nodes at depth d, max arity at depth d] index of each node's children within level d+1,
    in argument order, padded with `level_sizes[d+1]` (one past the end); `level_sizes[d]` = nodes at depth d.
    Node ids in `g` are sorted by depth, deepest first, so level d occupies one contiguous block (the roots,
    level 0, come last, in batch order).
    """

    g: dgl.DGLGraph
    roots: torch.Tensor
    graph_id: torch.Tensor  # per node: which cell of the batch it belongs to
    level_sizes: list[int]
    levels: list[torch.Tensor]

    @property
    def batch_size(self) -> int:
        return len(self.roots)


def batch_graphs(graphs: Sequence[CellGraph], form: str) -> GraphBatch:
    """Concatenate per-cell arrays into one DGL graph (tree form: nodes reordered deepest level first)."""
    counts = np.fromiter((len(gr.op) for gr in graphs), np.int64, len(graphs))
    ecounts = np.fromiter((len(gr.src) for gr in graphs), np.int64, len(graphs))
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    n_total, e_total = int(counts.sum()), int(ecounts.sum())

    def cat(name: str, total: int) -> np.ndarray:
        return np.fromiter(chain.from_iterable(getattr(gr, name) for gr in graphs), np.int64, total)

    op, step, slot, depth = (cat(name, n_total) for name in ("op", "step", "slot", "depth"))
    eoff = np.repeat(offsets, ecounts)
    src = cat("src", e_total) + eoff
    dst = cat("dst", e_total) + eoff
    eslot = cat("eslot", e_total)
    roots = offsets + np.fromiter((gr.root for gr in graphs), np.int64, len(graphs))
    n = int(counts.sum())
    graph_id = np.repeat(np.arange(len(graphs), dtype=np.int64), counts)
    level_sizes: list[int] = []
    levels: list[torch.Tensor] = []
    if form == "tree":
        # Stable sort by depth, deepest first: level d is a contiguous block; the roots (level 0) come last.
        order = np.argsort(-depth, kind="stable")
        pos = np.empty(n, np.int64)
        pos[order] = np.arange(n)
        maxd = int(depth.max()) if n else 0
        sizes = np.bincount(depth, minlength=maxd + 2)  # level maxd + 1 is empty (sentinel)
        starts = np.zeros(maxd + 2, np.int64)
        starts[: maxd + 1] = (np.cumsum(sizes[::-1])[::-1] - sizes)[: maxd + 1]
        op, step, slot, depth, graph_id = op[order], step[order], slot[order], depth[order], graph_id[order]
        src, dst, roots = pos[src], pos[dst], pos[roots]
        eorder = np.argsort(dst, kind="stable")  # children of one parent stay in argument order
        src, dst, eslot = src[eorder], dst[eorder], eslot[eorder]
        rank = np.arange(len(dst)) - np.searchsorted(dst, dst, side="left")  # argument position in the parent
        level_sizes = [int(s) for s in sizes[: maxd + 1]]
        for d in range(maxd + 1):
            lo, hi = np.searchsorted(dst, [starts[d], starts[d] + sizes[d]])
            k = int(rank[lo:hi].max()) + 1 if hi > lo else 0
            idx = np.full((sizes[d], k), sizes[d + 1], np.int64)  # padding points at an appended zero row
            idx[dst[lo:hi] - starts[d], rank[lo:hi]] = src[lo:hi] - starts[d + 1]
            levels.append(torch.from_numpy(idx))
    g = dgl.graph((torch.from_numpy(src), torch.from_numpy(dst)), num_nodes=n)
    g.ndata["op"] = torch.from_numpy(op)
    g.ndata["step"] = torch.from_numpy(step)
    g.ndata["slot"] = torch.from_numpy(slot)
    g.ndata["depth"] = torch.from_numpy(depth)
    g.edata["slot"] = torch.from_numpy(eslot)
    if form == "dag":
        g.set_batch_num_nodes(torch.from_numpy(counts))
        g.set_batch_num_edges(torch.from_numpy(ecounts))
    return GraphBatch(g, torch.from_numpy(roots), torch.from_numpy(graph_id), level_sizes, levels)


def cell_graph(cell: str | Node, form: str = "tree") -> dgl.DGLGraph:
    """The DGL graph of one cell unrolled one step (convenience for inspection and tests)."""
    node = parse(cell) if isinstance(cell, str) else cell
    gr = _BUILDERS[form](node)
    g = dgl.graph((torch.tensor(gr.src, dtype=torch.int64), torch.tensor(gr.dst, dtype=torch.int64)),
                  num_nodes=gr.num_nodes)
    for name in ("op", "step", "slot", "depth"):
        g.ndata[name] = torch.tensor(getattr(gr, name), dtype=torch.int64)
    g.edata["slot"] = torch.tensor(gr.eslot, dtype=torch.int64)
    return g
