"""`evonas archive to-optuna RUN FILE` and the run-config key `optuna`: a run as an Optuna study, read back
with Optuna's own API (and served once by optuna-dashboard)."""

from __future__ import annotations

import io
import json
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from evonas.cli.main import cli
from fake_training import FakeResult, Inline
from optuna.storages.journal import JournalFileBackend, JournalStorage

from evonas.cells import node_count, parse
from evonas.errors import ConfigError
from evonas.evaluation import Job
from evonas.evolution.config import RunConfig
from evonas.evolution.loop import Search
from evonas.reporting.optuna_study import signature
from evonas.store.archive import Archive

BUDGET = {"task": "fake", "steps": 1}


class SizeScreen:
    """Prefers small cells, so the logbook records predictions."""

    def score(self, cells):
        return [float(node_count(parse(c))) for c in cells]

    def learn(self, records):
        pass


def cfg(**kw) -> RunConfig:
    base = dict(generations=2, population=5, offspring=4, seed_cells=["tanh_rnn", "lstm", "gru"], seed=1)
    return RunConfig.from_dict({**base, **kw})


def run_search(run: Path, evaluator=None, resume: bool = False, **kw) -> None:
    io_kw = dict(evaluator=evaluator or Inline(timeouts=True), screen=SizeScreen(), budget=BUDGET,
                 stdout=io.StringIO(), stderr=io.StringIO())
    if resume:
        Search.resume(run, **io_kw).run()
    else:
        Search(cfg(**kw), run, **io_kw).run()


def storage(path: Path):
    if path.suffix == ".log":
        return JournalStorage(JournalFileBackend(str(path)))
    return f"sqlite:///{path}"


def load(path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage(path))


def to_optuna(run: Path, path: Path, *extra: str):
    res = CliRunner().invoke(cli, ["archive", "to-optuna", str(run), str(path), *extra])
    return res


def archive_rows(run: Path) -> dict[str, dict]:
    with Archive(run, create=False) as a:
        return {r["key"]: r for r in a.rows()}


def test_one_trial_per_cell_with_states_values_and_features(tmp_path):
    run = tmp_path / "run"
    run_search(run)
    res = to_optuna(run, tmp_path / "study.log")
    assert res.exit_code == 0, res.output
    study = load(tmp_path / "study.log", "run")
    rows = archive_rows(run)
    trials = study.get_trials()
    assert len(trials) == len(rows) and {t.user_attrs["cell"] for t in trials} == set(rows)
    assert [t.user_attrs["cell"] for t in trials] == list(rows)  # in archive order
    seeds = {b["seed"]: b["cell"] for b in json.loads((run / "best_cells.json").read_text())["baselines"]}
    states = set()
    for t in trials:
        r = rows[t.user_attrs["cell"]]
        states.add(t.state.name)
        if r["status"] == "ok" and r["valid_loss"] is not None:
            assert t.state.name == "COMPLETE" and t.values == [r["valid_loss"]]
            assert t.intermediate_values == {1: r["valid_loss"]}
        else:
            assert t.state.name == "FAIL" and t.values is None and t.user_attrs["reason"] == r["reason"]
        assert t.user_attrs["generation"] == r["generation"] and t.user_attrs["written"] == r["cell"]
        assert t.params["nodes"] == node_count(parse(r["key"]))
        assert t.params["seed"] == (r["key"] in seeds.values())
        assert t.params["memory"] == ("Memory(" in r["key"])
        assert t.params["n_MM"] == r["key"].count("MM(")
    assert states == {"COMPLETE", "FAIL"}
    assert {t.user_attrs.get("seed") for t in trials} - {None} == set(seeds)
    assert any("predicted" in t.user_attrs for t in trials if t.user_attrs["generation"] > 0)
    assert study.metric_names == ["valid_loss"]

    # Exporting again writes the same study afresh: no duplicate trials, no second study.
    assert to_optuna(run, tmp_path / "study.log").exit_code == 0
    again = load(tmp_path / "study.log", "run").get_trials()
    assert [signature(t) for t in again] == [signature(t) for t in trials]
    assert optuna.get_all_study_names(storage(tmp_path / "study.log")) == ["run"]


def test_multi_objective_run_in_an_sqlite_file(tmp_path):
    run = tmp_path / "mo"
    run_search(run, selection="nsga2")
    db = tmp_path / "study.db"
    assert to_optuna(run, db, "--study", "nsga").exit_code == 0
    study = load(db, "nsga")
    rows = archive_rows(run)
    assert len(study.directions) == 2 and study.metric_names == ["valid_loss", "params"]
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert done and all(t.values == [rows[t.user_attrs["cell"]]["valid_loss"],
                                     float(rows[t.user_attrs["cell"]]["params"])] for t in done)
    # Another run in the same file is a second study; re-exporting the first leaves it alone.
    run_search(tmp_path / "other", seed=2)
    assert to_optuna(tmp_path / "other", db).exit_code == 0
    assert to_optuna(run, db, "--study", "nsga").exit_code == 0
    assert sorted(optuna.get_all_study_names(f"sqlite:///{db}")) == ["nsga", "other"]
    assert len(load(db, "nsga").trials) == len(rows)


def test_the_search_keeps_the_same_study_up_to_date(tmp_path):
    """`optuna: study.log` in the run config: after a crash and a resume, the study the search kept equals the
    one `to-optuna` writes from the finished run."""
    run = tmp_path / "live"
    with pytest.raises(KeyboardInterrupt):
        run_search(run, Inline(timeouts=True, crash_after=12), optuna="study.log")
    mid = load(run / "study.log", "live").trials
    assert 0 < len(mid) <= 12
    run_search(run, resume=True)
    assert to_optuna(run, tmp_path / "after.log").exit_code == 0
    kept = [signature(t) for t in load(run / "study.log", "live").trials]
    assert kept == [signature(t) for t in load(tmp_path / "after.log", "live").trials]
    assert len(kept) == len(archive_rows(run))
    # The file grew by appends: one study created once, then one line per trial.
    lines = (run / "study.log").read_text().splitlines()
    assert sum(json.loads(x)["op_code"] == 0 for x in lines) == 1


def test_rows_at_several_budgets_are_one_trial_with_intermediate_values(tmp_path):
    """Multi-fidelity: one trial per cell, the row of each budget an intermediate value (step = budget)."""
    run = tmp_path / "rungs"
    cells = {"a": "Tanh(Add(MM(x),MM(h_prev)))", "b": "Sigmoid(Add(MM(x),MM(h_prev)))",
             "c": "ReLU(Add(MM(x),MM(h_prev)))"}
    plan = [("a", 10, "ok", 0.9), ("b", 10, "ok", 0.8), ("c", 10, "ok", 0.7), ("a", 100, "ok", 0.5),
            ("c", 100, "diverged", None), ("d", 100, "ok", 0.6)]
    cells["d"] = "Tanh(Add(MM(x_prev),MM(h_prev)))"
    run.mkdir()
    with Archive(run) as a:
        for name, steps, status, loss in plan:
            job = Job(key=cells[name], cell=cells[name], config={"task": "fake", "steps": steps}, generation=0)
            a.add(job, FakeResult(cells[name], status, "" if loss else "loss is nan", loss, 20))
    assert to_optuna(run, tmp_path / "s.log").exit_code == 0
    by_cell = {t.user_attrs["cell"]: t for t in load(tmp_path / "s.log", "rungs").trials}
    a, b, c, d = (by_cell[cells[k]] for k in "abcd")
    assert len(by_cell) == 4
    assert a.state.name == "COMPLETE" and a.intermediate_values == {10: 0.9, 100: 0.5} and a.value == 0.5
    assert b.state.name == "PRUNED" and b.intermediate_values == {10: 0.8} and b.values is None
    assert c.state.name == "FAIL" and c.intermediate_values == {10: 0.7}
    assert d.state.name == "COMPLETE" and d.intermediate_values == {100: 0.6}


def test_bad_targets_are_one_line_errors(tmp_path):
    run = tmp_path / "run"
    run_search(run, generations=0)
    res = to_optuna(run, tmp_path / "study.txt")
    assert res.exit_code == 2 and "study.txt" in res.output and ".journal" in res.output
    foreign = tmp_path / "mine.db"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE notes (t TEXT)")
    db.commit()
    db.close()
    before = foreign.read_bytes()
    res = to_optuna(run, foreign)
    assert res.exit_code == 2 and "not an Optuna study file" in res.output
    assert foreign.read_bytes() == before
    notes = tmp_path / "notes.log"
    notes.write_text("my own notes")  # no newline at the end: a journal backend would append to the line
    res = to_optuna(run, notes)
    assert res.exit_code == 2 and "not an Optuna study file" in res.output and notes.read_text() == "my own notes"
    res = to_optuna(tmp_path / "nothing", tmp_path / "s.log")
    assert res.exit_code == 2 and "nothing" in res.output
    with pytest.raises(ConfigError, match="study.csv"):
        cfg(optuna="study.csv")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.timeout(120)
def test_optuna_dashboard_serves_the_file_and_follows_the_search(tmp_path):
    run = tmp_path / "dash"
    run_search(run, generations=0, optuna="study.log")
    port = _free_port()
    exe = Path(sys.executable).with_name("optuna-dashboard")
    proc = subprocess.Popen([str(exe), "--host", "127.0.0.1", "--port", str(port), str(run / "study.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                studies = _get(port, "/api/studies")["study_summaries"]
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()[1][-2000:]
                assert time.monotonic() < deadline, "optuna-dashboard did not answer"
                time.sleep(0.3)
        assert [s["study_name"] for s in studies] == ["dash"]
        detail = _get(port, f"/api/studies/{studies[0]['study_id']}")
        assert len(detail["trials"]) == len(archive_rows(run)) == 8
        space = {p["name"] for p in detail["intersection_search_space"]}
        assert {"nodes", "height", "memory", "seed", "n_MM"} <= space  # parallel coordinates, importance
        # The search goes on (one more generation): the running dashboard shows its cells too.
        Search.resume(run, evaluator=Inline(timeouts=True), screen=SizeScreen(), budget=BUDGET,
                      overrides={"generations": 1}, stdout=io.StringIO(), stderr=io.StringIO()).run()
        time.sleep(2.5)  # optuna-dashboard caches a study's trials for 2 s
        detail = _get(port, f"/api/studies/{studies[0]['study_id']}")
        assert len(detail["trials"]) == len(archive_rows(run)) == 12
    finally:
        proc.terminate()
        proc.wait(10)
