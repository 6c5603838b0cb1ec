"""The shipped pretrained surrogate, order-independent fits, per-dataset normalisation and honest metrics."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from evonas.cli.main import cli
from evonas.surrogate.api import BUILTIN, Surrogate, load_init
from evonas.surrogate.data import Record
from evonas.surrogate.metrics import ranking_metrics
from evonas.surrogate.persist import META, WEIGHTS
from evonas.surrogate.screen import SurrogateScreen
from evonas.surrogate.train import group_targets, ranking_loss

from evonas.evolution import screen as scr

CELLS = ["Tanh(Add(MM(x),MM(h_prev)))", "Sigmoid(Add(MM(x),MM(h_prev)))", "ReLU(Add(MM(x),MM(h_prev)))",
         "Mult(Sigmoid(MM(x)),Tanh(MM(h_prev)))", "Tanh(MM(h_prev))", "Gate3(MM(x),h_prev,Sigmoid(MM(h_prev)))",
         "Add(Tanh(MM(x)),Sigmoid(MM(h_prev)))", "Mult(Tanh(MM(x)),Sigmoid(MM(h_prev)))"]


def records() -> list[Record]:
    return [Record(c, None if i == 3 else 1.0 + 0.1 * i) if i != 3 else Record(c, None, "diverged")
            for i, c in enumerate(CELLS)]


def test_builtin_ships_as_package_data_and_ranks_before_any_refit(tmp_path, one_torch_thread):
    assert (BUILTIN / WEIGHTS).is_file() and (BUILTIN / META).is_file()
    meta = json.loads((BUILTIN / META).read_text())
    assert meta["kind"] == "treelstm" and meta["fitted"] and meta["sizes"]["hidden"] <= 64
    assert (BUILTIN / WEIGHTS).stat().st_size < 2_000_000
    screen = SurrogateScreen("treelstm", tmp_path, seed=0, ensemble=2, init="builtin")
    scores = screen.score(CELLS)
    assert all(math.isfinite(s) for s in scores) and len(set(scores)) > 1  # ranks, no NaN cold start
    assert screen.model.ensemble_size == 2
    cold = SurrogateScreen("treelstm", tmp_path, seed=0, ensemble=2, init="none")
    assert all(math.isnan(s) for s in cold.score(CELLS))
    gnn = SurrogateScreen("gnn", tmp_path, seed=0, ensemble=1, init="builtin")  # no shipped GNN: starts cold
    assert gnn.init == "none"


def test_pyproject_declares_the_builtin_model():
    text = (BUILTIN.parent.parent / "pyproject.toml").read_text()
    assert '"evonas.surrogate" = ["builtin/weights.pt", "builtin/meta.json"]' in text


def test_fit_does_not_depend_on_the_order_of_records(one_torch_thread):
    recs = records() * 1
    shuffled = list(recs)
    random.Random(3).shuffle(shuffled)
    a = Surrogate("treelstm", seed=1, ensemble=1, sizes={"hidden": 8, "head": 8})
    b = Surrogate("treelstm", seed=1, ensemble=1, sizes={"hidden": 8, "head": 8})
    a.fit(recs, epochs=3)
    b.fit(shuffled, epochs=3)
    assert a.score(CELLS) == b.score(CELLS) and a.data_digest == b.data_digest


def test_datasets_are_normalised_and_ranked_within_themselves():
    scores = [1.0, 2.0, 3.0, None, 100.0, 200.0, 300.0]
    groups = ["a", "a", "a", "a", "b", "b", "b"]
    z, norm = group_targets(scores, groups)
    assert z[[0, 1, 2]] == pytest.approx(z[[4, 5, 6]])  # same ranks, same targets, whatever the scale
    assert z[3] > z[:3].max() and (norm.center, norm.scale) == (0.0, 1.0)
    pred = torch.tensor([0.0, 1.0, 5.0, 6.0])
    target = torch.tensor([0.0, 1.0, -1.0, 2.0])  # across the groups the order is "wrong" on purpose
    within = ranking_loss(pred, target, torch.tensor([0, 0, 1, 1]))
    assert float(within) == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(-1.0))))


def test_metrics_give_tau_over_successes_next_to_tau_with_failures():
    true = [1.0, 2.0, 3.0, None, None]
    pred = [3.0, 2.0, 1.0, 9.0, 9.5]  # successes in reverse order, failures correctly last
    m = ranking_metrics(pred, true)
    assert m["kendall_tau_ok"] == pytest.approx(-1.0)
    assert m["kendall_tau"] > 0  # the failures flatter the overall tau
    assert scr.kendall_tau(pred, true) == pytest.approx(-1.0)
    assert scr.kendall_tau(pred, true, failures_worst=True) > 0


def test_pick_split_draws_a_uniform_sample_within_the_explore_slots():
    keys = [f"k{i:02d}" for i in range(40)]
    scores = [float(i) for i in range(40)]
    best, sample = scr.pick_split(keys, scores, 8, 0.5, random.Random(0), random_share=0.5)
    assert best[:4] == [0, 1, 2, 3] and len(best) == 6 and len(sample) == 2
    assert not set(best) & set(sample)
    hits = np.zeros(40)
    for seed in range(400):
        _, s = scr.pick_split(keys, scores, 8, 0.5, random.Random(seed), random_share=1.0)
        hits[s] += 1
    assert hits[:4].sum() == 0 and hits[4:].min() > 0  # the top 4 are exploited; every other one can be drawn
    assert hits[30:].sum() > 0.2 * hits[4:].sum()  # uniform: the bad tail is drawn about as often as the rest
    assert scr.pick(keys, scores, 8, 0.5, random.Random(1)) == sum(scr.pick_split(
        keys, scores, 8, 0.5, random.Random(1)), [])


def test_cli_fine_tunes_the_builtin_and_evaluates_both_taus(tmp_path, one_torch_thread):
    data = tmp_path / "d.csv"
    data.write_text("cell,score,status\n" + "".join(
        f'"{r.cell}",{"" if r.score is None else r.score},{r.status}\n' for r in records()))
    runner = CliRunner()
    res = runner.invoke(cli, ["surrogate", "train", str(data), "--init", "builtin", "--epochs", "2",
                              "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["surrogate", "evaluate", str(tmp_path / "m"), str(data)])
    assert res.exit_code == 0 and "kendall_tau_ok" in res.output and "tied worst" in res.output
    res = runner.invoke(cli, ["surrogate", "evaluate", "builtin", str(data)])
    assert res.exit_code == 0, res.output
    assert load_init("none") is None
