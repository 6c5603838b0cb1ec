"""Ranking quality of predictions against measured scores (lower = better for both)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def _nan_to_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def ranking_metrics(pred: Sequence[float], true: Sequence[float | None]) -> dict[str, float | None]:
    """Kendall tau, Spearman rho, top-10% precision over all cells (failures, true=None, rank below every
    success and tie with each other), Kendall tau over the successful cells alone (`kendall_tau_ok`: failures
    are easy to rank last and flatter the first) and RMSE over the successful cells, in score units."""
    p = np.asarray(pred, dtype=np.float64)
    ok = np.array([t is not None for t in true])
    t_ok = np.array([t for t in true if t is not None], dtype=np.float64)
    worst = (t_ok.max() + 1.0 + abs(t_ok.max())) if len(t_ok) else 1.0
    t = np.array([worst if v is None else v for v in true], dtype=np.float64)
    n = len(p)
    out: dict[str, float | None] = {"n": n, "failures": int((~ok).sum())}
    if n >= 2:
        out["kendall_tau"] = _nan_to_none(stats.kendalltau(p, t).statistic)
        out["spearman"] = _nan_to_none(stats.spearmanr(p, t).statistic)
    else:
        out["kendall_tau"] = out["spearman"] = None
    n_ok = int(ok.sum())
    out["kendall_tau_ok"] = _nan_to_none(stats.kendalltau(p[ok], t_ok).statistic) if n_ok >= 2 else None
    k = max(1, int(round(0.1 * n)))
    top_true = set(np.argsort(t, kind="stable")[:k].tolist())
    top_pred = set(np.argsort(p, kind="stable")[:k].tolist())
    out["top10_precision"] = len(top_true & top_pred) / k if n else None
    out["rmse"] = float(np.sqrt(np.mean((p[ok] - t_ok) ** 2))) if ok.any() else None
    return out
