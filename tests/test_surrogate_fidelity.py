"""The surrogate learns from every rung of a multi-fidelity run and predicts on the top rung's scale."""

from __future__ import annotations

import io

import pytest
from evonas.surrogate.data import as_records, read_records
from evonas.surrogate.fidelity import RungMap, rung_maps, top_rung_records
from fake_training import Inline

from evonas.evolution.config import RunConfig
from evonas.evolution.loop import Search
from evonas.store.archive import Archive


def rec(cell: str, score: float | None, rung: int, status: str = "ok", generation: int = 0) -> dict:
    return {"cell": cell, "score": score, "status": status, "rung": rung, "generation": generation}


def test_a_rung_map_recovers_a_linear_relation_and_falls_back_to_a_shift():
    m = RungMap.fit([(x, 0.5 * x - 0.1) for x in (1.0, 1.2, 1.5, 2.0)])
    assert m.slope == pytest.approx(0.5) and m.shift == pytest.approx(-0.1) and m.pairs == 4
    two = RungMap.fit([(1.0, 0.8), (2.0, 1.6)])  # too few pairs for a slope: mean shift only
    assert two.slope == 1.0 and two.shift == pytest.approx(-0.3)
    anti = RungMap.fit([(1.0, 0.9), (1.1, 0.8), (1.2, 0.7)])  # a negative slope would reverse rung 0's order
    assert anti.slope == 1.0 and anti.shift == pytest.approx(-0.3)
    assert RungMap.fit([]) == RungMap()


def test_each_cell_gets_its_highest_rung_result_on_the_top_rung_scale():
    records = [rec(c, s, 0) for c, s in [("A", 1.0), ("B", 1.2), ("C", 1.4), ("D", 1.6), ("E", 2.0)]]
    records += [rec(c, s, 1) for c, s in [("A", 0.6), ("B", 0.7), ("C", 0.8)]]  # rung1 = 0.5 * rung0 + 0.1
    records += [rec("B", 0.3, 2), rec("A", None, 2, "diverged")]  # only B and A reached the top
    maps = rung_maps(records)
    assert maps[0].slope == pytest.approx(0.5) and maps[0].shift == pytest.approx(0.1)
    out = {r["cell"]: r for r in top_rung_records(records)}
    assert set(out) == set("ABCDE") and all(r["rung"] == 2 for r in out.values())
    assert out["B"]["score"] == 0.3 and out["B"]["reached"] == 2  # its real top-rung loss
    assert out["A"]["score"] is None and out["A"]["status"] == "diverged"  # failed where it got to
    # C reached rung 1, D and E only rung 0: carried up, their order kept, C's more faithful result used
    assert out["C"]["reached"] == 1 and out["D"]["reached"] == 0
    assert out["C"]["score"] < out["D"]["score"] < out["E"]["score"]
    assert out["D"]["score"] == pytest.approx(maps[1](0.5 * 1.6 + 0.1))


def test_one_rung_records_pass_through_and_multi_rung_dicts_become_one_record_per_cell():
    flat = [rec("Tanh(Add(MM(x),h_prev))", 1.0, 0), rec("Tanh(MM(h_prev))", 2.0, 0)]
    assert top_rung_records(flat) == flat
    multi = flat + [rec("Tanh(Add(MM(x),h_prev))", 0.5, 1)]
    recs = as_records(multi)
    assert sorted(r.cell for r in recs) == sorted(["Tanh(MM(h_prev))", "Tanh(Add(MM(x),h_prev))"])


def test_the_search_screen_learns_from_every_rung_and_a_run_folder_reads_as_top_rung_records(tmp_path):
    class Recording:
        def __init__(self):
            self.seen: list[list[dict]] = []

        def score(self, cells):
            return [float(len(c)) for c in cells]

        def learn(self, records):
            self.seen.append(records)

    screen = Recording()
    config = RunConfig.from_dict(dict(generations=1, population=9, offspring=6, seed_cells=["lstm"], seed=3,
                                      fidelity={"rungs": [1, 3, 9], "eta": 3}))
    Search(config, tmp_path, evaluator=Inline(), screen=screen, budget={"task": "fake", "steps": 1},
           stdout=io.StringIO(), stderr=io.StringIO()).run()
    assert {r["rung"] for r in screen.seen[-1]} == {0, 1, 2}, "the screen must see the promoted cells' results"
    with Archive(tmp_path, create=False) as a:
        cells = {r["key"] for r in a.rows()}
        assert len(a.to_records(rungs="all")) > len(a.to_records()) == len(cells)
    from_run = read_records(tmp_path)
    assert sorted(r.cell for r in from_run) == sorted(cells)
    with pytest.raises(ValueError, match="rungs must be"):
        Archive(tmp_path, create=False).to_records(rungs="top")
