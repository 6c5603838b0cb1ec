"""Variation operators over cells as DEAP PrimitiveTrees: generation, crossover, five mutations, limits, breeding.

All randomness comes from an explicit `random.Random`. Operators follow DEAP's convention (modify in place,
return a tuple); `static_limit` and `well_formed` wrap them as `gp.staticLimit` does, giving back the parent
when a child breaks a limit. Generation and mutation know the cell language's size rule: a child of `MM`
may read the input (`x`, `x_prev`), every other slot needs a hidden-size value, and a `Gate3` gate is a
`Sigmoid`. `Memory` and `c_prev` are only introduced by `mut_memory`, which keeps the cell-state rules.
"""

from __future__ import annotations

import copy
import random
from collections import Counter
from collections.abc import Callable, Iterable
from functools import wraps

from deap import base, gp

from evonas.cells import FilterConfig, Node, canonical_text, filter_report, is_well_formed, preorder
from evonas.errors import ConfigError
from evonas.evolution.genome import Individual, make_individual, to_node, to_tree

Tree = gp.PrimitiveTree  # an Individual: a PrimitiveTree with .fitness and .key
HIDDEN, ANY, GATE = "hidden", "any", "gate"  # slot kinds: needs hidden size / may read the input / Gate3's gate
_TRIES = 8  # attempts per operator call before giving the parent back unchanged


# ---------------------------------------------------------------- helpers

def _slots(tree: list) -> list[tuple[int, str]]:
    """(parent index, slot kind) of each position of a prefix tree; the root has parent -1 and kind hidden."""
    out: list[tuple[int, str]] = []
    stack: list[list[int]] = []  # [parent index, index of its next child]
    for i, item in enumerate(tree):
        if stack:
            p, k = stack[-1]
            name = tree[p].name
            out.append((p, ANY if name == "MM" else GATE if name == "Gate3" and k == 2 else HIDDEN))
            stack[-1][1] += 1
            if stack[-1][1] == tree[p].arity:
                stack.pop()
        else:
            out.append((-1, HIDDEN))
        if item.arity:
            stack.append([i, 0])
    return out


def _terminals(pset: gp.PrimitiveSet, slot: str) -> list:
    """Sources a generator may place in a slot (never c_prev: that comes with Memory)."""
    names = ("x", "x_prev", "h_prev") if slot == ANY else ("h_prev",)
    return [pset.mapping[n] for n in names]


def _primitives(pset: gp.PrimitiveSet, parent: str | None) -> list:
    """Operators a generator may place under `parent`: no Memory, and no unary operator stacked on itself."""
    return [p for p in pset.primitives[pset.ret] if p.name != "Memory" and not (p.arity == 1 and p.name == parent)]


def _gen(pset: gp.PrimitiveSet, rng: random.Random, depth: int, height: int, full: bool, slot: str,
         parent: str | None) -> list:
    """One subtree in prefix order: full (every leaf at `height`) or grow (leaves anywhere up to `height`)."""
    prims, terms = _primitives(pset, parent), _terminals(pset, slot)
    if slot == GATE and depth < height and "Sigmoid" in pset.mapping and parent != "Sigmoid":
        prims = [pset.mapping["Sigmoid"]]
    stop = depth >= height or not prims
    if not stop and not full and depth > 0:
        stop = rng.random() < len(terms) / (len(terms) + len(prims))
    if stop:
        if slot != ANY and parent != "MM" and "MM" in pset.mapping and rng.random() < 0.5:
            return [pset.mapping["MM"], rng.choice(_terminals(pset, ANY))]  # a projected source, e.g. MM(x)
        return [rng.choice(terms)]
    prim = rng.choice(prims)
    out = [prim]
    for k in range(prim.arity):
        kind = ANY if prim.name == "MM" else GATE if prim.name == "Gate3" and k == 2 else HIDDEN
        out += _gen(pset, rng, depth + 1, height, full, kind, prim.name)
    return out


def gen_half_and_half(pset: gp.PrimitiveSet, rng: random.Random, min_height: int, max_height: int,
                      slot: str = HIDDEN, parent: str | None = None) -> list:
    """One expression by grow or full (a coin flip) with a height drawn from [min_height, max_height]."""
    h = rng.randint(min_height, max_height)
    return _gen(pset, rng, 0, h, rng.random() < 0.5, slot, parent)


def reject_reason(node: Node, filters: FilterConfig) -> str | None:
    """Why a cell may not be an offspring (first failed rule, or `well_formed`), None when it may."""
    if not is_well_formed(node):
        return "well_formed"
    return next((r.rule for r in filter_report(node, filters) if not r.passed), None)


def gen_ramped(n: int, pset: gp.PrimitiveSet, rng: random.Random, filters: FilterConfig, min_height: int,
               max_height: int, exclude: Iterable[str] = (), max_tries: int | None = None) -> list:
    """Ramped half-and-half: up to `n` distinct new cells passing the filters, with bounded retries.

    Raises ConfigError when nothing at all passes (the filters and operator set leave nothing to generate);
    returns fewer than `n` when the tries run out after some successes.
    """
    seen = set(exclude)
    out: list = []
    rejected: Counter[str] = Counter()
    tries = max_tries if max_tries is not None else 300 * n + 2000
    heights = list(range(min_height, max_height + 1)) or [max_height]
    for t in range(tries):
        if len(out) >= n:
            break
        h = heights[t % len(heights)]  # ramped: cycle through the heights
        node = to_node(Individual(_gen(pset, rng, 0, h, rng.random() < 0.5, HIDDEN, None)))
        why = reject_reason(node, filters)
        key = canonical_text(node)
        if why is None and key in seen:
            why = "duplicate"
        if why:
            rejected[why] += 1
            continue
        seen.add(key)
        out.append(make_individual(node, pset))
    if not out and n > 0:
        top = ", ".join(f"{k} x{v}" for k, v in rejected.most_common(3))
        names = sorted(p.name for p in pset.primitives[pset.ret])
        raise ConfigError(f"the filters leave nothing to generate: 0 of {tries} random cells of height "
                          f"{min_height}..{max_height} from operators {names}"
                          f" passed (rejections: {top}); relax filters.max_nodes/max_height or init heights")
    return out


# ---------------------------------------------------------------- limits (decorators, as gp.staticLimit)

def _replace_rejected(reject: Callable) -> Callable:
    """Decorator factory: each child for which `reject(child)` holds is replaced by a copy of its parent."""

    def decorator(func: Callable) -> Callable:
        @wraps(func)
        def wrapper(*args, **kwargs):
            keep = [copy.deepcopy(a) for a in args]
            new = list(func(*args, **kwargs))
            for i, ind in enumerate(new):
                if reject(ind):
                    new[i] = keep[min(i, len(keep) - 1)]
            return tuple(new)

        return wrapper

    return decorator


def static_limit(key: Callable, max_value: int) -> Callable:
    """Decorator: a child over `max_value` (by `key`) is replaced by a copy of its own parent (argument i)."""
    return _replace_rejected(lambda ind: key(ind) > max_value)


def well_formed(pset: gp.PrimitiveSet) -> Callable:
    """Decorator: a child that is not a well-formed cell is replaced by a copy of its parent."""
    return _replace_rejected(lambda ind: not is_well_formed(to_node(ind)))


def _ok(items: list) -> bool:
    return is_well_formed(to_node(Individual(items)))


def _assign(ind, items: list):
    list.__setitem__(ind, slice(None), items)  # PrimitiveTree's own __setitem__ refuses a full slice
    return ind


# ---------------------------------------------------------------- crossover and mutations

def cx_subtree(ind1: Tree, ind2: Tree, rng: random.Random) -> tuple:
    """Subtree crossover: swap a random subtree of each parent (both children well-formed, else unchanged)."""
    if len(ind1) < 2 or len(ind2) < 2:
        return ind1, ind2
    for _ in range(_TRIES):
        s1 = ind1.searchSubtree(rng.randrange(1, len(ind1)))
        s2 = ind2.searchSubtree(rng.randrange(1, len(ind2)))
        a = ind1[:s1.start] + ind2[s2] + ind1[s1.stop:]
        b = ind2[:s2.start] + ind1[s1] + ind2[s2.stop:]
        if _ok(a) and _ok(b):
            return _assign(ind1, a), _assign(ind2, b)
    return ind1, ind2


def mut_uniform(ind: Tree, expr: Callable, rng: random.Random) -> tuple:
    """Replace a random subtree by a fresh expression that fits its slot."""
    slots = _slots(ind)
    for _ in range(_TRIES):
        i = rng.randrange(len(ind))
        parent, kind = slots[i]
        sl = ind.searchSubtree(i)
        new = ind[:sl.start] + expr(slot=kind, parent=ind[parent].name if parent >= 0 else None) + ind[sl.stop:]
        if new != list(ind) and _ok(new):
            return (_assign(ind, new),)
    return (ind,)


def mut_node_replace(ind: Tree, pset: gp.PrimitiveSet, rng: random.Random) -> tuple:
    """Swap one operator for another of the same arity, or one source for another that fits the slot."""
    slots = _slots(ind)
    for _ in range(_TRIES):
        i = rng.randrange(len(ind))
        item, (_, kind) = ind[i], slots[i]
        if item.arity == 0:
            pool = [t for t in _terminals(pset, kind) if t is not item]
        elif item.name == "Memory":
            continue
        else:
            pool = [p for p in pset.primitives[pset.ret]
                    if p.arity == item.arity and p.name not in (item.name, "Memory")]
        if not pool:
            continue
        new = list(ind)
        new[i] = rng.choice(pool)
        if _ok(new):
            return (_assign(ind, new),)
    return (ind,)


def _filler(pset: gp.PrimitiveSet, rng: random.Random, kind: str) -> list:
    """The smallest sensible argument for a new slot: a source, or `Sigmoid(MM(source))` for a gate."""
    if kind == GATE and {"Sigmoid", "MM"} <= set(pset.mapping):
        return [pset.mapping["Sigmoid"], pset.mapping["MM"], rng.choice(_terminals(pset, ANY))]
    return [rng.choice(_terminals(pset, kind))]


def mut_insert(ind: Tree, pset: gp.PrimitiveSet, rng: random.Random) -> tuple:
    """Insert a new operator above a random subtree; its other arguments get minimal fillers."""
    slots = _slots(ind)
    for _ in range(_TRIES):
        i = rng.randrange(len(ind))
        parent = ind[slots[i][0]].name if slots[i][0] >= 0 else None
        prims = _primitives(pset, parent)
        if not prims:
            return (ind,)
        prim = rng.choice(prims)
        sl = ind.searchSubtree(i)
        pos = 0 if prim.name == "Gate3" and rng.random() < 0.5 else rng.randrange(prim.arity)
        if prim.name == "Gate3":
            pos = min(pos, 1)  # the old subtree is a value, not the gate
        body = [prim]
        for k in range(prim.arity):
            kind = ANY if prim.name == "MM" else GATE if prim.name == "Gate3" and k == 2 else HIDDEN
            body += ind[sl] if k == pos else _filler(pset, rng, kind)
        new = ind[:sl.start] + body + ind[sl.stop:]
        if _ok(new):
            return (_assign(ind, new),)
    return (ind,)


def mut_shrink(ind: Tree, rng: random.Random) -> tuple:
    """Replace a random operator by one of its arguments (the tree gets smaller)."""
    inner = [i for i, item in enumerate(ind) if item.arity > 0]
    for _ in range(_TRIES):
        if not inner:
            break
        i = rng.choice(inner)
        sl = ind.searchSubtree(i)
        kids, j = [], i + 1
        while j < sl.stop:
            s = ind.searchSubtree(j)
            kids.append(s)
            j = s.stop
        k = rng.choice(kids)
        new = ind[:sl.start] + ind[k] + ind[sl.stop:]
        if _ok(new):
            return (_assign(ind, new),)
    return (ind,)


# Memory works on Nodes: (path, node) pairs, where a path is the tuple of child indices from the root.

def _walk(node: Node, path: tuple = (), kind: str = HIDDEN):
    yield path, node, kind
    for k, c in enumerate(node.children):
        ck = ANY if node.op == "MM" else GATE if node.op == "Gate3" and k == 2 else HIDDEN
        yield from _walk(c, path + (k,), ck)


def _replace(node: Node, path: tuple, new: Node) -> Node:
    if not path:
        return new
    kids = list(node.children)
    kids[path[0]] = _replace(kids[path[0]], path[1:], new)
    return Node(node.op, tuple(kids))


def _get(node: Node, path: tuple) -> Node:
    for k in path:
        node = node.children[k]
    return node


def _add_memory(cell: Node, names: set[str], rng: random.Random) -> Node | None:
    """Wrap a hidden-size subtree S in Memory with a path from c_prev: S[h_prev->c_prev], S + c_prev, or a gate."""
    spots = [(p, n) for p, n, kind in _walk(cell) if not n.is_source and kind != ANY and n.op != "MM"]
    if not spots:
        return None
    path, s = rng.choice(spots)
    c = Node("c_prev")
    variants = []
    hs = [p for p, n, _ in _walk(s) if n.op == "h_prev"]
    if hs:
        variants.append(_replace(s, rng.choice(hs), c))
    if "Add" in names:
        variants.append(Node("Add", (s, c)))
    if {"Gate3", "Sigmoid", "MM"} <= names:
        src = Node(rng.choice(["x", "h_prev"]))
        variants.append(Node("Gate3", (s, c, Node("Sigmoid", (Node("MM", (src,)),)))))
    if not variants:
        return None
    return _replace(cell, path, Node("Memory", (rng.choice(variants),)))


def _move_memory(cell: Node, rng: random.Random) -> Node | None:
    """Move Memory to another subtree that still reads c_prev; if there is none, remove Memory and c_prev."""
    mpath = next(p for p, n, _ in _walk(cell) if n.op == "Memory")
    stripped = _replace(cell, mpath, _get(cell, mpath).children[0])
    spots = [p for p, n, kind in _walk(stripped) if not n.is_source and kind != ANY and p != mpath
             and any(m.op == "c_prev" for m in preorder(n))]
    if spots:
        p = rng.choice(spots)
        return _replace(stripped, p, Node("Memory", (_get(stripped, p),)))
    out = stripped
    for p, n, _ in list(_walk(stripped)):
        if n.op == "c_prev":
            out = _replace(out, p, Node("h_prev"))
    return out


def mut_memory(ind: Tree, pset: gp.PrimitiveSet, rng: random.Random) -> tuple:
    """Add a Memory (a cell state recurring through c_prev) to a cell without one, or move the existing one."""
    cell = to_node(ind)
    names = set(pset.mapping)
    for _ in range(_TRIES):
        has = any(n.op == "Memory" for n in preorder(cell))
        new = _move_memory(cell, rng) if has else _add_memory(cell, names, rng)
        if new is not None and new != cell and is_well_formed(new):
            return (_assign(ind, list(to_tree(new, pset))),)
    return (ind,)


def mut_mixture(ind: Tree, rng: random.Random, weights: dict[str, float], ops: dict[str, Callable]) -> tuple:
    """Apply one mutation, drawn by weight from `ops`."""
    names = sorted(weights)
    name = rng.choices(names, weights=[weights[n] for n in names])[0]
    out = ops[name](ind)
    out[0].mutation = name
    return out


def vary(parents: list, rng: random.Random, mate: Callable, mutate: Callable, cx_prob: float) -> Tree:
    """One child: crossover of two parents (first child kept) with probability cx_prob, else a mutant of one."""
    if len(parents) >= 2 and rng.random() < cx_prob:
        a, b = (copy.deepcopy(p) for p in rng.sample(parents, 2))
        child = mate(a, b)[0]
        child.mutation = "crossover"
    else:
        child = mutate(copy.deepcopy(rng.choice(parents)))[0]
    del child.fitness.values
    child.key = canonical_text(to_node(child))
    return child


def breed(toolbox: base.Toolbox, parents: list, n: int, filters: FilterConfig, seen: set[str], rng: random.Random,
          max_tries: int | None = None) -> list:
    """Up to `n` distinct new offspring that pass the filters and whose key is not in `seen` (bounded tries).

    When variation keeps producing rejects (a converged population), fresh random cells fill the rest.
    """
    out: list = []
    seen = set(seen)
    tries = max_tries if max_tries is not None else 40 * n + 200
    for _ in range(tries):
        if len(out) >= n or not parents:
            break
        child = toolbox.vary(parents)
        node = to_node(child)
        if child.key in seen or reject_reason(node, filters) is not None:
            continue
        seen.add(child.key)
        out.append(child)
    if len(out) < n:
        fresh = toolbox.population(n - len(out), exclude=seen)
        for ind in fresh:
            ind.mutation = "immigrant"
        out += fresh
    return out
