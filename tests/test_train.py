"""Trainer: determinism, budgets, early stopping, divergence and failure statuses, config errors, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from evonas.cli.main import cli

import evonas.nn.model
from evonas.errors import ConfigError, DataError
from evonas.training.tasks.base import TokenTask
from evonas.training.train import EvalResult, TrainConfig, evaluate

TINY = {"hidden": 8, "device": "cpu", "threads": 1, "batch_size": 4, "eval_batch_size": 100}


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("text")
    (d / "train.txt").write_text("the cat sat on the mat\nthe dog ran to the cat\n" * 30)
    (d / "valid.txt").write_text("the cat ran on the mat\n" * 5)
    (d / "test.txt").write_text("the dog sat\n" * 5)
    return d


@pytest.fixture(scope="module")
def music_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("music") / "m.json"
    seq = [[60, 64, 67], [62, 65], [64, 67, 72], [60]] * 3
    f.write_text(json.dumps({"train": [seq] * 6, "valid": [seq[:6]] * 2, "test": [seq[2:]] * 2}))
    return f


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**TINY, **kw})


def test_same_seed_same_result_and_seed_matters():
    a = evaluate("lstm", cfg(steps=12, eval_every=4, test=True))
    b = evaluate("lstm", cfg(steps=12, eval_every=4, test=True))
    c = evaluate("lstm", cfg(steps=12, eval_every=4, test=True, seed=1))
    assert a.status == "ok" and a.reason == ""
    assert a.valid_loss == b.valid_loss and a.test_loss == b.test_loss
    assert a.valid_loss != c.valid_loss
    assert a.steps == 12 and 0 < a.epochs < 1
    assert a.valid_ppl == pytest.approx(math.exp(a.valid_loss))
    assert a.cell.startswith("Mult(") and a.params > 0
    assert a.valid_loss < math.log(29) + 0.5  # trained a little; no worse than about uniform


def test_training_lowers_the_loss():
    short = evaluate("gru", cfg(steps=2))
    longer = evaluate("gru", cfg(steps=60, lr=0.02))
    assert longer.valid_loss < short.valid_loss - 0.3


def test_epoch_budget_and_text_perplexity(text_dir):
    r = evaluate("tanh_rnn", cfg(task="text", data=str(text_dir), epochs=2, bptt=5, test=True))
    assert r.status == "ok" and r.epochs == 2.0
    assert r.valid_ppl == pytest.approx(math.exp(r.valid_loss)) and r.test_ppl == pytest.approx(math.exp(r.test_loss))


def test_music_masks_and_no_perplexity(music_file):
    r = evaluate("lstm", cfg(task="music", data=str(music_file), epochs=2, test=True))
    assert r.status == "ok" and r.valid_ppl is None and r.test_ppl is None
    assert 0 < r.valid_loss < 88 * math.log(2) + 1 and r.test_loss > 0


def test_layers_dropout_and_tied_embeddings():
    untied = evaluate("gru", cfg(steps=3, tie=False, layers=2))
    tied = evaluate("gru", cfg(steps=3, layers=2, dropout_emb=0.1, dropout_in=0.2, dropout_h=0.3, dropout_out=0.2))
    assert tied.status == untied.status == "ok"
    assert untied.params - tied.params == 29 * 8  # the output matrix is the embedding when tied


def test_weight_drop_on_recurrent_mms_only():
    from evonas.cells.library import resolve
    from evonas.nn.model import CellModel, recurrent_mm_indices

    model = CellModel(resolve("gru"), "tokens", 10, 10, 8, dropout_w=0.5)
    cell = model.cells[0]
    assert recurrent_mm_indices(cell.cell) == [0, 1, 4]  # MM(Mult(r, h_prev)), MM(h_prev) twice; not MM(x)
    assert [hasattr(m, "parametrizations") for m in cell.mm] == [True, True, False, False, True, False]
    x = torch.randint(0, 10, (5, 3))
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])
    r = evaluate("lstm", cfg(steps=3, dropout_w=0.3))
    assert r.status == "ok" and r.valid_loss != evaluate("lstm", cfg(steps=3)).valid_loss


def test_seconds_budget_stops_training():
    r = evaluate("tanh_rnn", cfg(seconds=0.3))
    assert r.status == "ok" and r.steps >= 1 and r.seconds < 30


def test_cpu_clock_budget():
    r = evaluate("tanh_rnn", cfg(seconds=0.3, clock="cpu"))
    assert r.status == "ok" and r.steps >= 1
    with pytest.raises(ConfigError, match="clock must be"):
        TrainConfig.from_dict({"clock": "moon"})


def test_step_budget_with_time_cap_says_so():
    r = evaluate("tanh_rnn", cfg(steps=10_000, seconds=0.2))
    assert r.status == "ok" and r.steps < 10_000 and "time cap" in r.reason


def test_early_stopping_on_flat_validation():
    r = evaluate("tanh_rnn", cfg(steps=50, optimizer="sgd", lr=1e-30, eval_every=1, patience=2))
    assert r.status == "ok" and r.steps == 3  # best at step 1, no improvement at steps 2 and 3


def test_diverged_by_loss_ceiling():
    r = evaluate("tanh_rnn", cfg(steps=5, loss_ceiling=0.5))
    assert r.status == "diverged" and "above the ceiling" in r.reason and r.steps == 1
    assert r.valid_loss is None and r.test_loss is None


def test_diverged_by_gradient_norm():
    r = evaluate("lstm", cfg(steps=5, grad_ceiling=1e-6))
    assert r.status == "diverged" and "gradient norm" in r.reason


def test_diverged_by_huge_learning_rate():
    r = evaluate("Tanh(Add(MM(x),MM(h_prev)))", cfg(steps=200, optimizer="sgd", lr=1e9, clip=0.0))
    assert r.status == "diverged" and r.reason and r.steps < 200


@pytest.mark.parametrize("cell,match", [
    ("Tanh(Add(MM(x),MM(h_prv)))", "bad cell"),
    ("Tanh(Add(MM(x),c_prev))", "bad cell"),
    ("not_a_library_cell", "bad cell"),
])
def test_bad_cells_fail_with_a_reason(cell, match):
    r = evaluate(cell, cfg(steps=2))
    assert r.status == "failed" and match in r.reason and r.params == 0


def test_build_and_training_exceptions_become_failed(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("cannot build this")

    monkeypatch.setattr(evonas.nn.model, "compile_cell", boom)
    r = evaluate("lstm", cfg(steps=2))
    assert r.status == "failed" and "build: RuntimeError: cannot build this" in r.reason
    monkeypatch.undo()

    def bad_loss(self, hidden, decoder, batch):
        raise ValueError("loss exploded the program")

    monkeypatch.setattr(TokenTask, "head_loss_sum", bad_loss)
    r = evaluate("lstm", cfg(steps=2))
    assert r.status == "failed" and "training: ValueError: loss exploded the program" in r.reason


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown training setting.*'hiden'"):
        TrainConfig.from_dict({"hiden": 3})
    with pytest.raises(ConfigError, match="steps must be a positive integer"):
        TrainConfig.from_dict({"steps": 0})
    with pytest.raises(ConfigError, match="dropout_h must be a probability"):
        TrainConfig.from_dict({"dropout_h": 1.0})
    with pytest.raises(ConfigError, match="task must be"):
        evaluate("lstm", TrainConfig(task="vision"))
    with pytest.raises(ConfigError, match="device must be"):
        evaluate("lstm", cfg(device="tpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            evaluate("lstm", cfg(device="cuda"))
    with pytest.raises(DataError, match="no such file"):
        evaluate("lstm", cfg(task="music", data="/nonexistent/x.json"))
    d = cfg(steps=3).to_dict()
    assert TrainConfig.from_dict(json.loads(json.dumps(d))) == cfg(steps=3)


def test_eval_result_json_round_trip():
    r = EvalResult(cell="x", status="diverged", reason="nan", valid_loss=math.nan, valid_ppl=math.inf, params=3)
    d = r.to_dict()
    assert d["valid_loss"] is None and d["valid_ppl"] is None
    back = EvalResult.from_dict(json.loads(json.dumps(d)))
    assert back.status == "diverged" and back.params == 3 and back.loss == math.inf
    with pytest.raises(ConfigError):
        EvalResult.from_dict({"cell": "x", "status": "great"})


# ---------------------------------------------------------------- CLI
def run_cli(*args: str):
    return CliRunner().invoke(cli, ["train", *args], obj={})


def test_cli_train_synthetic_text_and_json():
    res = run_cli("tanh_rnn", "--steps", "3", "--hidden", "8", "--threads", "1", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "valid loss" in res.output and "status       ok" in res.output and "parameters" in res.output
    res = run_cli("Tanh(Add(MM(x),MM(h_prev)))", "--steps", "3", "--hidden", "8", "--json", "--threads", "1")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout.strip().splitlines()[-1])
    assert d["status"] == "ok" and d["steps"] == 3 and d["test_loss"] is not None


def test_cli_bad_inputs_exit_2(tmp_path):
    res = run_cli("lstm", "--task", "text", "--data", str(tmp_path / "nope"))
    assert res.exit_code == 2 and "error:" in res.output and "nope" in res.output
    res = run_cli("Tanh(MM(x)")
    assert res.exit_code == 2 and "error:" in res.output
    res = run_cli("lstm", "--device", "quantum")
    assert res.exit_code == 2 and "device" in res.output


def test_cli_diverged_exit_1():
    res = run_cli("tanh_rnn", "--steps", "3", "--hidden", "8", "--lr", "1e9", "--optimizer", "sgd", "--threads", "1")
    assert res.exit_code == 1 and "status       diverged" in res.output and "above the ceiling" in res.output


@pytest.mark.parametrize("task", ["synthetic", "text", "music"])
def test_continuing_from_a_saved_state_equals_training_straight_through(tmp_path, task, text_dir, music_file):
    """A promoted cell continues (model, optimizer, counters, RNG, carried state, position in the epoch) and
    reaches exactly the weights of an uninterrupted run: the final validation losses agree."""
    extra = {"synthetic": {}, "text": {"data": str(text_dir), "bptt": 5}, "music": {"data": str(music_file)}}[task]
    unit, low, high = ("epochs", 1, 3) if task == "music" else ("steps", 7, 19)
    last: dict[str, float] = {}

    def keep(name):
        return lambda p: last.__setitem__(name, p["valid_loss"])

    straight = evaluate("lstm", cfg(task=task, **extra, **{unit: high}, dropout_h=0.1), keep("straight"))
    state = tmp_path / "state.pt"
    low_run = evaluate("lstm", cfg(task=task, **extra, **{unit: low}, dropout_h=0.1), state_out=state)
    assert low_run.status == "ok" and state.exists()
    cont = evaluate("lstm", cfg(task=task, **extra, **{unit: high}, dropout_h=0.1), keep("continued"),
                    state_in=state)
    assert cont.status == "ok" and cont.steps == straight.steps and cont.epochs == straight.epochs
    assert last["continued"] == pytest.approx(last["straight"], rel=1e-6, abs=1e-6)
    assert cont.valid_loss <= low_run.valid_loss  # the best over both rungs


def test_a_missing_or_foreign_state_fails_the_evaluation(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"something": torch.zeros(1)}, bad)
    for path in (tmp_path / "missing.pt", bad):
        r = evaluate("lstm", cfg(steps=3), state_in=path)
        assert r.status == "failed" and "cannot continue from" in r.reason


def test_match_params_sizes_cells_to_the_lstm():
    from evonas.training.sizing import TOLERANCE, match_hidden, target_params

    train = {**TINY, "task": "synthetic", "hidden": 32}
    goal = target_params("lstm", train)
    h = match_hidden("tanh_rnn", train, "lstm")
    assert isinstance(h, int) and h > 32  # a plain RNN needs a larger hidden size for the LSTM's count
    r = evaluate("tanh_rnn", cfg(steps=1, hidden=h))
    assert abs(r.params - goal) <= TOLERANCE * goal
    reason = match_hidden("lstm", train, 50)
    assert isinstance(reason, str) and "cannot match 50 parameters" in reason
