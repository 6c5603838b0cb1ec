"""Promotion by a learning-curve predictor: from a cell's rung-0 result (validation loss, training-loss curve)
and its tree, predict its top-rung loss; successive halving can promote on that instead of the rung-0 loss.

The idea is Baker et al.'s (2017) curve regression and Rawal & Miikkulainen's (2018) meta-LSTM: a short run's
curve says more than its last point. Here the model is ridge regression on standardised features, fitted on the
run's own archive (cells that reached the top rung), so it needs no data from elsewhere; with fewer than
`MIN_CELLS` such cells it is not used and promotion falls back to the rung-0 loss.
`benchmarks/fidelity_predictors.py` measures whether it ranks held-out cells' top-rung losses better.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from evonas.cells import height, node_count, op_counts, parse

MIN_CELLS = 8  # top-rung cells needed before the predictor is trusted
RIDGE = 3.0  # L2 penalty on standardised features (few training cells: shrink hard)
TREE_OPS = ("MM", "Mult", "Add", "Sub", "Sigmoid", "Tanh", "ReLU", "Gate3", "Memory")


def features(cell: str, loss0: float, curve: Sequence[float]) -> list[float]:
    """What the predictor sees: rung-0 validation loss, the curve's last level and recent slope (logs), the tree."""
    c = [v for v in curve if v is not None and math.isfinite(v) and v > 0] or [loss0]
    last, mid, first = math.log(c[-1]), math.log(c[len(c) // 2]), math.log(c[0])
    node = parse(cell)
    counts = op_counts(node)
    return [loss0, last, last - mid, mid - first, float(node_count(node)), float(height(node)),
            *(float(counts.get(op, 0)) for op in TREE_OPS)]


class CurvePredictor:
    """Top-rung loss = rung-0 loss + a learned correction: ridge regression of (top - rung-0 loss) on the other
    `features`. Fitted on cells that reached the top (the best of rung 0: a narrow range), a regression of the
    top loss itself would learn that range's quirks; the correction form shrinks to the rung-0 order when the
    data say nothing, and moves a cell only as far as its curve and tree justify."""

    def __init__(self, ridge: float = RIDGE):
        self.ridge = ridge
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.coef: np.ndarray | None = None
        self.bias = 0.0
        self.n = 0

    @property
    def fitted(self) -> bool:
        return self.coef is not None

    def fit(self, x: Sequence[Sequence[float]], y: Sequence[float]) -> CurvePredictor:
        """Fit on feature rows (column 0: the rung-0 loss) and top-rung losses (closed form; deterministic)."""
        xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        rest, resid = xa[:, 1:], ya - xa[:, 0]
        self.mean, sd = rest.mean(0), rest.std(0)
        self.scale = np.where(sd > 1e-12, sd, 1.0)
        z = (rest - self.mean) / self.scale
        self.bias = float(resid.mean())
        a = z.T @ z + self.ridge * np.eye(z.shape[1])
        self.coef = np.linalg.solve(a, z.T @ (resid - self.bias))
        self.n = len(ya)
        return self

    def predict(self, x: Sequence[Sequence[float]]) -> list[float]:
        """Predicted top-rung losses."""
        assert self.coef is not None and self.mean is not None and self.scale is not None, "fit first"
        xa = np.asarray(x, dtype=np.float64)
        z = (xa[:, 1:] - self.mean) / self.scale
        return [float(v) for v in xa[:, 0] + self.bias + z @ self.coef]


def _ok_loss(metrics: dict) -> float | None:
    v = metrics.get("valid_loss")
    return float(v) if metrics.get("status") == "ok" and v is not None and math.isfinite(v) else None


def from_archive(rows: Sequence[dict], top: int) -> CurvePredictor | None:
    """A predictor fitted on archive rows: each cell with a successful rung-0 row (with a curve) and a successful
    `top`-rung row is one example; None with fewer than MIN_CELLS examples."""
    zero: dict[str, dict] = {}
    best_top: dict[str, float] = {}
    for r in rows:
        m, rung = r["metrics"], int(r["metrics"].get("rung", 0) or 0)
        loss = _ok_loss(m)
        if loss is None:
            continue
        if rung == 0 and m.get("curve") and (r["key"] not in zero or loss < _ok_loss(zero[r["key"]]["metrics"])):
            zero[r["key"]] = r
        if rung == top:
            best_top[r["key"]] = min(loss, best_top.get(r["key"], math.inf))
    keys = sorted(k for k in best_top if k in zero)
    if len(keys) < MIN_CELLS:
        return None
    x = [features(k, _ok_loss(zero[k]["metrics"]), zero[k]["metrics"]["curve"]) for k in keys]
    return CurvePredictor().fit(x, [best_top[k] for k in keys])
