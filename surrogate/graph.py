"""Cell -> graph of the cell unrolled one step, in tree form (TreeLSTM) and shared-node DAG form (GNN).

Unrolling: the cell at step t is the root; each `h_prev` at t is replaced by a copy of the whole cell at
t-1, each `c_prev` at t by the t-1 copy of the `Memory` subtree; the sources of the t-1 copy (h_{t-2}, ...)
stay leaves. `x_prev` at t is the same value as `x` at t-1 and is labelled so.

Node features: operator (index into VOCAB: the sources, then every operator), step (0 = t, 1 = t-1) and
argument slot (1, 2, 3 for the arguments of the non-commutative operators Gate3, Sub, Div; 0 otherwise).
Edges point from child to parent (values flow to the root).

Tree form: every node has one parent, subtrees are duplicated (`tree_graph`, the readable reference). The
fast builder holds the t-1 copy once per cell, with a `weight` per node = its occurrences in the full tree;
when trees are batched, equal subtrees (same operator, step, slot and children), within a cell and across the
cells of the batch, become one node. A bottom-up model (TreeLSTM) gets the same values as on the full trees,
each distinct subtree computed once, and pooling weights each node by its occurrences in each cell.

DAG form: one t-1 copy shared by every `h_prev`, one node per (source, step); a node may have several parents,
so the slot is also an edge feature there (`edata["slot"]`). Per-cell arrays are cached by canonical text;
batches are assembled with numpy and turned into one DGL graph per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import dgl
import numpy as np
import torch
from evonas.surrogate.template import Template, dag_arrays, dag_depth, template, template_of, tree_arrays

from evonas.cells import OPS, SOURCES, Node, canonical, parse
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
    level: list[int]  # tree form: height above the deepest leaf below (children are lower); DAG: longest
    #                   distance from the root (the GNN's optional depth feature)
    src: list[int]
    dst: list[int]
    eslot: list[int]  # slot of each edge's child in its parent
    root: int
    weight: list[int]  # occurrences in the full tree (a node of the shared t-1 copy counts once per use)

    @property
    def num_nodes(self) -> int:
        return len(self.op)


def _arrays(ops, steps, slots, level, src, dst, eslot, root) -> CellGraph:
    return CellGraph(list(ops), list(steps), list(slots), list(level), list(src), list(dst), list(eslot), root,
                     [1] * len(ops))


def _source_label(op: str, step: int) -> tuple[int, int]:
    """x_prev at t is x at t-1; everything else keeps its name and step."""
    if op == "x_prev" and step == 0:
        return OP_INDEX["x"], 1
    return OP_INDEX[op], step


def tree_graph(cell: Node) -> CellGraph:
    """Tree form, full: the unrolled cell with subtrees duplicated (every node has one parent); root is node 0.
    Built as written (GraphCache builds re-spelled cells from their canonical form, see `GraphCache.get`)."""
    memory = find(cell, "Memory")
    ops: list[int] = []
    steps: list[int] = []
    slots: list[int] = []
    height: list[int] = []
    src: list[int] = []
    dst: list[int] = []

    def emit(node: Node, step: int, slot: int, parent: int) -> int:
        """Append the node and its subtree (pre-order); returns its height."""
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
        height.append(0)
        if parent >= 0:
            src.append(i)
            dst.append(parent)
        numbered = node.op in NONCOMMUTATIVE
        below = [emit(child, step, k + 1 if numbered else 0, i) for k, child in enumerate(node.children)]
        height[i] = max(below) + 1 if below else 0
        return height[i]

    emit(cell, 0, 0, -1)
    eslot = [slots[i] for i in src]
    return _arrays(ops, steps, slots, height, src, dst, eslot, 0)


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
    """Fast builder. DAG form: the graph of `dag_graph`; tree form: the tree of `tree_graph` with the t-1 copy
    held once and weighted (`tree_arrays`), which batches to the same merged trees."""
    if form == "tree":
        ops, steps, slots, height, weight, src, dst = tree_arrays(tp, OP_INDEX)
        return CellGraph(ops, steps, slots, height, src, dst, [slots[v] for v in src], 0, weight)
    ops, steps, src, dst, eslot, root, topo = dag_arrays(tp, OP_INDEX)
    n = len(ops)
    uses = [0] * n
    for v in src:
        uses[v] += 1
    node_slot = [0] * n
    for v, e in zip(src, eslot, strict=True):
        if uses[v] == 1:
            node_slot[v] = e
    return CellGraph(ops, steps, node_slot, dag_depth(n, src, dst, topo), src, dst, eslot, root, [1] * n)


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
        """The graph of one cell (text is parsed; a malformed text raises CellSyntaxError). Equivalent spellings
        (`evonas.cells.canonical`: `Add(MM(x),MM(x))` is `MM(x)`) get the graph of the canonical cell."""
        if isinstance(cell, str):
            hit = self._by_text.get(cell)
            if hit is not None:
                return hit
            tp = template(cell)
            if tp is None:
                tp = template_of(parse(cell))  # parse raises the CellSyntaxError for a malformed text
        else:
            tp = template_of(cell)
        if tp.key != tp.written_key:  # an equivalent re-spelling: the graph is that of the canonical cell
            tp = template_of(canonical(parse(tp.key)))
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
    """Many cell graphs as one batched DGL graph, plus the roots, the pooling triples and (tree form) the schedule.

    Pooling: node `pool_node[j]` occurs `pool_weight[j]` times in cell `pool_cell[j]` (a node shared by several
    cells of a tree batch has one triple per cell). Tree form: nodes are the distinct subtrees of the whole
    batch, sorted by height, lowest first, so level L (height L) is the contiguous block of `level_sizes[L]`
    nodes; `levels[L]` = [nodes at level L, their max arity] global ids of each node's children in argument
    order, padded with the number of nodes (one past the end: a zero row). DAG form: the cells' graphs side by
    side, no schedule.
    """

    g: dgl.DGLGraph
    roots: torch.Tensor
    pool_cell: torch.Tensor
    pool_node: torch.Tensor
    pool_weight: torch.Tensor
    level_sizes: list[int]
    levels: list[torch.Tensor]

    @property
    def batch_size(self) -> int:
        return len(self.roots)


def _unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of an int matrix (lexicographic order) and, per input row, the index of its distinct row."""
    order = np.lexsort(rows.T[::-1])
    srt = rows[order]
    first = np.ones(len(rows), bool)
    first[1:] = (srt[1:] != srt[:-1]).any(axis=1)
    inverse = np.empty(len(rows), np.int64)
    inverse[order] = np.cumsum(first) - 1
    return srt[first], inverse


def _merge_tree(op, step, slot, level, src, dst) -> tuple[np.ndarray, ...]:
    """Merge equal subtrees (same operator, step, slot and children) across the batch, level by level upwards.

    Returns per distinct node (sorted by level): op, step, slot, level, its children matrix (global ids, -1
    padding) and per input node the id of its distinct node.
    """
    n = len(op)
    eorder = np.argsort(dst, kind="stable")  # children of one parent stay in argument order
    src, dst = src[eorder], dst[eorder]
    rank = np.arange(len(dst)) - np.searchsorted(dst, dst, side="left")  # argument position in the parent
    k = int(rank.max()) + 1 if len(rank) else 0
    kids = np.full((n, k), -1, np.int64)
    kids[dst, rank] = src
    new_id = np.empty(n, np.int64)
    parts: list[np.ndarray] = []
    done = 0
    for lv in range(int(level.max()) + 1 if n else 0):
        at = np.flatnonzero(level == lv)
        if not len(at):
            continue
        ch = kids[at]
        ch = np.where(ch >= 0, new_id[np.maximum(ch, 0)], -1)  # children are lower: already renumbered
        rows, inverse = _unique_rows(np.column_stack([op[at], step[at], slot[at], ch]))
        new_id[at] = done + inverse
        done += len(rows)
        parts.append(np.column_stack([rows[:, :3], np.full(len(rows), lv), rows[:, 3:]]))
    table = np.concatenate(parts) if parts else np.zeros((0, 4 + k), np.int64)
    return table[:, 0], table[:, 1], table[:, 2], table[:, 3], table[:, 4:], new_id


def batch_graphs(graphs: Sequence[CellGraph], form: str) -> GraphBatch:
    """Assemble per-cell arrays into one DGL graph (tree form: equal subtrees merged, nodes by level)."""
    counts = np.fromiter((len(gr.op) for gr in graphs), np.int64, len(graphs))
    ecounts = np.fromiter((len(gr.src) for gr in graphs), np.int64, len(graphs))
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    n_total, e_total = int(counts.sum()), int(ecounts.sum())

    def cat(name: str, total: int) -> np.ndarray:
        return np.fromiter(chain.from_iterable(getattr(gr, name) for gr in graphs), np.int64, total)

    op, step, slot, level, weight = (cat(name, n_total) for name in ("op", "step", "slot", "level", "weight"))
    eoff = np.repeat(offsets, ecounts)
    src = cat("src", e_total) + eoff
    dst = cat("dst", e_total) + eoff
    roots = offsets + np.fromiter((gr.root for gr in graphs), np.int64, len(graphs))
    pool_cell = np.repeat(np.arange(len(graphs), dtype=np.int64), counts)
    pool_node = np.arange(n_total, dtype=np.int64)
    level_sizes: list[int] = []
    levels: list[torch.Tensor] = []
    if form == "tree":
        op, step, slot, level, kids, new_id = _merge_tree(op, step, slot, level, src, dst)
        n = len(op)
        roots = new_id[roots]
        pairs, inverse = np.unique(pool_cell * n + new_id, return_inverse=True)
        weight = np.bincount(inverse, weights=weight).astype(np.int64)  # occurrences of a node in a cell
        pool_cell, pool_node = pairs // n, pairs % n
        level_sizes = [int(c) for c in np.bincount(level)] if n else []
        start = 0
        for size in level_sizes:
            ch = kids[start:start + size]
            width = int((ch >= 0).sum(axis=1).max()) if size else 0
            levels.append(torch.from_numpy(np.where(ch[:, :width] >= 0, ch[:, :width], n)))
            start += size
        parent, arg = np.nonzero(kids >= 0)
        src, dst = kids[parent, arg], parent
        eslot = slot[src]
    else:
        eslot = cat("eslot", e_total)
    g = dgl.graph((torch.from_numpy(src), torch.from_numpy(dst)), num_nodes=len(op))
    g.ndata["op"] = torch.from_numpy(op)
    g.ndata["step"] = torch.from_numpy(step)
    g.ndata["slot"] = torch.from_numpy(slot)
    g.ndata["level"] = torch.from_numpy(level)
    g.edata["slot"] = torch.from_numpy(eslot)
    if form == "dag":
        g.set_batch_num_nodes(torch.from_numpy(counts))
        g.set_batch_num_edges(torch.from_numpy(ecounts))
    return GraphBatch(g, torch.from_numpy(roots), torch.from_numpy(pool_cell), torch.from_numpy(pool_node),
                      torch.from_numpy(weight), level_sizes, levels)


def cell_graph(cell: str | Node, form: str = "tree") -> dgl.DGLGraph:
    """The DGL graph of one cell unrolled one step (convenience for inspection and tests)."""
    node = parse(cell) if isinstance(cell, str) else cell
    gr = _BUILDERS[form](node)
    g = dgl.graph((torch.tensor(gr.src, dtype=torch.int64), torch.tensor(gr.dst, dtype=torch.int64)),
                  num_nodes=gr.num_nodes)
    for name in ("op", "step", "slot", "level"):
        g.ndata[name] = torch.tensor(getattr(gr, name), dtype=torch.int64)
    g.edata["slot"] = torch.tensor(gr.eslot, dtype=torch.int64)
    return g
