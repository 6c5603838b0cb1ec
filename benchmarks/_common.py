"""What the benchmark scripts share: where the real data lives and the machine's load (printed with timings)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"  # real data is read from here, never copied into the repo
JSB = SHARED_DATA / "jsb_chorales" / "jsb-chorales-quarter.json"
SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: timings on a shared machine mean little without them."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def compare(contenders: dict[str, Callable[[], None]], repeats: int, warmup: int = 2,
            clock: Callable[[], float] = time.process_time, calls: int = 1) -> dict[str, float]:
    """Median seconds (of `clock`: process CPU time by default) per call of each contender, interleaved (the
    order alternates every repeat) after `warmup` untimed rounds.

    `calls` > 1: each measurement is one untimed call, then `calls` timed calls in a row, as a training loop
    runs one model step after step. With one call per measurement a contender always meets caches that the
    one before it filled, except the two at the ends of the order, which run twice in a row every other
    repeat: that favours them (by up to a third at hidden 32 on a 2 MB-L2 machine).
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            if calls > 1:
                contenders[name]()
            start = clock()
            for _ in range(calls):
                contenders[name]()
            times[name].append((clock() - start) / calls)
    return {name: statistics.median(ts) for name, ts in times.items()}


def random_cells(seed: int, count: int, ops: frozenset[str] | set[str], input_size: int, hidden_size: int) -> list:
    """`count` random cells (Nodes) of 12..21 nodes over `ops` that pass the search filters and type-check at
    these sizes: the speed benchmarks' stand-ins for what a search trains (same seed, same cells)."""
    import random

    from evonas.cells import OPS, SOURCES, Node, check, node_count, passes_filters
    from evonas.errors import CellError

    rng, names, found = random.Random(seed), sorted(ops), []

    def grow(depth: int) -> Node:
        if depth == 0 or rng.random() < 0.2:
            return Node(rng.choice(SOURCES))
        op = rng.choice([*names, "MM", "MM", "Add", "Mult"])
        return Node(op, tuple(grow(depth - 1) for _ in range(OPS[op].arity)))

    while len(found) < count:
        cell = grow(6)
        if not 12 <= node_count(cell) <= 21 or not passes_filters(cell):
            continue
        try:
            check(cell, input_size, hidden_size)
        except CellError:
            continue
        found.append(cell)
    return found
