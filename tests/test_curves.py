"""The learning-curve predictor for promotions (evonas.evolution.curves) and `fidelity.promote: curve`."""

from __future__ import annotations

import io
import json
import random

import pytest
from fake_training import Inline
from scipy.stats import kendalltau

from evonas.errors import ConfigError
from evonas.evolution import curves
from evonas.evolution.config import RunConfig
from evonas.evolution.loop import Search
from evonas.store.archive import Archive, rung

CELLS = ["Tanh(Add(MM(x),MM(h_prev)))", "Sigmoid(Add(MM(x),MM(h_prev)))", "Tanh(Add(MM(x),Mult(h_prev,MM(x))))"]


def test_the_predictor_reads_what_the_curve_says_about_the_top_rung():
    rng = random.Random(0)
    rows = []
    for _ in range(60):  # the top-rung loss is the rung-0 loss minus what the curve's slope says is still to come
        base, slow = rng.uniform(1.0, 2.0), rng.uniform(0.0, 1.0)
        loss0 = base + slow
        curve = [loss0 + slow * (7 - i) / 7 for i in range(8)]
        rows.append((curves.features(rng.choice(CELLS), loss0, curve), loss0, base + 0.1 * slow))
    train, test = rows[:40], rows[40:]
    model = curves.CurvePredictor().fit([x for x, _, _ in train], [y for _, _, y in train])
    top = [y for _, _, y in test]
    by_loss = kendalltau([l0 for _, l0, _ in test], top).statistic
    by_curve = kendalltau(model.predict([x for x, _, _ in test]), top).statistic
    assert by_curve > by_loss + 0.1, f"expected the curve to add information: {by_curve:.2f} vs {by_loss:.2f}"


def test_with_nothing_to_learn_the_predictor_keeps_the_rung_zero_order():
    rng = random.Random(1)
    xs, ys = [], []
    for _ in range(12):
        loss0 = rng.uniform(1.0, 2.0)
        xs.append(curves.features(CELLS[0], loss0, [loss0] * 8))
        ys.append(loss0 - 0.3)
    model = curves.CurvePredictor().fit(xs, ys)
    pred = model.predict(xs)
    assert pred == pytest.approx(ys)
    assert sorted(range(12), key=pred.__getitem__) == sorted(range(12), key=ys.__getitem__)


def test_too_few_top_rung_cells_mean_no_predictor():
    rows = [{"key": CELLS[0], "metrics": {"status": "ok", "valid_loss": 1.0, "rung": 0, "curve": [2.0, 1.0]}},
            {"key": CELLS[0], "metrics": {"status": "ok", "valid_loss": 0.5, "rung": 2}}]
    assert curves.from_archive(rows, top=2) is None


def test_a_search_promotes_on_the_predictor_when_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(curves, "MIN_CELLS", 3)
    config = RunConfig.from_dict(dict(generations=3, population=9, offspring=6, seed_cells=["tanh_rnn", "lstm"],
                                      seed=2, fidelity={"rungs": [1, 3, 9], "eta": 3, "promote": "curve"}))
    Search(config, tmp_path, evaluator=Inline(), budget={"task": "fake", "steps": 1},
           stdout=io.StringIO(), stderr=io.StringIO()).run()
    log = [json.loads(line) for line in (tmp_path / "logbook.jsonl").read_text().splitlines()]
    used = [e["gen"] for e in log if e["rungs"][0].get("promoted_by", "").startswith("curve")]
    assert used and 0 not in used, "generation 0 has no top-rung cells to learn from; later ones must use them"
    with Archive(tmp_path, create=False) as a:
        rows = a.rows()
    for g in used:  # the cells promoted from rung 0 are the predictor's best, not rung 0's
        model = curves.from_archive([r for r in rows if r["generation"] < g], top=2)
        zero = [r for r in rows if r["generation"] == g and rung(r) == 0 and r["status"] == "ok"]
        pred = dict(zip([r["key"] for r in zero], model.predict(
            [curves.features(r["key"], r["valid_loss"], r["metrics"]["curve"]) for r in zero]), strict=True))
        promoted = {r["key"] for r in rows if r["generation"] == g and rung(r) == 1}
        expected = set(sorted(pred, key=lambda k: (pred[k], k))[: len(promoted)])
        assert promoted == expected


def test_bad_promote_is_a_config_error():
    with pytest.raises(ConfigError, match="fidelity.promote must be loss or curve"):
        RunConfig.from_dict({"fidelity": {"rungs": [1, 2], "promote": "luck"}})
