"""The search loop in one process, with a fast deterministic stand-in for training (no torch)."""

from __future__ import annotations

import io
import json
import sqlite3

import pytest
from fake_training import Inline

from evonas.cells import node_count, parse, passes_filters
from evonas.errors import ConfigError
from evonas.evolution.config import RunConfig
from evonas.evolution.loop import Search
from evonas.store.checkpoint import load_checkpoint

BUDGET = {"task": "fake", "steps": 1}


class SizeScreen:
    """A screen that prefers small cells and records what it was asked and taught."""

    def __init__(self):
        self.scored: list[list[str]] = []
        self.learned: list[int] = []

    def score(self, cells):
        self.scored.append(list(cells))
        return [float("nan") if i == 0 else float(node_count(parse(c))) for i, c in enumerate(cells)]

    def learn(self, records):
        self.learned.append(len(records))


def cfg(**kw) -> RunConfig:
    base = dict(generations=4, population=6, offspring=5, seed_cells=["tanh_rnn", "lstm", "gru"], seed=3)
    return RunConfig.from_dict({**base, **kw})


def rows(run) -> list[tuple]:
    db = sqlite3.connect(str(run / "archive.sqlite"))
    try:
        return sorted(db.execute("SELECT key, generation, status, valid_loss, params FROM evaluations").fetchall())
    finally:
        db.close()


def search(config, run, evaluator=None, screen=None, resume=False):
    kw = dict(evaluator=evaluator or Inline(), screen=screen, budget=BUDGET, stdout=io.StringIO(),
              stderr=io.StringIO())
    return Search.resume(run, **kw) if resume else Search(config, run, **kw)


def test_run_folder_is_complete(tmp_path):
    ev = Inline()
    c = cfg(filters={"max_nodes": 21})  # Schrimpf et al.'s limit: the LSTM seed (31 nodes) breaks it
    s = search(c, tmp_path, ev)
    best = s.run()
    names = {p.name for p in tmp_path.iterdir()}
    assert {"archive.sqlite", "checkpoint.json", "checkpoint.prev.json", "logbook.jsonl", "best_cells.json",
            "config.yaml"} <= names
    log = [json.loads(line) for line in (tmp_path / "logbook.jsonl").read_text().splitlines()]
    assert [e["gen"] for e in log] == [0, 1, 2, 3, 4]
    assert {"gen", "trained", "failures", "best", "median", "tau", "seconds"} <= set(log[0])
    assert [line for line in s.stdout.getvalue().splitlines()] == (tmp_path / "logbook.jsonl").read_text().splitlines()
    summaries = [ln for ln in s.stderr.getvalue().splitlines() if "best ever" in ln]
    assert [ln.split("  ")[:2] for ln in summaries] == [["gen 0", "trained 9"]] + [[f"gen {g}", "trained 5"]
                                                                                  for g in range(1, 5)]
    r = rows(tmp_path)
    assert len(r) == len(ev.calls) == 29 and len({k for k, *_ in r}) == 29  # no cell trained twice
    f = c.filter_config()
    for key, gen, *_ in r:
        if gen > 0:
            assert passes_filters(parse(key), f)
    assert {b["seed"] for b in best["baselines"]} == {"tanh_rnn", "lstm", "gru"}
    assert any(node_count(parse(k)) > f.max_nodes for k, *_ in r)  # the LSTM seed exceeds the size filter
    ok = sorted(v for _, _, st, v, _ in r if st == "ok")
    assert best["best"][0]["valid_loss"] == ok[0]
    state = load_checkpoint(tmp_path)
    assert state["next_gen"] == 5 and state["seeds"]["lstm"]
    assert all(p["fitness"] is not None for p in state["population"] + state["hall_of_fame"])
    assert state["hall_of_fame"][0]["fitness"][0] == ok[0]


def test_failed_cells_are_never_parents(tmp_path):
    s = search(cfg(generations=2), tmp_path)
    s.run()
    failed = {k for k, _, st, _, _ in rows(tmp_path) if st != "ok"}
    assert failed
    state = load_checkpoint(tmp_path)
    assert not failed & {p["key"] for p in state["population"] + state["hall_of_fame"]}


def test_screen_picks_best_scored_and_learns(tmp_path):
    screen = SizeScreen()
    s = search(cfg(screen_factor=4, explore_share=0.4, random_share=0.0), tmp_path, screen=screen)
    s.run()
    assert len(screen.scored) == 4 and all(len(c) == 20 for c in screen.scored)
    assert screen.learned == sorted(screen.learned) and len(screen.learned) == 5
    by_gen: dict[int, set[str]] = {}
    for key, gen, *_ in rows(tmp_path):
        by_gen.setdefault(gen, set()).add(key)
    for g, cands in enumerate(screen.scored, start=1):
        sizes = sorted((node_count(parse(c)), c) for c in cands[1:])  # cands[0] scored NaN: worst
        best3 = {c for _, c in sizes[:3]}
        assert best3 <= by_gen[g] and len(by_gen[g]) == 5  # 3 best + 2 explored
    log = [json.loads(line) for line in (tmp_path / "logbook.jsonl").read_text().splitlines()]
    assert log[0]["tau"] is None and all(isinstance(e["tau"], float) for e in log[1:])
    assert all(e["candidates"] == 20 for e in log[1:])


def test_without_screen_trains_a_random_subset(tmp_path):
    search(cfg(generations=1, screen_factor=3), tmp_path).run()
    log = [json.loads(line) for line in (tmp_path / "logbook.jsonl").read_text().splitlines()]
    assert log[1]["candidates"] == 15 and log[1]["trained"] == 5 and log[1]["tau"] is None


@pytest.mark.parametrize("selection", ["tournament", "nsga2", "aging"])
def test_interrupted_run_resumes_to_the_same_archive(tmp_path, selection):
    c = cfg(selection=selection)
    search(c, tmp_path / "a").run()
    first = Inline(crash_after=9 + 5 * 2 + 2)  # stopped two evaluations into generation 3
    with pytest.raises(KeyboardInterrupt):
        search(c, tmp_path / "b", first).run()
    assert load_checkpoint(tmp_path / "b")["next_gen"] == 3
    second = Inline()
    search(None, tmp_path / "b", second, resume=True).run()
    assert rows(tmp_path / "a") == rows(tmp_path / "b")
    assert not set(first.calls) & set(second.calls)  # nothing archived was trained again
    assert len(first.calls) + len(second.calls) == 29

    def log(run):
        entries = [json.loads(line) for line in (run / "logbook.jsonl").read_text().splitlines()]
        return [{k: v for k, v in e.items() if k not in ("seconds", "reused")} for e in entries]

    assert log(tmp_path / "a") == log(tmp_path / "b")
    assert [json.loads(x)["reused"] for x in (tmp_path / "b" / "logbook.jsonl").read_text().splitlines()][3] == 2


def test_resume_during_generation_zero(tmp_path):
    c = cfg(generations=1)
    search(c, tmp_path / "a").run()
    with pytest.raises(KeyboardInterrupt):
        search(c, tmp_path / "b", Inline(crash_after=4)).run()
    assert not (tmp_path / "b" / "checkpoint.json").exists()
    search(None, tmp_path / "b", resume=True).run()
    assert rows(tmp_path / "a") == rows(tmp_path / "b")


def test_seed_outside_operator_set_is_a_baseline_only(tmp_path):
    c = cfg(generations=1, seed_cells=["lstm", "lstm_peephole"])  # peepholes use Diag, not in the core set
    best = search(c, tmp_path).run()
    assert {b["seed"] for b in best["baselines"]} == {"lstm", "lstm_peephole"}
    state = load_checkpoint(tmp_path)
    assert not any("Diag" in p["cell"] for p in state["population"])


def test_unknown_seed_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="seed_cells: 'lstmm'"):
        search(cfg(seed_cells=["lstmm"]), tmp_path).run()


def test_stopped_run_extended_with_more_generations_matches_a_longer_run(tmp_path):
    search(cfg(generations=4), tmp_path / "a").run()
    search(cfg(generations=2), tmp_path / "b").run()
    s = Search.resume(tmp_path / "b", evaluator=Inline(), budget=BUDGET, overrides={"generations": 4},
                      stdout=io.StringIO(), stderr=io.StringIO())
    assert s.next_gen == 3
    s.run()
    assert rows(tmp_path / "a") == rows(tmp_path / "b")


def test_aging_keeps_a_steady_state_queue_in_the_search(tmp_path):
    """Real et al. 2019 in the loop: the queue holds the 9 cells of generation 0 (3 seeds + 6) and keeps that
    size; each generation's 5 children join at the young end (failed ones too) and the 5 oldest leave."""
    s = search(cfg(selection="aging"), tmp_path)
    s.run()
    queue = load_checkpoint(tmp_path)["population"]
    assert len(queue) == 9, [q["cell"] for q in queue]
    db = sqlite3.connect(str(tmp_path / "archive.sqlite"))
    gen = dict(db.execute("SELECT key, generation FROM evaluations").fetchall())
    db.close()
    assert [gen[q["key"]] for q in queue] == [3] * 4 + [4] * 5  # oldest first: the last 9 children, in order
