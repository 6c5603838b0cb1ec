"""`evonas surrogate train / evaluate / rank` through click's CliRunner, on tiny self-made data."""

from __future__ import annotations

import csv
import json
import random

import pytest
import torch
from click.testing import CliRunner
from evonas.cli.main import cli
from evonas.surrogate.api import Surrogate
from evonas.surrogate.sample import random_cell

from evonas.cells import op_counts, to_text

EPOCHS = "3"


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], obj={}, catch_exceptions=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def rows():
    rng = random.Random(0)
    out = []
    for i in range(40):
        cell = random_cell(rng, max_depth=4)
        c = op_counts(cell)
        if i % 8 == 3:
            out.append({"cell": to_text(cell), "score": "", "status": "diverged", "note": "nan"})
        else:
            out.append({"cell": to_text(cell), "score": 3 + 0.3 * c["ReLU"] - 0.5 * c["Memory"], "status": "ok",
                        "note": "x"})
    return out


@pytest.fixture
def data_csv(tmp_path, rows):
    path = tmp_path / "data.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["note", "cell", "score", "status"])
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def model(tmp_path, data_csv):
    out = tmp_path / "model"
    r = run("surrogate", "train", data_csv, "--out", out, "--epochs", EPOCHS, "--seed", "1")
    assert r.exit_code == 0, r.output + r.stderr
    return out


def test_train_writes_a_loadable_model(model, rows):
    out = CliRunner().invoke(
        cli, ["surrogate", "train", str(model.parent / "data.csv"), "--out", str(model.parent / "m2"), "--epochs",
              "1"], obj={}).output
    assert "trained 3 treelstm model(s) on 40 cells (5 failed/diverged): epochs 1/1/1" in out, out
    s = Surrogate.load(model)
    assert s.kind == "treelstm" and s.n_records == 40 and s.fitted and s.ensemble_size == 3


def test_gnn_from_jsonl(tmp_path, rows):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({**r, "score": r["score"] if r["score"] != "" else None}) + "\n"
                            for r in rows))
    r = run("surrogate", "train", path, "--out", tmp_path / "g", "--model", "gnn", "--epochs", "2")
    assert r.exit_code == 0, r.stderr
    assert Surrogate.load(tmp_path / "g").kind == "gnn"


def test_evaluate_prints_the_metrics_with_both_taus(model, data_csv):
    r = run("surrogate", "evaluate", model, data_csv)
    assert r.exit_code == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert names == ["cells", "kendall_tau", "kendall_tau_ok", "spearman", "top10_precision", "rmse"]
    values = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines()}
    assert -1 <= float(values["kendall_tau"]) <= 1 and 0 <= float(values["top10_precision"]) <= 1
    assert -1 <= float(values["kendall_tau_ok"]) <= 1


def test_rank_keeps_input_order_and_accepts_any_well_formed_cell(model, tmp_path):
    cells = ["LeakyReLU(Add(Diag(h_prev),MM(x)))", "Tanh(Add(MM(x),MM(h_prev)))",
             "Tanh(Add(MM(h_prev), MM(x)))", "MM(h_prev)"]
    (tmp_path / "cells.txt").write_text("\n".join(cells) + "\n")
    r = run("surrogate", "rank", model, tmp_path / "cells.txt", "--out", tmp_path / "pred.csv")
    assert r.exit_code == 0, r.stderr
    with open(tmp_path / "pred.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert [g["cell"] for g in got] == [c.replace(" ", "") for c in cells]
    expect = Surrogate.load(model).score(cells)
    assert [float(g["predicted_score"]) for g in got] == pytest.approx(expect, rel=1e-5)
    assert got[1]["predicted_score"] == got[2]["predicted_score"]  # same architecture
    # CSV input with a cell column; stdout output
    with open(tmp_path / "cells.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "cell"], [1, cells[0]], [2, cells[1]]])
    r = run("surrogate", "rank", model, tmp_path / "cells.csv")
    assert r.exit_code == 0
    assert list(csv.DictReader(r.stdout.splitlines())) == got[:2]


@pytest.mark.parametrize("content,match", [
    ("Tanh(Add(MM(x),MM(h_prev)))\nTanh(Add(MM(x),MM(h_prev))\n", "cells.txt:2: malformed cell"),
    ("# header\nTanh(h_prev)\n\nFoo(x)\n", "cells.txt:4: malformed cell: unknown operator"),
    ("Tanh(x)\n", "cells.txt:1: cell is not well-formed"),
])
def test_rank_reports_the_bad_line(model, tmp_path, content, match):
    (tmp_path / "cells.txt").write_text(content)
    r = run("surrogate", "rank", model, tmp_path / "cells.txt")
    assert r.exit_code == 2 and match in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1  # one line, no traceback


@pytest.mark.parametrize("content,match", [
    ('cell,score\n"Tanh(Add(MM(x),MM(h_prev)))",1.0\nTanh(h_prev,1.0\n', "data.csv:3: malformed cell"),
    ('cell,score,status\n"Tanh(Add(MM(x),MM(h_prev)))",,ok\n', "empty score but status is 'ok'"),
    ("cell,score\nTanh(Add(MM(x),MM(h_prev))),1.0\n", "data.csv:2: more fields than the header"),
    ("cell,value\nTanh(h_prev),1\n", "needs the columns 'cell' and 'score'"),
    ("cell,score\nTanh(h_prev),abc\n", "score 'abc' is not a number"),
])
def test_train_reports_bad_data(tmp_path, content, match):
    (tmp_path / "data.csv").write_text(content)
    r = run("surrogate", "train", tmp_path / "data.csv", "--out", tmp_path / "m")
    assert r.exit_code == 2 and match in r.stderr, r.stderr
    assert not (tmp_path / "m").exists()


def test_bad_model_file_and_bad_kind_are_one_line_errors(tmp_path, data_csv, model):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "meta.json").write_text("{}")
    r = run("surrogate", "evaluate", tmp_path / "junk", data_csv)
    assert r.exit_code == 2 and "not an evonas surrogate" in r.stderr
    r = run("surrogate", "train", data_csv, "--out", tmp_path / "m", "--model", "transformer")
    assert r.exit_code == 2 and "unknown --model 'transformer'" in r.stderr
    r = run("surrogate", "train", data_csv, "--out", tmp_path / "m", "--model", "gnn", "--init", model)
    assert r.exit_code == 2 and "does not match" in r.stderr


def test_init_fine_tunes_a_saved_model(tmp_path, data_csv, model):
    r = run("surrogate", "train", data_csv, "--out", tmp_path / "tuned", "--init", model, "--epochs", "2")
    assert r.exit_code == 0, r.stderr
    base, tuned = Surrogate.load(model), Surrogate.load(tmp_path / "tuned")
    assert tuned.kind == base.kind and tuned.sizes == base.sizes
    sd0, sd1 = base.model.state_dict(), tuned.model.state_dict()
    assert not all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    # starting from the saved weights: much closer to them than a fresh model of the same seed is
    fresh = Surrogate("treelstm", seed=1).model.state_dict()
    dist = sum(float((sd1[k] - sd0[k]).norm()) for k in sd0)
    dist_fresh = sum(float((fresh[k] - sd0[k]).norm()) for k in sd0)
    assert dist < dist_fresh


def test_run_folder_as_data(tmp_path, rows):
    from evonas.evaluation import Job
    from evonas.store.archive import Archive
    from evonas.training import train as train_mod

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with Archive(run_dir / "archive.sqlite") as archive:
        for r in rows:
            failed = r["score"] == ""
            res = train_mod.EvalResult(cell=r["cell"], status="diverged" if failed else "ok",
                                       valid_loss=None if failed else float(r["score"]))
            archive.add(Job(r["cell"], r["cell"], {"task": "synthetic"}), res)
    r = run("surrogate", "train", run_dir, "--out", tmp_path / "m", "--epochs", "1")
    assert r.exit_code == 0, r.stderr
    assert "on 40 cells (5 failed/diverged)" in r.stdout


def test_search_screen_with_an_ensemble_refits_saves_and_reloads(tmp_path, rows):
    """The search's screen (`surrogate_ensemble` in the run config) fits K models, saves them per generation,
    and a resumed run reloads the same ensemble and scores as before."""
    from evonas.surrogate.screen import make_screen

    records = [{"cell": r["cell"], "score": r["score"] if r["status"] == "ok" else None,
                "status": r["status"], "generation": 0} for r in rows]  # the shape of Archive.to_records()
    screen = make_screen("treelstm", tmp_path, seed=0, ensemble=2)
    cells = [r["cell"] for r in rows[:5]]
    assert all(s != s for s in screen.score(cells)), "an unfitted screen must score NaN (random choice)"
    screen.model.fit_config.epochs = int(EPOCHS)
    screen.learn(records)
    saved = json.loads((tmp_path / "surrogate" / "gen-0000" / "meta.json").read_text())
    assert saved["ensemble"] == 2, saved
    before = screen.score(cells)
    resumed = make_screen("treelstm", tmp_path, seed=0, ensemble=2)
    resumed.on_resume(records)
    assert resumed.score(cells) == pytest.approx(before)


def test_run_config_rejects_a_bad_ensemble_size():
    from evonas.errors import ConfigError
    from evonas.evolution.config import RunConfig

    with pytest.raises(ConfigError, match="surrogate_ensemble must be an integer >= 1, got 0"):
        RunConfig.from_dict({"surrogate_ensemble": 0})


def test_train_then_evaluate_learns_a_structural_signal(tmp_path):
    """Trained by the CLI on 150 cells whose loss follows their operator counts, the ranker orders 60 unseen
    cells far better than chance (tau well above 0; a ranker that learned nothing scores about 0)."""
    rng = random.Random(5)

    def make(n: int, path):
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["cell", "score", "status"])
            w.writeheader()
            for _ in range(n):
                c = op_counts(cell := random_cell(rng, max_depth=4))
                score = 3 + 0.3 * c["ReLU"] - 0.4 * c["Sigmoid"] + 0.2 * c["Mult"] + rng.gauss(0, 0.05)
                w.writerow({"cell": to_text(cell), "score": score, "status": "ok"})

    make(150, tmp_path / "train.csv")
    make(60, tmp_path / "held_out.csv")
    r = run("surrogate", "train", tmp_path / "train.csv", "--out", tmp_path / "m", "--epochs", "30",
            "--ensemble", "1", "--seed", "0")
    assert r.exit_code == 0, r.output
    r = run("surrogate", "evaluate", tmp_path / "m", tmp_path / "held_out.csv")
    assert r.exit_code == 0, r.output
    tau = float(next(line.split()[1] for line in r.stdout.splitlines() if line.startswith("kendall_tau")))
    assert tau >= 0.4, f"expected the ranker to learn the operator-count signal (tau >= 0.4), got {tau:.3f}"
