"""Confirmation of a finished run: real (tiny) training of the top cells and the seed cells with fresh paired
seeds at equal parameters, statistics, verdict lines, files, the winner's weights, and the CLI."""

from __future__ import annotations

import io
import json

import pytest
import torch
from click.testing import CliRunner
from evonas.cli.main import cli

from evonas.evaluation import Evaluator, train_job
from evonas.evolution.config import RunConfig
from evonas.evolution.confirm import ConfirmSettings, confirm
from evonas.evolution.loop import Search
from evonas.nn.compiler import compile_cell

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TRAIN = {"hidden": 24, "steps": 6, "threads": 1, "batch_size": 4, "eval_batch_size": 64}


class InProcess(Evaluator):
    """Real training, one job after the other, in this process."""

    def run(self, jobs, on_result):
        for job in jobs:
            on_result(job, train_job(job))

    def close(self):
        pass


def tiny_run(path, **kw):
    cfg = RunConfig.from_dict({"generations": 1, "population": 3, "offspring": 2, "seed": 1, "device": "cpu",
                               "seed_cells": ["tanh_rnn", "lstm"], "train": TRAIN, **kw})
    Search(cfg, path, evaluator=InProcess(), stdout=io.StringIO(), stderr=io.StringIO()).run()
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("confirm") / "run", fidelity={"rungs": [3, 6], "eta": 2})


def test_confirm_retrains_paired_and_says_plainly(run):
    out = io.StringIO()
    s = confirm(run, ConfirmSettings(top=2, seeds=2, match_params="lstm"), evaluator=InProcess(), out=out)
    names = [c["name"] for c in s["cells"]]
    assert names[:2] == ["found-1", "found-2"] and set(names[2:]) == {"tanh_rnn", "lstm"}
    assert s["seeds"] == [1000, 1001] and s["budget"]["steps"] == 6 and s["budget"]["test"] is True
    params = [c["params"] for c in s["cells"]]
    assert max(params) <= 1.05 * min(params) / 0.95  # equal parameters within 5% of the LSTM's count
    ref = next(c for c in s["cells"] if c["name"] == s["reference"])
    assert ref["seed_cell"] and ref["verdict"].startswith("reference")
    for c in s["cells"]:
        assert c["runs_ok"] == 2 and len(c["test"]) == 2 and c["test_sd"] is not None
        if not c["seed_cell"]:
            assert c["verdict"].startswith(("beats ", "does not beat ")) and "nats on test" in c["verdict"]
            assert "/2 seeds" in c["verdict"] and f" {s['reference']}" in c["verdict"]
    text = out.getvalue()
    assert "confirmation at 6 steps" in text and text.count("nats on test") == 3  # all but the reference
    saved = json.loads((run / "confirm.json").read_text())
    assert saved["reference"] == s["reference"] and len(saved["cells"]) == 4
    assert (run / "confirm.csv").read_text().splitlines()[0].startswith("name,key,seed_cell,params")
    meta = json.loads((run / "winner" / "meta.json").read_text())
    assert meta["cell"] == s["winner"]
    module = compile_cell(meta["cell"], meta["input_size"], meta["hidden_size"])
    module.load_state_dict(torch.load(run / "winner" / "cell.pt", weights_only=True))
    assert not (run / "confirm" / "states").exists()


def test_a_second_confirm_trains_nothing_again(run):
    class Refuse(InProcess):
        def run(self, jobs, on_result):
            assert not jobs, f"trained again: {[j.key for j in jobs]}"

    settings = ConfirmSettings(top=2, seeds=2, match_params="lstm")
    confirm(run, settings, evaluator=InProcess())  # trains what is missing (nothing when the test above ran here)
    confirm(run, settings, evaluator=Refuse())


def test_confirm_works_on_a_run_without_rungs_and_through_the_cli(tmp_path):
    old = tiny_run(tmp_path / "old")  # one rung, as every run before multi-fidelity
    r = CliRunner().invoke(cli, ["confirm", str(old), "--top", "1", "--seeds", "2", "--budget", "steps=4",
                                 "--match-params", "none"], obj={})
    assert r.exit_code == 0, r.output
    assert "confirmation at 4 steps" in r.output and "found-1" in r.output
    bad = CliRunner().invoke(cli, ["confirm", str(old), "--budget", "hours=3"], obj={})
    assert bad.exit_code == 2 and "expected epochs=N" in bad.output
    missing = CliRunner().invoke(cli, ["confirm", str(tmp_path / "nothing")], obj={})
    assert missing.exit_code == 2 and "no run folder" in missing.output
