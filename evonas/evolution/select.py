"""Selection: tournament with elitism (default), NSGA-II on (validation loss, parameters), aging evolution.

A cell whose fitness is missing, NaN or infinite (failed, diverged, not yet trained) is always worst: it is
never a parent, never a survivor and never enters the hall of fame. Every random choice uses the run's
`random.Random`, and ties are broken by the canonical key, so selection is reproducible.
"""

from __future__ import annotations

import math
import random
from typing import Any

from deap import tools

from evonas.errors import ConfigError

SELECTIONS = ("tournament", "nsga2", "aging")


def usable(ind: Any) -> bool:
    """True when the individual has a finite fitness (a trained cell with a real validation loss)."""
    return ind.fitness.valid and all(math.isfinite(v) for v in ind.fitness.values)


def set_fitness(ind: Any, loss: float | None, params: int | None, rung: int = 0) -> None:
    """Set (loss, params) as fitness, or leave it invalid when the loss is missing or not finite; `rung` is the
    highest successive-halving rung the loss was measured at (a cell promoted further ranks above the rest)."""
    ind.rung = int(rung)
    if ind.fitness.valid:
        del ind.fitness.values
    if loss is not None and math.isfinite(loss):
        ind.fitness.values = (float(loss), float(params or 0))


def rank_key(ind: Any) -> tuple:
    """Sort key, best first: (-rung, loss, params, key), so a cell that reached a higher rung ranks above every
    cell that stopped lower; unusable individuals last."""
    if not usable(ind):
        return (math.inf, math.inf, math.inf, ind.key)
    return (-getattr(ind, "rung", 0), *ind.fitness.values, ind.key)


def _unique(inds: list) -> list:
    """First occurrence of each canonical key, order kept."""
    seen: set[str] = set()
    out = []
    for ind in inds:
        if ind.key not in seen:
            seen.add(ind.key)
            out.append(ind)
    return out


def tournament(pool: list, k: int, size: int, rng: random.Random) -> list:
    """k winners of tournaments of `size` drawn with replacement from the usable part of `pool`."""
    ok = [i for i in pool if usable(i)]
    if not ok:
        return []
    return [min((rng.choice(ok) for _ in range(size)), key=rank_key) for _ in range(k)]


class HallOfFame:
    """The best `size` distinct usable cells ever seen, best first (by loss, then params, then key)."""

    def __init__(self, size: int):
        self.size = size
        self.items: list = []

    def update(self, inds: list) -> None:
        """Merge in new individuals (unusable ones are ignored)."""
        merged = _unique(sorted(self.items + [i for i in inds if usable(i)], key=rank_key))
        self.items = merged[: self.size]

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class Tournament:
    """Parents by tournament; survivors: the `elite` best, then tournaments without replacement."""

    name = "tournament"
    crossover = True

    def __init__(self, size: int, elite: int, rng: random.Random):
        self.size, self.elite, self.rng = size, elite, rng

    def parents(self, population: list, n: int) -> list:
        """n parents, each the best of `size` random usable individuals."""
        return tournament(population, n, self.size, self.rng)

    def survivors(self, population: list, offspring: list, mu: int) -> list:
        """mu distinct usable individuals of population + offspring, the elite always kept."""
        pool = sorted(_unique([i for i in population + offspring if usable(i)]), key=rank_key)
        out, rest = pool[: self.elite], pool[self.elite:]
        while len(out) < mu and rest:
            picks = [self.rng.randrange(len(rest)) for _ in range(min(self.size, len(rest)))]
            out.append(rest.pop(min(picks, key=lambda j: rank_key(rest[j]))))
        return out


class NSGA2:
    """NSGA-II (Deb et al. 2002) on (validation loss, parameter count): survivors by front and crowding."""

    name = "nsga2"
    crossover = True

    def __init__(self, rng: random.Random):
        self.rng = rng

    @staticmethod
    def _ranks(pool: list) -> dict[int, tuple[int, float]]:
        """id -> (front index, -crowding distance): smaller is better."""
        out: dict[int, tuple[int, float]] = {}
        for r, front in enumerate(tools.sortNondominated(pool, len(pool))):
            tools.emo.assignCrowdingDist(front)
            for ind in front:
                out[id(ind)] = (r, -ind.fitness.crowding_dist)
        return out

    def parents(self, population: list, n: int) -> list:
        """n parents by binary tournament on (front, crowding distance)."""
        ok = [i for i in population if usable(i)]
        if not ok:
            return []
        ranks = self._ranks(ok)
        out = []
        for _ in range(n):
            a, b = self.rng.choice(ok), self.rng.choice(ok)
            out.append(min((a, b), key=lambda i: (*ranks[id(i)], i.key)))
        return out

    def survivors(self, population: list, offspring: list, mu: int) -> list:
        """The NSGA-II environmental selection of mu from the distinct usable individuals."""
        pool = sorted(_unique([i for i in population + offspring if usable(i)]), key=rank_key)
        return tools.selNSGA2(pool, min(mu, len(pool)))


class Aging:
    """Regularized (aging) evolution, Real et al. 2019: a steady-state queue, oldest first.

    Each child is made by mutating the best of `size` cells sampled from the queue (mutation only); it joins
    the queue at the young end and the oldest cell leaves, so the queue keeps the size it had after
    generation 0 (the seed cells and the random population). Failed and diverged children join too and age
    out like any other cell (they are never parents). A cell leaves by age, never by fitness; the seed cells
    therefore age out after the first children, but they stay in the archive and the report as baselines.
    """

    name = "aging"
    crossover = False

    def __init__(self, size: int, rng: random.Random):
        self.size, self.rng = size, rng

    def parents(self, population: list, n: int) -> list:
        """n parents, each the best of a random sample of `size` (usable cells only)."""
        return tournament(population, n, self.size, self.rng)

    def survivors(self, population: list, offspring: list, mu: int) -> list:
        """The queue after the children join: one oldest removed per child (generation 0: all its cells)."""
        if not population:
            return list(offspring)
        queue = list(population) + list(offspring)
        return queue[len(offspring):]


def make_selector(config: Any, rng: random.Random) -> Tournament | NSGA2 | Aging:
    """The selector named by `config.selection`."""
    if config.selection == "tournament":
        return Tournament(config.tournament_size, config.elite, rng)
    if config.selection == "nsga2":
        return NSGA2(rng)
    if config.selection == "aging":
        return Aging(config.tournament_size, rng)
    raise ConfigError(f"selection: unknown value {config.selection!r}; expected one of {list(SELECTIONS)}")
