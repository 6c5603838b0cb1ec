"""Conformance suite run against every registered ranker kind: shapes, invariances, gradients, seeding,
learning a simple ranking, ensembles, and the Surrogate API on top."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from evonas.surrogate.api import Surrogate, make_surrogate
from evonas.surrogate.graph import GraphCache, batch_graphs
from evonas.surrogate.model import Ensemble
from evonas.surrogate.rankers import kinds, make_ranker
from evonas.surrogate.sample import random_cell
from evonas.surrogate.train import Normaliser, ranking_loss

from evonas.cells import op_counts, parse, to_text

KINDS = kinds()
SMALL = {"hidden": 16, "head": 16}
CELLS = [
    "Tanh(Add(MM(x),MM(h_prev)))",
    "Gate3(Tanh(Add(MM(x),MM(h_prev))),h_prev,Sigmoid(Add(MM(x),MM(h_prev))))",
    "Mult(Sigmoid(MM(x)),Tanh(Memory(Add(Mult(Sigmoid(MM(h_prev)),c_prev),MM(x)))))",
    "LeakyReLU(Add(Diag(h_prev),MM(x)))",
    "Sub(MM(x),h_prev)",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _toy_records(n: int, seed: int = 0) -> list[dict]:
    """Score = a structural function of the cell (Memory and Gate3 help, ReLU hurts); every 9th fails."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        cell = random_cell(rng, max_depth=4)
        c = op_counts(cell)
        score = 3.0 - 0.6 * c["Memory"] - 0.4 * c["Gate3"] + 0.3 * c["ReLU"] + 0.05 * c["MM"]
        failed = i % 9 == 4
        out.append({"cell": to_text(cell), "score": None if failed else score,
                    "status": "diverged" if failed else "ok"})
    return out


def _predict(model, cells):
    cache = GraphCache(model.form)
    with torch.no_grad():
        return model(batch_graphs(cache.many(cells), model.form))


@pytest.mark.parametrize("kind", KINDS)
def test_output_is_one_finite_value_per_cell(kind):
    torch.manual_seed(0)
    model = make_ranker(kind, **SMALL).eval()
    out = _predict(model, CELLS)
    assert out.shape == (len(CELLS),) and torch.isfinite(out).all()


@pytest.mark.parametrize("kind", KINDS)
def test_prediction_does_not_depend_on_batch_companions_or_order(kind):
    torch.manual_seed(0)
    model = make_ranker(kind, **SMALL).eval()
    together = _predict(model, CELLS)
    alone = torch.stack([_predict(model, [c])[0] for c in CELLS])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    rev = _predict(model, CELLS[::-1])
    torch.testing.assert_close(together, rev.flip(0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_commutative_order_is_irrelevant_but_argument_slots_matter(kind):
    torch.manual_seed(0)
    model = make_ranker(kind, **SMALL).eval()
    a, b, c, d = _predict(model, ["Add(MM(x),Tanh(h_prev))", "Add(Tanh(h_prev),MM(x))",
                                  "Sub(MM(x),Tanh(h_prev))", "Sub(Tanh(h_prev),MM(x))"])
    assert float(a) == pytest.approx(float(b), abs=1e-6)
    assert abs(float(c) - float(d)) > 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter(kind):
    torch.manual_seed(0)
    model = make_ranker(kind, **SMALL)
    cache = GraphCache(model.form)
    out = model(batch_graphs(cache.many(CELLS), model.form))
    ranking_loss(out, torch.arange(len(CELLS), dtype=torch.float32)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert sum(float(p.grad.abs().sum()) for p in model.parameters()) > 0


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_model_and_different_seed_differs(kind):
    recs = _toy_records(40)
    a = make_surrogate(kind, seed=3, **SMALL)
    b = make_surrogate(kind, seed=3, **SMALL)
    c = make_surrogate(kind, seed=4, **SMALL)
    for s in (a, b, c):
        s.fit(recs, epochs=3)
    sa, sb, sc = (s.model.state_dict() for s in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.score(CELLS) == b.score(CELLS)


@pytest.mark.parametrize("kind", KINDS)
def test_learns_a_structural_ranking(kind):
    recs = _toy_records(160, seed=1)
    s = make_surrogate(kind, seed=0, hidden=32, head=32)
    s.fit(recs[:120], epochs=40)
    m = s.evaluate(recs[120:])
    assert m["kendall_tau"] > 0.5, m


@pytest.mark.parametrize("kind", KINDS)
def test_scores_are_finite_floats_in_input_order_for_any_cell(kind):
    s = make_surrogate(kind, seed=0, **SMALL)
    s.fit(_toy_records(30), epochs=2)
    scores = s.score(CELLS + [parse(CELLS[0])])
    assert len(scores) == len(CELLS) + 1 and all(isinstance(v, float) and math.isfinite(v) for v in scores)
    assert scores[0] == pytest.approx(scores[-1], rel=1e-6)
    assert s.score(CELLS[::-1]) == pytest.approx(scores[:-1][::-1], rel=1e-6)
    assert s.score([]) == []


@pytest.mark.parametrize("kind", KINDS)
def test_ensemble_gives_mean_and_spread(kind):
    s = Surrogate(kind, seed=0, ensemble=3, sizes=SMALL)
    s.fit(_toy_records(30), epochs=2)
    mean, spread = s.score_with_spread(CELLS)
    assert len(mean) == len(spread) == len(CELLS)
    assert all(v > 0 for v in spread)
    assert mean == pytest.approx(s.score(CELLS))
    assert isinstance(s.model, Ensemble) and len(s.model.members) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_warm_start_continues_from_current_weights(kind):
    recs = _toy_records(40)
    s = make_surrogate(kind, seed=0, **SMALL)
    s.fit(recs, epochs=3)
    before = {k: v.clone() for k, v in s.model.state_dict().items()}
    fresh = make_surrogate(kind, seed=0, **SMALL)
    s.fit(recs, warm_start=True, epochs=1)
    fresh.fit(recs, epochs=1)
    after, fresh_sd = s.model.state_dict(), fresh.model.state_dict()
    assert not all(torch.equal(after[k], fresh_sd[k]) for k in after)
    drift = sum(float((after[k] - before[k]).abs().sum()) for k in after)
    assert drift > 0


def test_failures_get_a_penalty_worse_than_every_success():
    scores = [1.0, 2.0, 50.0, None, 3.0, None]
    norm = Normaliser.fit(scores)
    t = norm.targets(scores)
    assert t[3] == t[5] == norm.penalty
    assert norm.penalty > max(t[[0, 1, 2, 4]])
    z = np.array([0.0, 1.0])
    assert norm.denormalise(z)[0] == pytest.approx(norm.center)


def test_ranking_loss_prefers_correct_order():
    target = torch.tensor([0.0, 1.0, 2.0])
    good = ranking_loss(torch.tensor([0.0, 1.0, 2.0]), target)
    bad = ranking_loss(torch.tensor([2.0, 1.0, 0.0]), target)
    assert good < bad
    assert float(ranking_loss(torch.zeros(3), torch.ones(3))) == 0.0  # no ordered pairs


def test_unknown_kind_is_a_config_error():
    from evonas.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown surrogate model"):
        Surrogate("transformer")
