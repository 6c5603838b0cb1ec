"""The screen step: choose which candidate offspring to train, and judge the screen by rank correlation.

A screen is any object with `score(cells: list[str]) -> list[float]` (lower = better, NaN = worst) and,
optionally, `learn(records)` (or `fit(records)`) to refit on the archive after each generation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any, Protocol

from evonas.errors import EvonasError


class Screen(Protocol):
    """What evolution needs from a surrogate."""

    def score(self, cells: list[str]) -> list[float]: ...


def clean_scores(scores: Sequence[Any], n: int) -> list[float]:
    """Scores as floats with NaN/inf/None/garbage turned into +inf (worst); a wrong length is an error."""
    if len(scores) != n:
        raise EvonasError(f"the screen returned {len(scores)} scores for {n} cells")
    out = []
    for s in scores:
        try:
            v = float(s)
        except (TypeError, ValueError):
            v = math.inf
        out.append(v if math.isfinite(v) else math.inf)
    return out


def pick(keys: Sequence[str], scores: Sequence[float], n: int, explore_share: float,
         rng: random.Random, random_share: float = 0.0) -> list[int]:
    """Indices to train: the best-scored, plus `explore_share` of n drawn from the rest (see `pick_split`)."""
    best, sample = pick_split(keys, scores, n, explore_share, rng, random_share)
    return best + sample


def pick_split(keys: Sequence[str], scores: Sequence[float], n: int, explore_share: float, rng: random.Random,
               random_share: float = 0.0) -> tuple[list[int], list[int]]:
    """Indices to train, as (screened, random sample): the best-scored, plus `explore_share` of n drawn from the
    rest -- `random_share` of those slots uniformly from all candidates not chosen yet (an unscreened sample:
    the screen's tau on it measures the screen against chance), the others by rank-weighted sampling.

    The rank weights are 1 / (1 + rank), so a middling candidate is likelier than a bad one but every candidate
    has a chance. Ties are broken by the key, so the choice is reproducible.
    """
    order = sorted(range(len(keys)), key=lambda i: (scores[i], keys[i]))
    n = min(n, len(order))
    n_explore = min(round(explore_share * n), n)
    n_random = min(math.ceil(random_share * n_explore - 1e-9), n_explore)
    chosen = order[: n - n_explore]
    rest = order[n - n_explore:]
    sample = []
    for _ in range(n_random):  # uniform over the candidates left, whatever their score
        sample.append(rest.pop(rng.randrange(len(rest))))
    weights = [1.0 / (1 + r) for r in range(len(rest))]
    for _ in range(n_explore - n_random):
        if not rest:
            break
        j = rng.choices(range(len(rest)), weights=weights)[0]
        chosen.append(rest.pop(j))
        weights.pop(j)
    return chosen, sample


def random_subset(n_cands: int, n: int, rng: random.Random) -> list[int]:
    """Indices of a random subset of size n (no screen)."""
    return sorted(rng.sample(range(n_cands), min(n, n_cands)))


def kendall_tau(predicted: Sequence[float], measured: Sequence[float | None],
                failures_worst: bool = False) -> float | None:
    """Kendall's tau between the screen's scores and the measured losses: over the successful cells (finite
    pairs only), or with `failures_worst` a failed cell (None/NaN loss) ranks below every success, tied with the
    other failures (easier, and flattering). None if undefined."""
    if failures_worst:
        ok = [m for m in measured if m is not None and math.isfinite(m)]
        worst = (max(ok) + 1.0 + abs(max(ok))) if ok else 1.0
        measured = [m if m is not None and math.isfinite(m) else worst for m in measured]
    pairs = [(p, m) for p, m in zip(predicted, measured, strict=True)
             if m is not None and math.isfinite(p) and math.isfinite(m)]
    if len(pairs) < 2:
        return None
    from scipy.stats import kendalltau

    tau = kendalltau([p for p, _ in pairs], [m for _, m in pairs]).statistic
    return float(tau) if tau is not None and math.isfinite(tau) else None


def learn(screen: Any, records: list[dict]) -> bool:
    """Call the screen's optional `learn(records)` (or `fit(records)`) hook; True if it had one."""
    for name in ("learn", "fit"):
        hook = getattr(screen, name, None)
        if callable(hook):
            hook(records)
            return True
    return False


def on_resume(screen: Any, records: list[dict]) -> None:
    """Bring a screen back to its state after the last finished generation: its `on_resume(records)` hook
    (e.g. reload a saved model) when it has one, else a refit with `learn`."""
    hook = getattr(screen, "on_resume", None)
    if callable(hook):
        hook(records)
    else:
        learn(screen, records)
