"""The search loop (DESIGN.md "Search loop"): vary -> screen -> evaluate -> record -> learn -> select -> checkpoint.

Generation 0 trains the seed cells (baselines from the cell library) and a ramped half-and-half population;
generations 1..N breed offspring from the survivors. The state after each generation is checkpointed, so a
stopped run continues with `Search.resume(run_dir)`: it replays the interrupted generation from the saved
RNG state, and every evaluation already in the archive is looked up instead of trained again. Deduplication
only counts archive rows of earlier generations, so a replayed generation chooses exactly the same cells.
"""

from __future__ import annotations

import functools
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import IO, Any

from evonas.cells import Node, canonical_text, check, parse, to_text
from evonas.errors import CellError, CellSyntaxError, CheckpointError, ConfigError, EvonasError
from evonas.evaluation import Evaluator, Job, failed_result
from evonas.evolution import curves
from evonas.evolution import screen as scr
from evonas.evolution.config import RunConfig
from evonas.evolution.genome import make_individual, to_node
from evonas.evolution.operators import breed
from evonas.evolution.progress import Progress
from evonas.evolution.select import HallOfFame, rank_key, set_fitness, usable
from evonas.evolution.toolbox import make_toolbox
from evonas.reporting.optuna_study import export_study
from evonas.store.archive import Archive, budget_json, json_safe
from evonas.store.checkpoint import CHECKPOINT, PREVIOUS, capture_rng, load_checkpoint, restore_rng, save_checkpoint
from evonas.store.lock import holding_run_lock
from evonas.store.runlog import (
    CONFIG_COPY,
    WORKERS_LOG,
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
        set_fitness(ind, *(d.get("fitness") or (None, None)), rung=d.get("rung", 0))
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
            return {"cell": _written(ind), "key": ind.key, "fitness": fit, "rung": getattr(ind, "rung", 0)}

        return {"config": self.cfg.to_dict(), "next_gen": self.next_gen,
                "population": [dump(i) for i in self.population], "hall_of_fame": [dump(i) for i in self.hof],
                "logbook": self.logbook, "seeds": self.seeds, "rng": capture_rng(self.rng),
                "elapsed": self.progress.elapsed() if hasattr(self, "progress") else self.elapsed}

    # ------------------------------------------------------------ the run

    @property
    def evaluator(self) -> Evaluator:
        """The evaluator (created from the config on first use when none was given)."""
        if self._evaluator is None:
            self._evaluator = self.cfg.evaluator(self.dir / WORKERS_LOG)
        return self._evaluator

    def total_evaluations(self) -> int:
        """Planned training jobs of the whole run: every (cell, lr) arm at rung 0, then 1/eta per higher rung."""
        def jobs(n_cells: int) -> int:
            alive, total = n_cells * len(self.cfg.lrs or [None]), 0
            for _ in range(len((self.cfg.fidelity or {}).get("rungs", [0]))):
                total += alive
                alive = max(1, alive // self.cfg.eta())
            return total

        return jobs(len(self.cfg.seed_cells) + self.cfg.population) + self.cfg.generations * jobs(self.cfg.offspring)

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
            if self.cfg.confirm is not None:  # retrain the best and the seed cells with fresh paired seeds
                from evonas.evolution.confirm import ConfirmSettings, confirm

                self.progress.finish()
                confirm(self.dir, ConfirmSettings.from_dict(self.cfg.confirm, self.cfg.match_params),
                        evaluator=self.evaluator, out=self.stderr if self.stderr is not None else sys.stderr)
            return best_cells(self.archive.rows(), self.cfg.best_k, self.seeds)
        finally:
            self.progress.finish()
            self.close()

    def _records(self, before: int) -> list[dict]:
        """What the screen learns from: every (cell, rung) result of the generations before `before`."""
        return [r for r in self.archive.to_records(rungs="all") if r["generation"] < before]

    def _generation(self, g: int) -> None:
        t0 = time.monotonic()
        self.progress.gen = g
        seen = {r["key"] for r in self.archive.rows() if r["generation"] < g}
        info: dict[str, Any] = {}
        if g == 0:
            chosen, predicted = self._initial(seen), None
        else:
            chosen, predicted, info = self._offspring(g, seen)
        results, first, reused, rung_info = self._evaluate(chosen, g)
        info.update(rung_info)
        for ind in chosen:
            m = results[ind.key]
            set_fitness(ind, m.get("valid_loss") if m.get("status") == "ok" else None, m.get("params"), m["rung"])
        tau = None
        if predicted is not None:  # the screen predicts the first rung's result (the one every cell gets)
            info.update(self._screen_taus(chosen, predicted, first, info.pop("random_sample", [])))
            tau = info.pop("tau")
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
        ranked = sorted((i for i in chosen if usable(i)), key=rank_key)  # highest rung first, then loss
        first_losses = sorted(v for i in chosen if (v := _loss(first[i.key])) < math.inf)
        entry = {"gen": g, "trained": len(chosen), "reused": reused,
                 "failures": sum(results[i.key].get("status") != "ok" for i in chosen),
                 "best": ranked[0].fitness.values[0] if ranked else None,
                 "median": statistics.median(first_losses) if first_losses else None,  # of the first rung
                 "best_ever": self.hof.items[0].fitness.values[0] if len(self.hof) else None,
                 "tau": tau, "seconds": round(time.monotonic() - t0, 2), **info}
        self.logbook.append(entry)
        self.next_gen = g + 1
        write_best_cells(self.dir, best_cells(self.archive.rows(), self.cfg.best_k, self.seeds))
        save_checkpoint(self.dir, json_safe(self._state()))
        append_logbook(self.dir, entry, self.stdout)
        self.progress.summary(entry)
        if self.cfg.optuna:  # the run as an Optuna study (optuna-dashboard), brought up to date
            try:
                export_study(self.dir, self.dir / self.cfg.optuna, fresh=False)
            except EvonasError as e:  # a dashboard file that cannot be written never stops the search
                self.progress.note(f"warning: Optuna study not updated: {e}")

    def _screen_taus(self, chosen: list, predicted: list[float], first: dict, sample: list[str]) -> dict:
        """The screen judged on this generation's first-rung results: tau over the successful cells, tau with
        failures tied worst (`tau_all`), tau on the uniformly drawn candidates alone (`tau_random`: the screen
        against chance, unbiased by its own choice) and pooled over the random samples of the run so far."""
        measured = [first[i.key].get("valid_loss") if first[i.key].get("status") == "ok" else None for i in chosen]
        pred = {i.key: p for i, p in zip(chosen, predicted, strict=True)}
        rand = [k for k in sample if k in pred]
        pooled = [(p, m) for e in self.logbook for k, (p, m) in (e.get("random_pairs") or {}).items()]
        pairs = {k: (pred[k], measured[[i.key for i in chosen].index(k)]) for k in rand}
        pooled += list(pairs.values())
        return {"tau": scr.kendall_tau(predicted, measured),
                "tau_all": scr.kendall_tau(predicted, measured, failures_worst=True),
                "tau_random": scr.kendall_tau([p for p, _ in pairs.values()], [m for _, m in pairs.values()]),
                "tau_random_run": scr.kendall_tau([p for p, _ in pooled], [m for _, m in pooled]),
                "random_pairs": pairs, "predicted": pred}  # `predicted` is for `evonas report`

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
            best, sample = scr.pick_split(keys, scores, n, self.cfg.explore_share, self.rng, self.cfg.random_share)
            idx = best + sample
            info = {"candidates": len(cands), "random_sample": [keys[i] for i in sample]}
            return [cands[i] for i in idx], [scores[i] for i in idx], info
        idx = scr.random_subset(len(cands), n, self.rng)
        return [cands[i] for i in idx], None, {"candidates": len(cands)}

    def _evaluate(self, inds: list, g: int) -> tuple[dict[str, dict], dict[str, dict], int, dict]:
        """Successive halving over the generation's (cell, learning rate) arms (DESIGN "Search loop", step 3).

        Every arm trains at rung 0; the best 1/eta of each rung (by validation loss) continue from their saved
        training state to the next rung; seed cells always reach the top rung. Each (cell, rung, lr) result is
        an archive row; rows already archived are looked up, never trained again. Returns per key the metrics
        its fitness comes from (highest rung reached, best arm there, with "rung"), per key its best rung-0
        metrics, how many results were looked up, and the logbook's rung summary.
        """
        rungs, eta = self.cfg.rung_budgets(self.budget), self.cfg.eta()
        seed_keys = set(self.seeds.values())
        arms = [(ind, lr) for ind in inds for lr in (self.cfg.lrs or [None])]
        base: dict[int, dict | None] = {a: self._arm_budget(ind, lr) for a, (ind, lr) in enumerate(arms)}
        res: dict[int, dict[int, dict]] = {a: {} for a in range(len(arms))}
        reused = 0
        for a, (ind, lr) in enumerate(arms):  # a cell that cannot be sized to the target is a failed result
            if isinstance(base[a], str):
                job = Job(key=ind.key, cell=_written(ind), generation=g,
                          config={**rungs[0], "match_params": str(self.cfg.match_params)})
                row = self.archive.find(ind.key, 0, lr)
                if row is None:
                    self.archive.add(job, failed_result(job, base[a]))
                    row = self.archive.find(ind.key, 0, lr)
                res[a][0] = {**row["metrics"], "rung": 0}
        alive = [a for a in range(len(arms)) if not isinstance(base[a], str)]
        summary: list[dict] = []
        taus: list[float | None] = []
        predictor = (curves.from_archive([w for w in self.archive.rows() if w["generation"] < g], len(rungs) - 1)
                     if self.cfg.promote() == "curve" and len(rungs) > 1 else None)
        for r, budget in enumerate(rungs):
            jobs: list[Job] = []
            arm_of: dict[tuple, int] = {}
            for a in alive:
                ind, lr = arms[a]
                cfg = {**budget, **base[a]}
                row = self.archive.find(ind.key, r, lr)
                if row is not None:
                    res[a][r] = {**row["metrics"], "rung": r}
                    reused += 1
                    self.progress.record(row["metrics"], trained=False)
                    continue
                prev = self._state_file(ind.key, lr, r - 1) if r else None
                arm_of[(ind.key, budget_json(cfg))] = a
                jobs.append(Job(key=ind.key, cell=_written(ind), config=cfg, generation=g, rung=r,
                                state_in=str(prev) if prev is not None and prev.exists() else None,
                                state_out=str(self._state_file(ind.key, lr, r)) if r + 1 < len(rungs) else None))

            if jobs:
                self.evaluator.run(jobs, functools.partial(self._on_result, res, arm_of))
            losses = [_loss(res[a][r]) for a in alive]
            summary.append({"rung": r, "budget": budget.get(self.cfg.fidelity_unit()) if self.cfg.fidelity else None,
                            "unit": self.cfg.fidelity_unit(),
                            "trained": len(alive), "best": min(losses, default=None)})
            if r:
                went_on = [a for a in alive if math.isfinite(_loss(res[a][r - 1]))]
                taus.append(scr.kendall_tau([_loss(res[a][r - 1]) for a in went_on],
                                            [res[a][r].get("valid_loss") for a in went_on]))
            if r + 1 == len(rungs):
                break
            ok = [a for a in alive if math.isfinite(_loss(res[a][r]))]
            rank = {a: _loss(res[a][r]) for a in ok}
            if r == 0 and predictor is not None and ok:  # rung 0 ranked by the expected top-rung loss
                rank = dict(zip(ok, predictor.predict([curves.features(arms[a][0].key, _loss(res[a][0]),
                                                                       res[a][0].get("curve") or [])
                                                       for a in ok]), strict=True))
                summary[-1]["promoted_by"] = f"curve ({predictor.n} cells)"
            ok.sort(key=lambda a: (rank[a], arms[a][0].key, str(arms[a][1])))
            keep = set(ok[: max(1, len(alive) // eta)]) | {a for a in ok if arms[a][0].key in seed_keys}
            alive = [a for a in alive if a in keep]
        results, first = {}, {}
        for ind in inds:
            mine = [res[a] for a, (i, _) in enumerate(arms) if i is ind]
            first[ind.key] = min((m[0] for m in mine), key=_loss)
            every = [m for arm in mine for m in arm.values()]  # a cell's fitness: highest rung with a real loss
            results[ind.key] = min(every, key=lambda m: (-m["rung"] if math.isfinite(_loss(m)) else 1, _loss(m)))
        self._drop_states()
        info = {"rungs": summary, "rung_tau": taus} if len(rungs) > 1 or self.cfg.lrs else {}
        return results, first, reused, info

    def _on_result(self, res: dict, arm_of: dict, job: Job, result: Any) -> None:
        """Record one (cell, rung) result as it arrives: archive row first, then the generation's table."""
        self.archive.add(job, result)
        m = json_safe(result.to_dict())
        res[arm_of[(job.key, budget_json(job.config))]][job.rung] = {**m, "rung": job.rung}
        self.progress.record(m, trained=True)

    def _arm_budget(self, ind: Any, lr: float | None) -> dict | str:
        """Settings of one arm on top of the rung budget: its lr and (with match_params) its hidden size;
        a string (the reason) when the cell cannot be sized within 5% of the target."""
        out: dict = {} if lr is None else {"lr": float(lr)}
        if self.cfg.match_params is None:
            return out
        from evonas.training.sizing import match_hidden

        matched = match_hidden(_written(ind), self.budget, self.cfg.match_params)
        return matched if isinstance(matched, str) else {**out, "hidden": matched}

    def _state_file(self, key: str, lr: float | None, rung: int) -> Path:
        """Where an arm's training state after `rung` lives while its generation runs."""
        import hashlib

        digest = hashlib.sha1(f"{key}|{lr}".encode()).hexdigest()[:16]
        return self.dir / "states" / f"{digest}-r{rung}.pt"

    def _drop_states(self) -> None:
        """Training states are only needed inside a generation (a replayed generation recreates them)."""
        import shutil

        shutil.rmtree(self.dir / "states", ignore_errors=True)

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


def _loss(m: dict) -> float:
    """Validation loss of a result for ranking (inf unless ok with a finite loss)."""
    v = m.get("valid_loss")
    return float(v) if m.get("status") == "ok" and v is not None and math.isfinite(v) else math.inf


def _written(ind: Any) -> str:
    """The cell text of an individual as written (its tree order, which variation depends on)."""
    return to_text(ind.node) if isinstance(ind, _Baseline) else to_text(to_node(ind))
