"""Rungs made comparable: a multi-fidelity run's (cell, rung) results as one top-rung target per cell.

In a successive-halving search every cell has a rung-0 loss, the best third a rung-1 loss, and so on; the
surrogate should learn from all of them and predict what matters, the top rung's loss. Each cell's target is
its loss at the highest rung it reached, carried up to the top rung's scale by linear maps fitted between
consecutive rungs on the cells that have both (least squares of the higher rung's loss on the lower's: the
expected higher-rung loss given the lower one). So a promoted cell is ranked by its more faithful result, and a
cell seen only at rung 0 is placed on the same scale by what rung 0 says about the rung above. A cell that
failed at the highest rung it reached is a failure (it would not survive the full budget either).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MIN_PAIRS_FOR_SLOPE = 3  # fewer cells with both rungs: only a shift between the rungs is fitted


@dataclass(frozen=True)
class RungMap:
    """score at rung r+1 ~ shift + slope * score at rung r (slope > 0 keeps the order within a rung)."""

    shift: float = 0.0
    slope: float = 1.0
    pairs: int = 0

    @classmethod
    def fit(cls, pairs: Sequence[tuple[float, float]]) -> RungMap:
        """Least squares with a positive slope; a shift alone for few pairs, a flat lower rung or slope <= 0."""
        n = len(pairs)
        if n == 0:
            return cls()
        mx = sum(x for x, _ in pairs) / n
        my = sum(y for _, y in pairs) / n
        vx = sum((x - mx) ** 2 for x, _ in pairs)
        slope = sum((x - mx) * (y - my) for x, y in pairs) / vx if vx > 1e-12 else 0.0
        if n < MIN_PAIRS_FOR_SLOPE or not slope > 0:
            slope = 1.0
        return cls(my - slope * mx, slope, n)

    def __call__(self, score: float) -> float:
        return self.shift + self.slope * score


def _ok(r: dict) -> bool:
    return r.get("status", "ok") == "ok" and r.get("score") is not None and math.isfinite(float(r["score"]))


def _rung(r: dict) -> int:
    return int(r.get("rung") or 0)


def _by_cell(records: Sequence[dict]) -> dict[str, dict[int, dict]]:
    """cell -> rung -> record, cells in order of first appearance."""
    by_cell: dict[str, dict[int, dict]] = {}
    for r in records:
        by_cell.setdefault(r["cell"], {})[_rung(r)] = r
    return by_cell


def rung_maps(records: Sequence[dict]) -> dict[int, RungMap]:
    """The map from each rung to the next one present, fitted on cells successful at both."""
    return _maps(_by_cell(records), sorted({_rung(r) for r in records}))


def _maps(by_cell: dict[str, dict[int, dict]], rungs: list[int]) -> dict[int, RungMap]:
    maps = {}
    for lo, hi in zip(rungs, rungs[1:], strict=False):
        pairs = sorted((float(c[lo]["score"]), float(c[hi]["score"])) for c in by_cell.values()
                       if lo in c and hi in c and _ok(c[lo]) and _ok(c[hi]))
        maps[lo] = RungMap.fit(pairs)
    return maps


def top_rung_records(records: Sequence[dict]) -> list[dict]:
    """One record per cell (order of first appearance) with its score on the top rung's scale (see module).
    Records without a `rung`, or all at one rung, come back unchanged."""
    rungs = sorted({_rung(r) for r in records})
    if len(rungs) <= 1:
        return list(records)
    by_cell = _by_cell(records)
    maps = _maps(by_cell, rungs)
    out = []
    for seen in by_cell.values():
        high = max(seen)
        r = dict(seen[high])
        r["generation"] = max(int(v.get("generation") or 0) for v in seen.values())
        if _ok(r):
            score = float(r["score"])
            for lo in rungs:
                if lo >= high and lo in maps:  # high -> next rung -> ... -> top
                    score = maps[lo](score)
            r["score"] = score
        else:
            r["score"] = None
            r["status"] = r.get("status") if r.get("status") not in (None, "ok") else "diverged"
        r["rung"] = rungs[-1]
        r["reached"] = high
        out.append(r)
    return out
