"""Fault injection into evaluation during a real search loop (local worker processes, real archive).

Cells fail in every way an evaluation can: the job raises, training reports a NaN loss, the worker
exits (`os._exit`) or is SIGKILLed, it hangs past the time limit, or the job function lies (status ok
with a NaN/inf/missing loss, a finite loss on a failed or diverged run). Each is recorded with its
reason, the run goes on to the last generation, and none becomes a parent, survivor or hall-of-fame member.
"""

from __future__ import annotations

import io
import json
import math

import pytest
import reliability_jobs as rj

from evonas.cells import canonical_text, library, parse
from evonas.evaluation import LocalEvaluator
from evonas.evolution.config import RunConfig
from evonas.evolution.loop import Search
from evonas.store.checkpoint import load_checkpoint

TIMEOUT = 3.0
# Seeds that would win if their (fake) results counted: each is given one fault.
SEEDS = {
    "tanh_rnn": "raise", "gru": "nan", "ugrnn": "exit", "highway": "kill", "gru_pytorch": "hang",
    "Tanh(Add(MM(x),MM(Tanh(h_prev))))": "diverged", "ReLU(Add(MM(x),MM(h_prev)))": "ok_nan",
    "Sigmoid(Add(MM(x),MM(h_prev)))": "ok_inf", "Tanh(Add(MM(x),Mult(h_prev,MM(h_prev))))": "ok_neg_inf",
    "Tanh(Add(MM(x),Add(h_prev,MM(h_prev))))": "ok_none",
    "Tanh(Add(MM(x_prev),MM(h_prev)))": "failed_with_loss",
}
REASONS = {"raise": "RuntimeError: injected failure", "nan": "nan", "exit": "worker died (exit code 3)",
           "kill": "SIGKILL", "hang": f"timed out after {TIMEOUT:g} s", "diverged": "exploded",
           "failed_with_loss": "injected"}


def key_of(name: str) -> str:
    node = library.resolve(name)
    return canonical_text(node)


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    """One search of 3 generations where the seeds fail as SEEDS says and one offspring in 3 fails somehow."""
    run = tmp_path_factory.mktemp("faulty") / "run"
    faults = {key_of(name): action for name, action in SEEDS.items()}
    budget = {"task": "fake", "faults": faults, "every": 3}
    cfg = RunConfig.from_dict(dict(generations=3, population=5, offspring=5, seed=11, seed_cells=list(SEEDS),
                                   eval_timeout=TIMEOUT))
    out, err = io.StringIO(), io.StringIO()
    seen: dict[str, set[str]] = {"parents": set(), "survivors": set(), "hof": set()}
    with LocalEvaluator(workers=2, timeout=TIMEOUT, fn=rj.faulty) as ev:
        search = Search(cfg, run, evaluator=ev, budget=budget, stdout=out, stderr=err)
        sel, hof = search.selector, search.hof
        parents, survivors, update = sel.parents, sel.survivors, hof.update

        def watch_parents(pop, n):
            got = parents(pop, n)
            seen["parents"] |= {i.key for i in got}
            return got

        def watch_survivors(pop, offspring, mu):
            got = survivors(pop, offspring, mu)
            seen["survivors"] |= {i.key for i in got}
            return got

        def watch_hof(inds):
            update(inds)
            seen["hof"] |= {i.key for i in hof.items}

        sel.parents, sel.survivors, hof.update = watch_parents, watch_survivors, watch_hof
        best = search.run()
    from evonas.store.archive import Archive

    with Archive(run, create=False) as arch:
        rows = arch.rows()
    return run, faults, rows, best, out.getvalue(), seen


def bad_keys(rows: list[dict]) -> dict[str, str]:
    """key -> action of every row whose evaluation misbehaved (by the same rule the job function used)."""
    out = {}
    for r in rows:
        action = rj.action_for(type("J", (), {"key": r["key"], "config": r["budget"]})())
        if action != "ok":
            out[r["key"]] = action
    return out


def test_every_fault_is_recorded_with_its_reason(faulty_run):
    run, faults, rows, _, _, _ = faulty_run
    by_key = {r["key"]: r for r in rows}
    assert set(faults) <= set(by_key), "a faulty seed was never recorded"
    bad = bad_keys(rows)
    assert set(bad.values()) >= set(SEEDS.values())
    assert len(bad) > len(faults), "no offspring was given a fault"
    for key, action in bad.items():
        r = by_key[key]
        if action.startswith("ok_"):  # the job said ok but gave no finite loss: stored without a loss
            assert r["valid_loss"] is None and r["metrics"]["valid_loss"] is None, r
            continue
        expected = "diverged" if action in ("nan", "diverged") else "failed"
        assert r["status"] == expected, (action, r)
        assert REASONS[action] in r["reason"], (action, r["reason"])
        if action in ("raise", "exit", "kill", "hang"):
            assert r["valid_loss"] is None
    hang = by_key[key_of("gru_pytorch")]
    assert TIMEOUT <= hang["seconds"] < TIMEOUT + 30


def test_the_run_goes_on_to_the_end(faulty_run):
    run, _, rows, best, stdout, _ = faulty_run
    log = [json.loads(line) for line in (run / "logbook.jsonl").read_text().splitlines()]
    assert [e["gen"] for e in log] == [0, 1, 2, 3]
    assert stdout.splitlines() == (run / "logbook.jsonl").read_text().splitlines()
    assert sum(e["trained"] for e in log) == len(rows) == len({r["key"] for r in rows})
    assert all(e["trained"] == 5 for e in log[1:])
    assert log[0]["failures"] >= 7  # every seed except the ones that lie with status ok
    deaths = [i for i, r in enumerate(rows) if "worker died" in r["reason"] or "timed out" in r["reason"]]
    assert deaths and any(r["status"] == "ok" and r["valid_loss"] for r in rows[deaths[0] + 1:]), \
        "nothing was trained after the first dead worker: the evaluator did not recover"
    assert load_checkpoint(run)["next_gen"] == 4
    assert best["best"]


def test_no_fault_becomes_parent_survivor_or_hall_of_fame(faulty_run):
    run, _, rows, best, _, seen = faulty_run
    bad = set(bad_keys(rows))
    good = {r["key"]: r["valid_loss"] for r in rows if r["key"] not in bad}
    state = load_checkpoint(run)
    for ind in state["population"] + state["hall_of_fame"]:
        assert ind["key"] not in bad
        assert ind["fitness"] is not None and math.isfinite(ind["fitness"][0])
        assert ind["fitness"][0] == good[ind["key"]]
    assert state["hall_of_fame"][0]["fitness"][0] == min(v for v in good.values() if v is not None)
    assert not {e["cell"] for e in best["best"]} & bad
    files = json.loads((run / "best_cells.json").read_text())
    assert not {e["cell"] for e in files["best"]} & bad
    assert all(e["valid_loss"] is not None and math.isfinite(e["valid_loss"]) for e in files["best"])
    # Every parent, survivor and hall-of-fame member of every generation was a cell with a real loss.
    assert seen["parents"] and seen["survivors"] and seen["hof"]
    for role, keys in seen.items():
        assert not keys & bad, f"faulty cells became {role}: {keys & bad}"
        assert all(good[k] is not None and math.isfinite(good[k]) for k in keys), role
    log = [json.loads(line) for line in (run / "logbook.jsonl").read_text().splitlines()]
    for e in log:
        for k in ("best", "median", "best_ever"):
            assert e[k] is None or math.isfinite(e[k])


def test_a_real_nan_loss_is_recorded_as_diverged(tmp_path):
    """Real training of a cell that overflows (h_t = MM(x) + 1000 h_{t-1}, then inf - inf = NaN)."""
    from evonas.evaluation import Job, train_job
    from evonas.training.train import TrainConfig

    cell = "Add(MM(x),Div(h_prev,Sub(h_prev,h_prev)))"
    key = canonical_text(parse(cell))
    config = TrainConfig(hidden=8, steps=8, device="cpu", threads=1).to_dict()
    got = {}
    with LocalEvaluator(workers=1, fn=train_job) as ev:
        ev.run([Job(key=key, cell=cell, config=config)], lambda job, res: got.setdefault(job.key, res))
    res = got[key]
    assert res.status == "diverged" and ("nan" in res.reason or "inf" in res.reason), res
    assert res.valid_loss is None or not math.isfinite(res.valid_loss)
    assert math.isinf(res.loss)
