"""Corrupt files in a run folder, met through the real CLI (`evonas resume`, `evonas archive`, `evonas surrogate`).

A truncated or garbled checkpoint: a warning naming the file, resume falls back to the previous checkpoint
and finishes without training anything again. Both bad, another version, an incomplete state: one error
line naming the file, exit 2. A corrupt archive: one clear error line. A surrogate model of another version,
of random bytes, or a pickle carrying a payload: refused, and the payload never runs (its marker file
never appears). YAML that would construct Python objects is refused too.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import random
import shutil
import sqlite3

import pytest
import reliability_jobs as rj
import torch

from evonas.evolution.config import RunConfig
from evonas.evolution.loop import Search
from evonas.store.archive import Archive
from evonas.store.checkpoint import CHECKPOINT, PREVIOUS, load_checkpoint

GENERATIONS = 2


class Payload:
    """Unpickling this creates a file (builtins.open with mode "w"): a real code-execution payload."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def archive_rows(run) -> list[tuple]:
    db = sqlite3.connect(f"file:{run / 'archive.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT key, metrics FROM evaluations ORDER BY id").fetchall()
    finally:
        db.close()


def make_run(run, surrogate: str):
    """A complete small run folder (fake training in-process, no screen during the run)."""
    cfg = RunConfig.from_dict(dict(generations=GENERATIONS, population=4, offspring=3, seed=5, device="cpu",
                                   seed_cells=["tanh_rnn", "gru"], surrogate=surrogate, train={"steps": 5}))
    Search(cfg, run, evaluator=rj.InlineEvaluator(), budget={"task": "fake"}, stdout=io.StringIO(),
           stderr=io.StringIO()).run()
    return run


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished run without a surrogate."""
    return make_run(tmp_path_factory.mktemp("finished") / "run", "none")


@pytest.fixture(scope="module")
def surrogate_run(tmp_path_factory):
    """A finished run whose config says `surrogate: treelstm`, with a tiny fitted model saved as its last
    model, so `evonas resume` loads that model (and has nothing else to do)."""
    from evonas.surrogate.api import make_surrogate

    run = make_run(tmp_path_factory.mktemp("surrogate") / "run", "treelstm")
    with Archive(run, create=False) as a:
        records = a.to_records()
    model = make_surrogate("treelstm", seed=0, hidden=8, head=8)
    model.fit(records, epochs=2)
    model.save(run / "surrogate" / f"gen-{GENERATIONS:04d}")
    return run


def _copy(src, tmp_path):
    dst = tmp_path / src.parent.name / "run"
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def run(finished_run, tmp_path):
    """A private copy of the finished run."""
    return _copy(finished_run, tmp_path)


@pytest.fixture
def srun(surrogate_run, tmp_path):
    """A private copy of the finished run with a surrogate."""
    return _copy(surrogate_run, tmp_path)


def damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 3])
    elif how == "garble":
        path.write_bytes(os.urandom(len(data)))
    elif how == "empty":
        path.write_bytes(b"")
    else:
        raise ValueError(how)


# ------------------------------------------------------------------------------------------------ checkpoints


def test_intact_runs_resume_to_the_same_end(run, srun):
    """Control: untouched copies resume (nothing to do) and exit 0; the setup itself is sound."""
    for r in (run, srun):
        before = archive_rows(r)
        proc = rj.run_cli("resume", str(r))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert archive_rows(r) == before


@pytest.mark.parametrize("how", ["truncate", "garble", "empty"])
def test_bad_checkpoint_falls_back_to_the_previous_one(run, how):
    before = archive_rows(run)
    prev_gen = json.loads((run / PREVIOUS).read_text())["next_gen"]
    assert prev_gen == GENERATIONS  # the previous checkpoint is one generation behind
    damage(run / CHECKPOINT, how)
    proc = rj.run_cli("resume", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    warning = [ln for ln in proc.stderr.splitlines() if CHECKPOINT in ln and PREVIOUS in ln]
    assert warning, f"no warning naming {CHECKPOINT} and {PREVIOUS}:\n{proc.stderr}"
    assert str(run / CHECKPOINT) in warning[0]
    assert f"resuming {run} at generation {prev_gen}" in proc.stderr
    # The replayed generation looked every cell up: nothing trained again, nothing lost.
    assert archive_rows(run) == before
    book = [json.loads(line) for line in (run / "logbook.jsonl").read_text().splitlines()]
    assert [e["gen"] for e in book] == list(range(GENERATIONS + 1))
    assert book[-1]["reused"] == book[-1]["trained"] > 0
    assert load_checkpoint(run)["next_gen"] == GENERATIONS + 1


def test_both_checkpoints_bad_is_one_error_naming_both(run):
    damage(run / CHECKPOINT, "truncate")
    damage(run / PREVIOUS, "garble")
    proc = rj.run_cli("resume", str(run))
    rj.assert_one_line_error(proc, str(run / CHECKPOINT), str(run / PREVIOUS), alone=False)


def test_checkpoint_of_another_version_is_refused(run):
    state = json.loads((run / CHECKPOINT).read_text())
    (run / CHECKPOINT).write_text(json.dumps({**state, "format_version": 99}))
    rj.assert_one_line_error(rj.run_cli("resume", str(run)), str(run / CHECKPOINT), "version 99", alone=False)


@pytest.mark.parametrize("change", [
    "drop population", "bad cell",
    "ill-formed cell", "bad rng", "bad config",
])
def test_checkpoint_with_a_bad_state_is_one_clear_error(run, change):
    state = json.loads((run / CHECKPOINT).read_text())
    if change == "drop population":
        del state["population"]
    elif change == "bad cell":
        state["population"][0]["cell"] = "Tanh(Add(MM(x),"
    elif change == "ill-formed cell":
        state["population"][0]["cell"] = "Tanh(x)"  # parses, but has no state
    elif change == "bad rng":
        state["rng"]["python"] = "not a state"
    else:
        state["config"]["population"] = "many"
    (run / CHECKPOINT).write_text(json.dumps(state))
    rj.assert_one_line_error(rj.run_cli("resume", str(run)), str(run), alone=False)


# ------------------------------------------------------------------------------------------------ archive


@pytest.mark.parametrize("how", ["truncate", "garble"])
@pytest.mark.parametrize("command", ["resume", "archive export", "archive show"])
def test_corrupt_archive_is_one_clear_error(run, how, command):
    damage(run / "archive.sqlite", how)
    proc = rj.run_cli(*command.split(), str(run))
    rj.assert_one_line_error(proc, "archive", str(run / "archive.sqlite"), alone=command != "resume")


def test_archive_row_with_bad_json_is_one_clear_error(run):
    db = sqlite3.connect(run / "archive.sqlite")
    db.execute("UPDATE evaluations SET metrics='{not json' WHERE id=2")
    db.commit()
    db.close()
    rj.assert_one_line_error(rj.run_cli("archive", "export", str(run)), "archive.sqlite", "row 2")


# ------------------------------------------------------------------------------------------------ surrogate


def _model_dir(run):
    return run / "surrogate" / f"gen-{GENERATIONS:04d}"


@pytest.mark.parametrize("how", ["other version", "random weights 0", "random weights 2",
                                 "random meta", "payload", "payload raw"])
def test_bad_surrogate_in_a_run_is_refused_without_running_it(srun, tmp_path, how):
    run = srun
    folder = _model_dir(run)
    marker = tmp_path / "payload-ran"
    if how == "other version":
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps({**meta, "format_version": 2}))
    elif how.startswith("random weights"):  # seeded: some random files once escaped as IndexError
        (folder / "weights.pt").write_bytes(random.Random(int(how.split()[-1])).randbytes(4096))
    elif how == "random meta":
        (folder / "meta.json").write_bytes(os.urandom(512))
    else:
        state = dict(torch.load(folder / "weights.pt", weights_only=True))
        state["evil"] = Payload(str(marker))
        if how == "payload":
            torch.save(state, folder / "weights.pt")
        else:
            (folder / "weights.pt").write_bytes(pickle.dumps(state))
    proc = rj.run_cli("resume", str(run))
    assert not marker.exists(), "loading the surrogate ran code from the file"
    name = "meta.json" if how in ("other version", "random meta") else "weights.pt"
    rj.assert_one_line_error(proc, str(folder / name), alone=False)
    if how.startswith("payload"):  # the payload is real: an unsafe load runs it
        if how == "payload":
            torch.load(folder / "weights.pt", weights_only=False)
        else:
            pickle.loads((folder / "weights.pt").read_bytes())
        assert marker.exists()


def test_any_random_bytes_as_surrogate_weights_are_refused(tmp_path):
    """300 seeded random weight files (plain, and behind a pickle header): each a SurrogateFormatError."""
    from evonas.surrogate import persist

    from evonas.errors import SurrogateFormatError

    escaped = []
    for seed in range(300):
        r = random.Random(seed)
        data = r.randbytes(4096) if seed % 2 else b"\x80\x02" + r.randbytes(r.randrange(1, 2000))
        (tmp_path / "weights.pt").write_bytes(data)
        try:
            persist.load_weights(tmp_path)
        except SurrogateFormatError:
            continue
        except Exception as e:  # collected to report every escape at once
            escaped.append((seed, type(e).__name__))
    assert not escaped, f"random weight files not refused cleanly: {escaped}"


def test_payload_model_is_refused_by_surrogate_rank(srun, tmp_path):
    folder = _model_dir(srun)
    marker = tmp_path / "payload-ran"
    state = dict(torch.load(folder / "weights.pt", weights_only=True))
    state["evil"] = Payload(str(marker))
    torch.save(state, folder / "weights.pt")
    cells = tmp_path / "cells.txt"
    cells.write_text("Tanh(Add(MM(x),MM(h_prev)))\n")
    proc = rj.run_cli("surrogate", "rank", str(folder), str(cells))
    assert not marker.exists()
    rj.assert_one_line_error(proc, "weights.pt")


# ------------------------------------------------------------------------------------------------ YAML


@pytest.mark.parametrize("where", ["evolve --config", "resume (config.yaml of a run stopped in generation 0)"])
def test_yaml_that_would_run_code_is_refused(tmp_path, where):
    marker = tmp_path / "yaml-ran"
    evil = f"generations: 1\nseed: !!python/object/apply:os.system ['touch {marker}']\n"
    if where.startswith("evolve"):
        path = tmp_path / "evil.yaml"
        path.write_text(evil)
        proc = rj.run_cli("evolve", "--config", str(path), "--out", str(tmp_path / "run"))
        rj.assert_one_line_error(proc, str(path))
    else:
        run = tmp_path / "run"
        run.mkdir()
        (run / "config.yaml").write_text(evil)
        proc = rj.run_cli("resume", str(run))
        rj.assert_one_line_error(proc, "config.yaml", alone=False)
    assert not marker.exists()


def test_music_pickle_with_a_payload_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pickle-ran"
    data = tmp_path / "jsb.pkl"
    seq = [[60, 64], [62], [65]]
    data.write_bytes(pickle.dumps({"train": [seq, Payload(str(marker))], "valid": [seq], "test": [seq]}))
    proc = rj.run_cli("train", "Tanh(Add(MM(x),MM(h_prev)))", "--task", "music", "--data", str(data),
                      "--steps", "1", "--hidden", "4", "--device", "cpu")
    assert not marker.exists(), "reading a music pickle ran code from it"
    rj.assert_one_line_error(proc, str(data), "pickle")
    pickle.loads(data.read_bytes())  # the payload is real
    assert marker.exists()
