"""NaN never ranks: a NaN, infinite (either sign) or missing metric never becomes best, parent, survivor or
hall-of-fame member, anywhere it can enter (selection, hall of fame, archive, best cells, progress, CLI
table); a NaN (or inf, or garbage) score from the surrogate counts as the worst score.
"""

from __future__ import annotations

import io
import json
import math
import random

import pytest
import reliability_jobs as rj

from evonas.cells import node_count, parse
from evonas.evaluation import Job
from evonas.evolution import screen as scr
from evonas.evolution.config import RunConfig
from evonas.evolution.genome import make_individual
from evonas.evolution.loop import Search
from evonas.evolution.progress import Progress
from evonas.evolution.select import HallOfFame, make_selector, rank_key, set_fitness, usable
from evonas.evolution.toolbox import make_toolbox
from evonas.store.archive import Archive
from evonas.store.checkpoint import load_checkpoint
from evonas.store.runlog import best_cells
from evonas.training.train import EvalResult

NAN, INF = math.nan, math.inf
BAD_LOSSES = [NAN, INF, -INF, None]
CELLS = ["Tanh(Add(MM(x),MM(h_prev)))", "ReLU(Add(MM(x),MM(h_prev)))", "Sigmoid(Add(MM(x),MM(h_prev)))",
         "Tanh(Add(MM(x),Mult(h_prev,MM(h_prev))))", "Tanh(Add(MM(x_prev),MM(h_prev)))",
         "Tanh(Add(MM(x),Add(h_prev,MM(h_prev))))", "Tanh(Mult(MM(x),MM(h_prev)))", "ReLU(Add(MM(x),h_prev))",
         "Tanh(Add(Tanh(MM(x)),MM(h_prev)))", "Tanh(Add(MM(x),Tanh(MM(h_prev))))"]


def population(selection: str = "tournament", direct: bool = False):
    """Individuals: the first four with bad losses (NaN, inf, -inf, missing), the rest with real ones.

    `direct` assigns the bad fitness values straight to DEAP (bypassing set_fitness, as a buggy caller would).
    """
    cfg = RunConfig.from_dict({"selection": selection, "elite": 2, "tournament_size": 3})
    tb = make_toolbox(cfg, random.Random(0))
    inds = [make_individual(parse(c), tb.pset) for c in CELLS]
    for i, ind in enumerate(inds):
        loss = BAD_LOSSES[i] if i < len(BAD_LOSSES) else 1.0 + i / 10
        if direct and loss is not None:
            ind.fitness.values = (loss, 100.0)
        else:
            set_fitness(ind, loss, 100)
    bad = {ind.key for ind in inds[: len(BAD_LOSSES)]}
    return cfg, inds, bad


@pytest.mark.parametrize("direct", [False, True], ids=["set_fitness", "assigned directly"])
def test_bad_fitness_is_never_usable_and_sorts_last(direct):
    _, inds, bad = population(direct=direct)
    for ind in inds:
        assert usable(ind) == (ind.key not in bad)
    order = sorted(inds, key=rank_key)
    assert {i.key for i in order[-len(bad):]} == bad
    assert order[0].key not in bad


@pytest.mark.parametrize("direct", [False, True], ids=["set_fitness", "assigned directly"])
@pytest.mark.parametrize("selection", ["tournament", "nsga2", "aging"])
def test_selection_never_picks_a_bad_cell(selection, direct):
    cfg, inds, bad = population(selection, direct)
    for seed in range(20):
        sel = make_selector(cfg, random.Random(seed))
        shuffled = random.Random(seed).sample(inds, len(inds))
        parents = sel.parents(shuffled, 30)
        survivors = sel.survivors(shuffled[:5], shuffled[5:], 6)
        assert parents and survivors
        assert not {p.key for p in parents} & bad
        if selection == "aging":  # failed cells join the queue and age out, but are never parents
            assert [s.key for s in survivors] == [i.key for i in shuffled[5:]]  # the 5 oldest left
        else:
            assert not {s.key for s in survivors} & bad
    only_bad = [i for i in inds if i.key in bad]
    sel = make_selector(cfg, random.Random(0))
    assert sel.parents(only_bad, 5) == []
    if selection != "aging":
        assert sel.survivors(only_bad, [], 3) == []


@pytest.mark.parametrize("direct", [False, True], ids=["set_fitness", "assigned directly"])
def test_hall_of_fame_keeps_only_real_losses(direct):
    _, inds, bad = population(direct=direct)
    hof = HallOfFame(size=len(inds))
    hof.update(inds)
    assert {i.key for i in hof} == {i.key for i in inds} - bad
    assert hof.items[0].fitness.values[0] == min(i.fitness.values[0] for i in inds if i.key not in bad)


def _archive_with_bad_rows(tmp_path) -> Archive:
    a = Archive(tmp_path)
    results = [("ok", NAN), ("ok", INF), ("ok", -INF), ("ok", None), ("diverged", 0.001), ("failed", -5.0),
               ("ok", 2.5), ("ok", 1.5)]
    for cell, (status, loss) in zip(CELLS, results, strict=False):
        job = Job(key=cell, cell=cell, config={"task": "fake"}, generation=0)
        a.add(job, EvalResult(cell=cell, status=status, reason="" if status == "ok" else "x", valid_loss=loss,
                              params=10))
    return a


def test_archive_best_cells_and_records_never_rank_bad_rows(tmp_path):
    with _archive_with_bad_rows(tmp_path) as a:
        rows = a.rows()
        records = a.to_records()
    assert all(r["valid_loss"] is None for r in rows[:4])  # non-finite losses are stored as NULL
    best = best_cells(rows, 10, {})
    assert [e["cell"] for e in best["best"]] == [CELLS[7], CELLS[6]]
    assert all(rec["status"] != "ok" for rec in records[:6])
    from evonas.surrogate.data import as_records

    taught = as_records(records)  # what the surrogate learns from: every bad row is a failure without a score
    assert all(r.score is None for r in taught[:6]) and [r.score for r in taught[6:]] == [2.5, 1.5]


def test_archive_show_lists_bad_rows_last(tmp_path):
    _archive_with_bad_rows(tmp_path).close()
    proc = rj.run_cli("archive", "show", str(tmp_path), "--full")
    assert proc.returncode == 0, proc.stderr
    table = [ln for ln in proc.stdout.splitlines() if ln[:3].strip().isdigit()]
    assert CELLS[7] in table[0] and CELLS[6] in table[1]
    assert all("nan" not in ln.lower().split() and "inf" not in ln.lower().split() for ln in table)


def test_progress_best_ignores_bad_losses():
    p = Progress(10, io.StringIO())
    for status, loss in [("ok", NAN), ("ok", -INF), ("ok", None), ("diverged", 0.0), ("ok", 2.0), ("ok", INF)]:
        p.record({"status": status, "valid_loss": loss}, trained=True)
    assert p.best == 2.0
    assert p.failures == 1


def test_screen_scores_clean_to_worst():
    assert scr.clean_scores([NAN, INF, -INF, None, "x", object(), 1.5, -2.0], 8) == [INF] * 6 + [1.5, -2.0]
    with pytest.raises(Exception, match="3 scores for 2 cells"):
        scr.clean_scores([1, 2, 3], 2)


def test_nan_scored_candidates_are_picked_last():
    keys = [f"c{i}" for i in range(10)]
    raw = [NAN, 3.0, -INF, None, 1.0, INF, 2.0, "junk", 0.5, NAN]
    scores = scr.clean_scores(raw, len(keys))
    finite = {keys[i] for i, s in enumerate(raw) if isinstance(s, float) and math.isfinite(s)}
    for seed in range(20):
        chosen = {keys[i] for i in scr.pick(keys, scores, 4, 0.0, random.Random(seed))}
        assert chosen == finite
        with_exploration = [keys[i] for i in scr.pick(keys, scores, 4, 0.5, random.Random(seed))]
        assert set(with_exploration[:2]) <= {"c8", "c4"}  # the best-scored part never holds a bad score
    assert scr.kendall_tau([NAN, 1.0, 2.0, 3.0], [1.0, None, 2.0, 3.0]) == 1.0


class NanScreen:
    """A screen that gives NaN/inf/garbage to most candidates and a real score to a few."""

    def __init__(self):
        self.finite: list[set[str]] = []

    def score(self, cells):
        out, finite = [], set()
        for c in cells:
            n = node_count(parse(c))
            if n % 3 == 0:
                out.append(float(n))
                finite.add(c)
            else:
                out.append([NAN, INF, -INF, None, "bad"][n % 5])
        self.finite.append(finite)
        return out


def test_search_trains_finite_scored_candidates_first(tmp_path):
    """In the loop: with no exploration, a NaN-scored candidate is trained only when finite ones run out."""
    screen = NanScreen()
    cfg = RunConfig.from_dict(dict(generations=3, population=5, offspring=3, seed=2, explore_share=0.0,
                                   screen_factor=5, seed_cells=["tanh_rnn", "gru"]))
    Search(cfg, tmp_path, evaluator=rj.InlineEvaluator(), screen=screen, budget={"task": "fake"},
           stdout=io.StringIO(), stderr=io.StringIO()).run()
    with Archive(tmp_path, create=False) as a:
        by_gen: dict[int, set[str]] = {}
        for r in a.rows():
            by_gen.setdefault(r["generation"], set()).add(r["key"])
    assert len(screen.finite) == 3
    for g, finite in enumerate(screen.finite, start=1):
        trained = by_gen[g]
        if len(finite) >= 3:
            assert trained <= finite, f"generation {g} trained NaN-scored cells while finite ones were left"
        else:
            assert finite <= trained
    state = load_checkpoint(tmp_path)
    assert all(p["fitness"] and math.isfinite(p["fitness"][0]) for p in state["population"] + state["hall_of_fame"])


def test_surrogate_nan_prediction_counts_as_worst():
    """A surrogate whose network outputs NaN predicts the failure penalty (worse than every success)."""
    import torch
    from evonas.surrogate.api import make_surrogate

    records = [{"cell": c, "score": 1.0 + i / 10, "status": "ok"} for i, c in enumerate(CELLS[:6])]
    records += [{"cell": CELLS[6], "score": NAN, "status": "ok"}, {"cell": CELLS[7], "score": None,
                                                                   "status": "diverged"}]
    s = make_surrogate("treelstm", seed=0, hidden=8, head=8)
    s.fit(records, epochs=2)
    assert all(math.isfinite(v) for v in (s.normaliser.center, s.normaliser.scale, s.normaliser.penalty))
    assert all(math.isfinite(v) for v in s.score(CELLS))
    with torch.no_grad():
        for p in s.model.parameters():
            p.fill_(NAN)
    poisoned = s.score(CELLS)
    assert all(math.isfinite(v) for v in poisoned)
    assert min(poisoned) > max(r["score"] for r in records[:6])


def test_nan_losses_in_a_search_never_reach_the_run_files(tmp_path):
    """Lying results (ok + NaN/inf/-inf/missing) on the seeds: absent from population, hall of fame, best cells."""
    seeds = ["tanh_rnn", "gru", "ugrnn", "highway"]
    cfg = RunConfig.from_dict(dict(generations=2, population=4, offspring=3, seed=4, seed_cells=seeds))
    from evonas.cells import canonical_text, library

    faults = {canonical_text(library.resolve(n)): a for n, a in zip(seeds, ["ok_nan", "ok_inf", "ok_neg_inf",
                                                                          "ok_none"], strict=True)}
    best = Search(cfg, tmp_path, evaluator=rj.InlineEvaluator(), budget={"task": "fake", "faults": faults},
                  stdout=io.StringIO(), stderr=io.StringIO()).run()
    state = load_checkpoint(tmp_path)
    members = {p["key"] for p in state["population"] + state["hall_of_fame"]}
    assert members and not members & set(faults)
    assert not {e["cell"] for e in best["best"]} & set(faults)
    on_disk = json.loads((tmp_path / "best_cells.json").read_text())
    assert all(e["valid_loss"] is not None and math.isfinite(e["valid_loss"]) for e in on_disk["best"])
    assert {e["cell"]: e["valid_loss"] for e in on_disk["baselines"]}.keys() >= set(faults)  # still reported
    for line in (tmp_path / "logbook.jsonl").read_text().splitlines():
        e = json.loads(line)
        assert all(e[k] is None or math.isfinite(e[k]) for k in ("best", "median", "best_ever"))
