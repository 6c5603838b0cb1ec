"""The search loop (DESIGN.md "Search loop"): vary -> screen -> evaluate -> record -> learn -> select -> checkpoint.

Generation 0 trains the seed cells (baselines from the cell library) and a ramped half-and-half population;
generations 1..N breed offspring from the survivors. The state after each generation is checkpointed, so a
stopped run continues with `Search.resume(run_dir)`: it replays the interrupted generation from the saved
RNG state, and every evaluation already in the archive is looked up instead of trained again. Deduplication
only counts archive rows of earlier generations, so a replayed generation chooses exactly the same cells.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from pathlib import Path
from typing import IO, Any

from evonas.cells import Node, canonical_text, check, parse, to_text
from evonas.errors import CellError, CellSyntaxError, CheckpointError, ConfigError, EvonasError
from evonas.evaluation import Evaluator, Job
from evonas.evaluation.factory import make_evaluator
from evonas.evolution import screen as scr
from evonas.evolution.config import RunConfig
from evonas.evolution.genome import make_individual, to_node
from evonas.evolution.operators import breed
from evonas.evolution.progress import Progress
from evonas.evolution.select import HallOfFame, rank_key, set_fitness, usable
from evonas.evolution.toolbox import make_toolbox
from evonas.store.archive import Archive, json_safe
from evonas.store.checkpoint import CHECKPOINT, PREVIOUS, capture_rng, load_checkpoint, restore_rng, save_checkpoint
from evonas.store.lock import holding_run_lock
from evonas.store.runlog import (
    CONFIG_COPY,
    append_logbook,
    best_cells,
    rewrite_logbook,
    write_best_cells,
    write_config,
)


def resolve_seed(name: str) -> tuple[str, Node]:
    """A seed given as a cell-library name (`lstm`) or as cell text; ConfigError when it is neither."""
    from evonas.cells import library

    try:
        return name, library.resolve(name)
    except (CellSyntaxError, CellError) as e:
        raise ConfigError(f"seed_cells: {name!r}: {e}") from None


class Search:
    """One run of evolution in a run folder (see the module docstring)."""

    def __init__(self, config: RunConfig, run_dir: str | Path, evaluator: Evaluator | None = None,
                 screen: Any = None, budget: dict | None = None, stdout: IO[str] | None = None,
                 stderr: IO[str] | None = None):
        self.cfg = config
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(config.seed)
        self.tb = make_toolbox(config, self.rng)
        self.selector = self.tb.selector()
        self.filters = config.filter_config()
        self.seed_nodes = [resolve_seed(name) for name in config.seed_cells]  # bad names fail before any work
        self.budget = budget if budget is not None else config.train_dict()
        self.screen = screen
        self._evaluator, self._owns_evaluator = evaluator, evaluator is None
        self.stdout, self.stderr = stdout, stderr
        write_config(self.dir, config.to_dict())  # first, so that a run killed at any point can be resumed
        self.archive = Archive(self.dir)
        self.population: list = []
        self.hof = HallOfFame(config.hof_size)
        self.logbook: list[dict] = []
        self.seeds: dict[str, str] = {}
        self.next_gen = 0
        self.elapsed = 0.0
        self.resumed = False

    # ------------------------------------------------------------ resume

    @classmethod
    def resume(cls, run_dir: str | Path, evaluator: Evaluator | None = None, screen: Any = None,
               budget: dict | None = None, overrides: dict | None = None, **kw: Any) -> Search:
        """Reopen a stopped run: restore the last checkpoint, or restart generation 0 when there is none yet."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise CheckpointError(f"no run folder at {run_dir}")
        has_checkpoint = (run_dir / CHECKPOINT).exists() or (run_dir / PREVIOUS).exists()
        if has_checkpoint or not (run_dir / CONFIG_COPY).exists():
            # Bad checkpoint files are an error, never a silent restart: that would rewind the run.
            state: dict | None = load_checkpoint(run_dir)
        else:
            state = None  # stopped during generation 0: start over, looking results up in the archive
        cfg_dict = state["config"] if state else RunConfig.load(run_dir / CONFIG_COPY).to_dict()
        for k, v in (overrides or {}).items():
            if v is not None:
                cfg_dict[k] = v
        try:
            cfg = RunConfig.from_dict(cfg_dict, where=f"{run_dir} config")
        except ConfigError as e:
            source = "checkpoint" if state else CONFIG_COPY
            raise ConfigError(f"config of the run in {run_dir} ({source} or overrides): {e}") from None
        search = cls(cfg, run_dir, evaluator, screen, budget, **kw)
        search.resumed = True
        if state:
            search._restore(state)
        return search

    def _individual(self, d: dict):
        ind = make_individual(check(parse(d["cell"])), self.tb.pset)
        set_fitness(ind, *(d.get("fitness") or (None, None)))
        return ind

    def _restore(self, state: dict) -> None:
        try:
            self.population = [self._individual(d) for d in state["population"]]
            self.hof.items = [self._individual(d) for d in state["hall_of_fame"]]
            self.logbook = list(state["logbook"])
            self.seeds = dict(state["seeds"])
            self.next_gen = int(state["next_gen"])
            self.elapsed = float(state.get("elapsed", 0.0))
            restore_rng(state["rng"], self.rng)
        except (KeyError, TypeError, ValueError, CellSyntaxError, CellError, CheckpointError) as e:
            raise CheckpointError(f"checkpoint in {self.dir} is incomplete: {type(e).__name__}: {e}") from None
        rewrite_logbook(self.dir, self.logbook)

    def _state(self) -> dict:
        def dump(ind) -> dict:
            fit = list(ind.fitness.values) if usable(ind) else None
            return {"cell": _written(ind), "key": ind.key, "fitness": fit}

        return {"config": self.cfg.to_dict(), "next_gen": self.next_gen,
                "population": [dump(i) for i in self.population], "hall_of_fame": [dump(i) for i in self.hof],
                "logbook": self.logbook, "seeds": self.seeds, "rng": capture_rng(self.rng),
                "elapsed": self.progress.elapsed() if hasattr(self, "progress") else self.elapsed}

    # ------------------------------------------------------------ the run

    @property
    def evaluator(self) -> Evaluator:
        """The evaluator (created from the config on first use when none was given)."""
        if self._evaluator is None:
            c = self.cfg
            self._evaluator = make_evaluator(c.backend, c.device, c.workers, c.eval_timeout, c.train.get("threads"),
                                             c.ray_address, c.evals_per_gpu)
        return self._evaluator

    def total_evaluations(self) -> int:
        """Planned evaluations of the whole run (seeds + initial population + offspring per generation)."""
        return len(self.cfg.seed_cells) + self.cfg.population + self.cfg.generations * self.cfg.offspring

    @holding_run_lock
    def run(self) -> dict:
        """Run (or continue) the search to the last generation; returns the best-cells summary."""
        rows = self.archive.rows()
        best = min((r["valid_loss"] for r in rows if r["status"] == "ok" and r["valid_loss"] is not None),
                   default=None)
        done = sum(e["trained"] for e in self.logbook)
        fails = sum(e["failures"] for e in self.logbook)
        self.progress = Progress(self.total_evaluations(), self.stderr, done, best, fails, self.elapsed)
        try:
            if self.screen is not None and self.resumed and self.next_gen > 0:
                scr.on_resume(self.screen, self._records(before=self.next_gen))
            while self.next_gen <= self.cfg.generations:
                self._generation(self.next_gen)
            return best_cells(self.archive.rows(), self.cfg.best_k, self.seeds)
        finally:
            self.progress.finish()
            self.close()

    def _records(self, before: int) -> list[dict]:
        return [r for r in self.archive.to_records() if r["generation"] < before]

    def _generation(self, g: int) -> None:
        t0 = time.monotonic()
        self.progress.gen = g
        seen = {r["key"] for r in self.archive.rows() if r["generation"] < g}
        info: dict[str, Any] = {}
        if g == 0:
            chosen, predicted = self._initial(seen), None
        else:
            chosen, predicted, info = self._offspring(g, seen)
        results, reused = self._evaluate(chosen, g)
        for ind in chosen:
            m = results[ind.key]
            set_fitness(ind, m.get("valid_loss") if m.get("status") == "ok" else None, m.get("params"))
        tau = None
        if predicted is not None:
            tau = scr.kendall_tau(predicted, [results[i.key].get("valid_loss") for i in chosen])
            info["predicted"] = {i.key: p for i, p in zip(chosen, predicted, strict=True)}  # for `evonas report`
        if self.screen is not None:
            try:
                scr.learn(self.screen, self._records(before=g + 1))
            except EvonasError as e:  # a screen that cannot refit keeps its old state; the search goes on
                info["screen_error"] = str(e)
        parents = [i for i in chosen if getattr(i, "in_pset", True)]
        if g == 0:
            self.population = self.selector.survivors([], parents, self.cfg.population)
        else:
            self.population = self.selector.survivors(self.population, parents, self.cfg.population)
        self.hof.update(parents)
        losses = sorted(results[i.key]["valid_loss"] for i in chosen if usable(i))
        entry = {"gen": g, "trained": len(chosen), "reused": reused,
                 "failures": sum(results[i.key].get("status") != "ok" for i in chosen),
                 "best": losses[0] if losses else None, "median": statistics.median(losses) if losses else None,
                 "best_ever": rank_key(self.hof.items[0])[0] if len(self.hof) else None,
                 "tau": tau, "seconds": round(time.monotonic() - t0, 2), **info}
        self.logbook.append(entry)
        self.next_gen = g + 1
        write_best_cells(self.dir, best_cells(self.archive.rows(), self.cfg.best_k, self.seeds))
        save_checkpoint(self.dir, json_safe(self._state()))
        append_logbook(self.dir, entry, self.stdout)

    def _initial(self, seen: set[str]) -> list:
        """Generation 0: the seed cells (any operator set, any size) and a random population under the filters."""
        out, keys = [], set()
        for label, node in self.seed_nodes:
            key = canonical_text(node)
            self.seeds[label] = key
            if key in keys:  # two names for one architecture (e.g. mgu and gru): train it once
                continue
            try:
                ind = make_individual(node, self.tb.pset)
            except ConfigError:  # an operator outside this run's set: a baseline only, never a parent
                ind = _Baseline(node)
                ind.in_pset = False
            keys.add(key)
            out.append(ind)
        fresh = self.tb.population(self.cfg.population, exclude=keys | seen)
        return out + fresh

    def _offspring(self, g: int, seen: set[str]) -> tuple[list, list[float] | None, dict]:
        """Vary the survivors into screen_factor x offspring candidates, then screen them down to `offspring`."""
        seen = seen | {i.key for i in self.population}
        parents = self.selector.parents(self.population, max(len(self.population), 2))
        n = self.cfg.offspring
        cands = breed(self.tb, parents, n * self.cfg.screen_factor, self.filters, seen, self.rng)
        if not cands:
            return [], None, {"candidates": 0}
        keys = [c.key for c in cands]
        scores = scr.clean_scores(self.screen.score(keys), len(keys)) if self.screen is not None else None
        if scores is not None and not all(math.isinf(v) for v in scores):  # an unfitted screen says nothing
            idx = scr.pick(keys, scores, n, self.cfg.explore_share, self.rng)
            return [cands[i] for i in idx], [scores[i] for i in idx], {"candidates": len(cands)}
        idx = scr.random_subset(len(cands), n, self.rng)
        return [cands[i] for i in idx], None, {"candidates": len(cands)}

    def _evaluate(self, inds: list, g: int) -> tuple[dict[str, dict], int]:
        """Metrics (EvalResult dicts) per key: archived cells are looked up, the rest trained and recorded."""
        results: dict[str, dict] = {}
        jobs, reused = [], 0
        for ind in inds:
            row = self.archive.get(ind.key)
            if row is not None:
                results[ind.key] = row["metrics"]
                reused += 1
                self.progress.record(row["metrics"], trained=False)
            else:
                jobs.append(Job(key=ind.key, cell=_written(ind), config=self.budget, generation=g))

        def on_result(job: Job, result: Any) -> None:
            self.archive.add(job, result)
            results[job.key] = json_safe(result.to_dict())
            self.progress.record(results[job.key], trained=True)

        if jobs:
            self.evaluator.run(jobs, on_result)
        return results, reused

    def close(self) -> None:
        """Release the evaluator (when this search created it) and the archive."""
        if self._owns_evaluator and self._evaluator is not None:
            self._evaluator.close()
            self._evaluator = None
        self.archive.close()


class _Baseline(list):
    """A seed cell whose operators are outside the run's set: trained and recorded, never bred from."""

    def __init__(self, node: Node):
        super().__init__()
        self.node = node
        self.key = canonical_text(node)
        from evonas.evolution.genome import Fitness

        self.fitness = Fitness()


def _written(ind: Any) -> str:
    """The cell text of an individual as written (its tree order, which variation depends on)."""
    return to_text(ind.node) if isinstance(ind, _Baseline) else to_text(to_node(ind))
