"""Multi-fidelity search: successive halving inside each generation, learning-rate arms, fitness by highest
rung, seeds at the top rung, continuation from saved state, resume after a kill inside a rung."""

from __future__ import annotations

import io
import json
from collections import Counter

import pytest
from fake_training import Inline

from evonas.errors import ConfigError
from evonas.evolution.config import RunConfig
from evonas.evolution.loop import Search
from evonas.store.archive import Archive, fitness_rows, rung

BUDGET = {"task": "fake", "steps": 1}
RUNGS = {"rungs": [1, 3, 9], "eta": 3}


def cfg(**kw) -> RunConfig:
    base = dict(generations=2, population=9, offspring=6, seed_cells=["tanh_rnn", "lstm"], seed=2, fidelity=RUNGS)
    return RunConfig.from_dict({**base, **kw})


def run_search(config, run, evaluator=None, resume=False):
    kw = dict(evaluator=evaluator or Inline(), budget=BUDGET, stdout=io.StringIO(), stderr=io.StringIO())
    s = Search.resume(run, **kw) if resume else Search(config, run, **kw)
    s.run()
    return s


def rows(run) -> list[dict]:
    with Archive(run, create=False) as a:
        return a.rows()


def test_successive_halving_trains_fewer_cells_at_each_rung_and_seeds_reach_the_top(tmp_path):
    ev = Inline()
    run_search(cfg(), tmp_path, ev)
    rs = rows(tmp_path)
    per = Counter((r["generation"], rung(r)) for r in rs)
    # generation 0: 2 seeds + 9 random = 11 arms; 11 // 3 = 3 go on (plus seeds not among them); then 1 (+ seeds)
    assert per[(0, 0)] == 11 and 3 <= per[(0, 1)] <= 5 and 1 <= per[(0, 2)] <= 3
    for g in (1, 2):  # 6 offspring: 2 promoted to rung 1, 1 to rung 2
        assert (per[(g, 0)], per[(g, 1)], per[(g, 2)]) == (6, 2, 1)
    seeds = json.loads((tmp_path / "best_cells.json").read_text())["baselines"]
    assert {b["seed"] for b in seeds} == {"tanh_rnn", "lstm"}
    assert all(b["rung"] == 2 and b["budget"] == {"steps": 9} for b in seeds if b["status"] == "ok")
    # each row's budget is its rung's
    assert all(r["budget"]["steps"] == RUNGS["rungs"][rung(r)] for r in rs)


def test_a_promoted_cell_continues_from_its_saved_state(tmp_path):
    ev = Inline()
    run_search(cfg(generations=1), tmp_path, ev)
    by_rung = {(j.key, j.rung): j for j in ev.jobs}
    for j in ev.jobs:
        if j.rung:
            assert j.state_in == by_rung[(j.key, j.rung - 1)].state_out, "a promotion must continue, not restart"
        else:
            assert j.state_in is None
        assert (j.state_out is None) == (j.rung == 2)  # the top rung saves nothing
    assert not (tmp_path / "states").exists()  # states live only while their generation runs


def test_promotion_takes_the_best_of_each_rung_and_fitness_is_the_highest_rung(tmp_path):
    run_search(cfg(seed_cells=[]), tmp_path)
    rs = rows(tmp_path)
    for g in (1, 2):
        r0 = sorted((r for r in rs if r["generation"] == g and rung(r) == 0 and r["valid_loss"] is not None),
                    key=lambda r: r["valid_loss"])
        promoted = {r["key"] for r in rs if r["generation"] == g and rung(r) == 1}
        assert promoted == {r["key"] for r in r0[:2]}
    best = json.loads((tmp_path / "best_cells.json").read_text())["best"]
    assert best[0]["rung"] == 2 and [b["rung"] for b in best] == sorted((b["rung"] for b in best), reverse=True)
    assert [r["key"] for r in fitness_rows(rs) if r["status"] == "ok"][:len(best)] == [b["cell"] for b in best]
    log = [json.loads(line) for line in (tmp_path / "logbook.jsonl").read_text().splitlines()]
    assert [x["rung"] for x in log[1]["rungs"]] == [0, 1, 2] and len(log[1]["rung_tau"]) == 2


def test_learning_rates_are_arms_of_rung_zero(tmp_path):
    ev = Inline()
    run_search(cfg(generations=1, seed_cells=["lstm"], lrs=[0.01, 0.003]), tmp_path, ev)
    rs = rows(tmp_path)
    zero = Counter(r["key"] for r in rs if rung(r) == 0)
    assert set(zero.values()) == {2}  # every cell at both learning rates
    assert {r["budget"]["lr"] for r in rs} == {0.01, 0.003}


@pytest.mark.parametrize("crash_after", [5, 12, 14, 17, 25])
def test_kill_inside_a_rung_and_resume_loses_nothing_and_trains_nothing_twice(tmp_path, crash_after):
    whole = Inline()
    run_search(cfg(), tmp_path / "a", whole)
    first = Inline(crash_after=crash_after)
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg(), tmp_path / "b", first)
    second = Inline()
    run_search(None, tmp_path / "b", second, resume=True)

    def table(run):
        return sorted((r["key"], rung(r), r["valid_loss"], r["generation"]) for r in rows(run))

    assert table(tmp_path / "a") == table(tmp_path / "b")
    done = {(j.key, j.rung) for j in first.jobs}
    assert not done & {(j.key, j.rung) for j in second.jobs}, "a (cell, rung) was trained twice"
    assert len(first.jobs) + len(second.jobs) == len(whole.jobs)


def test_bad_fidelity_settings_are_one_line_errors():
    for bad, match in [({"rungs": [3, 1]}, "increasing"), ({"rungs": [1, 3], "eta": 1}, "eta"),
                       ({"rungs": [1], "unit": "hours"}, "unit"), ({"rung": [1]}, "keys rungs")]:
        with pytest.raises(ConfigError, match=match):
            RunConfig.from_dict({"fidelity": bad})
    with pytest.raises(ConfigError, match="lrs"):
        RunConfig.from_dict({"lrs": [0.01, -1]})
    with pytest.raises(ConfigError, match="match_params"):
        RunConfig.from_dict({"match_params": "no_such_cell"})


def test_the_rung_unit_is_the_tasks_own_unless_said():
    assert RunConfig.from_dict({"task": "music", "fidelity": {"rungs": [2, 6]}}).fidelity_unit() == "epochs"
    assert RunConfig.from_dict({"fidelity": {"rungs": [2, 6]}}).fidelity_unit() == "steps"  # synthetic
    assert RunConfig.from_dict({"task": "music", "train": {"steps": 9}, "fidelity": {"rungs": [2]}}).fidelity_unit() \
        == "steps"
    budgets = RunConfig.from_dict({"task": "music", "data": "x.json", "fidelity": {"rungs": [2, 6]}}).rung_budgets(
        {"task": "music", "steps": None, "epochs": 30})
    assert [(b["epochs"], b["steps"]) for b in budgets] == [(2, None), (6, None)]
