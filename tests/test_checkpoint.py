"""Checkpoints: atomic JSON with the previous one kept, fallback on a bad file, versions, RNG states."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from evonas.errors import CheckpointError
from evonas.store.checkpoint import (
    CHECKPOINT,
    FORMAT_VERSION,
    PREVIOUS,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)


def state(gen: int) -> dict:
    return {"generation": gen, "population": [["Tanh(MM(h_prev))", 1.5]], "best": float("inf"), "nan": float("nan")}


def test_save_load_and_previous_kept(tmp_path):
    save_checkpoint(tmp_path, state(1))
    assert not (tmp_path / PREVIOUS).exists()
    got = load_checkpoint(tmp_path)
    assert got["format_version"] == FORMAT_VERSION and got["generation"] == 1 and got["best"] == float("inf")
    assert got["nan"] != got["nan"]
    save_checkpoint(tmp_path, state(2))
    save_checkpoint(tmp_path, state(3))
    assert load_checkpoint(tmp_path)["generation"] == 3
    assert json.loads((tmp_path / PREVIOUS).read_text())["generation"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT, PREVIOUS]  # no temporary files left


@pytest.mark.parametrize("damage", ["truncate", "garble", "empty", "delete", "not-a-dict"])
def test_bad_latest_falls_back_to_previous_with_warning(tmp_path, damage):
    save_checkpoint(tmp_path, state(1))
    save_checkpoint(tmp_path, state(2))
    cur = tmp_path / CHECKPOINT
    text = cur.read_text()
    if damage == "truncate":
        cur.write_text(text[: len(text) // 2])
    elif damage == "garble":
        cur.write_bytes(b"\xff\x00garbage" + text.encode()[10:])
    elif damage == "empty":
        cur.write_text("")
    elif damage == "delete":
        cur.unlink()
    else:
        cur.write_text("[1, 2, 3]")
    with pytest.warns(UserWarning, match=CHECKPOINT) as rec:
        got = load_checkpoint(tmp_path)
    assert got["generation"] == 1
    assert PREVIOUS in str(rec[0].message)
    # saving again keeps the good previous checkpoint instead of rotating the bad one into its place
    save_checkpoint(tmp_path, state(3))
    assert load_checkpoint(tmp_path)["generation"] == 3
    assert json.loads((tmp_path / PREVIOUS).read_text())["generation"] == 1


def test_both_bad_or_none_is_an_error_naming_the_files(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_checkpoint(tmp_path)
    (tmp_path / CHECKPOINT).write_text('{"format_version": 1, "generat')
    with pytest.raises(CheckpointError, match=f"{CHECKPOINT}.*{PREVIOUS}"):
        load_checkpoint(tmp_path)
    (tmp_path / PREVIOUS).write_text("not json")
    with pytest.raises(CheckpointError, match=f"{CHECKPOINT}.*truncated or garbled.*{PREVIOUS}"):
        load_checkpoint(tmp_path)


def test_other_format_version_is_refused(tmp_path):
    save_checkpoint(tmp_path, state(1))
    (tmp_path / CHECKPOINT).write_text(json.dumps({"format_version": 999, "generation": 5}))
    with pytest.raises(CheckpointError, match="format version 999"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="format version 7"):
        save_checkpoint(tmp_path, {"format_version": 7})


def test_kill_during_saves_always_leaves_a_good_checkpoint(tmp_path):
    """SIGKILL a process that saves checkpoints in a loop; the survivor is always a complete one."""
    script = textwrap.dedent(f"""
        from evonas.store.checkpoint import save_checkpoint
        i = 0
        while True:
            i += 1
            save_checkpoint({str(tmp_path)!r}, {{"generation": i, "pad": "x" * 200_000}})
            if i == 3:
                print("ready", flush=True)
    """)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        proc.kill()
        proc.wait()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the latest file itself is complete: no fallback needed
            got = load_checkpoint(tmp_path)
        assert got["generation"] >= 3 and len(got["pad"]) == 200_000
    save_checkpoint(tmp_path, {"generation": 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT, PREVIOUS]  # stale temporary files gone


def test_rng_states_round_trip_exactly_through_json(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.random(), np.random.rand(3), torch.rand(3)
    own = random.Random(7)
    saved = json.loads(json.dumps(capture_rng(torch=True)))
    own_saved = json.loads(json.dumps(capture_rng(own)))
    expect = (random.random(), np.random.rand(4).tolist(), np.random.randn(), torch.rand(4).tolist(), own.random())
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    own.seed(99)
    restore_rng(saved)
    restore_rng(own_saved, own)
    assert (random.random(), np.random.rand(4).tolist(), np.random.randn(), torch.rand(4).tolist(),
            own.random()) == expect
    with pytest.raises(CheckpointError, match="bad RNG state"):
        restore_rng({"python": [3, [1, 2], None]})


def test_checkpoint_is_plain_json(tmp_path):
    save_checkpoint(tmp_path, {"rng": capture_rng(), "x": [1, 2]})
    raw = (tmp_path / CHECKPOINT).read_text()
    assert json.loads(raw)["x"] == [1, 2]
    assert os.stat(tmp_path / CHECKPOINT).st_size == len(raw.encode())


def test_previous_is_a_separate_file_after_the_next_save(tmp_path):
    save_checkpoint(tmp_path, state(1))
    save_checkpoint(tmp_path, state(2))
    assert os.stat(tmp_path / CHECKPOINT).st_ino != os.stat(tmp_path / PREVIOUS).st_ino
    (tmp_path / CHECKPOINT).write_text("garbage")  # damaging the latest leaves the previous intact
    with pytest.warns(UserWarning):
        assert load_checkpoint(tmp_path)["generation"] == 1


def test_checkpoint_is_strict_json_and_non_finite_numbers_come_back(tmp_path):
    save_checkpoint(tmp_path, {"best": float("inf"), "worst": float("-inf"), "nan": float("nan"),
                               "nested": [{"x": float("nan")}, 1.5], "ok": {"__float__": "not a marker"}})
    raw = (tmp_path / CHECKPOINT).read_text()

    def refuse(token: str):
        raise AssertionError(f"non-standard JSON token {token} in the checkpoint")

    strict = json.loads(raw, parse_constant=refuse)  # what a strict JSON reader sees
    assert strict["best"] == {"__float__": "inf"} and strict["nan"] == {"__float__": "nan"}
    got = load_checkpoint(tmp_path)
    assert got["best"] == float("inf") and got["worst"] == float("-inf") and got["nan"] != got["nan"]
    assert got["nested"][0]["x"] != got["nested"][0]["x"] and got["nested"][1] == 1.5
    assert got["ok"] == {"__float__": "not a marker"}


def test_old_checkpoints_with_bare_nan_tokens_still_load(tmp_path):
    (tmp_path / CHECKPOINT).write_text('{"format_version": 1, "generation": 4, "best": Infinity, "x": NaN}')
    got = load_checkpoint(tmp_path)
    assert got["generation"] == 4 and got["best"] == float("inf") and got["x"] != got["x"]
    save_checkpoint(tmp_path, {**got, "generation": 5})  # re-saved in the current format, the old one kept
    assert load_checkpoint(tmp_path)["format_version"] == FORMAT_VERSION == 2
    assert json.loads((tmp_path / PREVIOUS).read_text())["format_version"] == 1


@pytest.fixture
def fake_cuda_rng(monkeypatch):
    """Two simulated CUDA devices with their own generator states (torch.cuda's RNG functions monkeypatched)."""
    states = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    restored: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda new: restored.append([s.clone() for s in new]))
    return states, restored


def test_cuda_rng_states_are_saved_and_restored(tmp_path, fake_cuda_rng, monkeypatch):
    states, restored = fake_cuda_rng
    save_checkpoint(tmp_path, {"rng": capture_rng(torch=True)})
    saved = load_checkpoint(tmp_path)["rng"]
    assert saved["cuda"] == [s.tolist() for s in states]
    restore_rng(saved)
    assert [[t.tolist() for t in call] for call in restored] == [[s.tolist() for s in states]]
    assert all(t.dtype == torch.uint8 for t in restored[0])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # resumed where fewer GPUs exist
    with pytest.warns(UserWarning, match="2 CUDA devices, this machine has 1"):
        restore_rng(saved)
    assert [t.tolist() for t in restored[-1]] == [states[0].tolist()]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # resumed on a machine without CUDA
    restore_rng(saved)
    assert len(restored) == 2


def test_cuda_rng_is_not_captured_where_cuda_was_never_used(fake_cuda_rng, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # asking would create a CUDA context
    assert "cuda" not in capture_rng(torch=True)


def test_a_save_after_one_killed_between_keeping_and_replacing_leaves_no_stray_file(tmp_path):
    """Killed right after keeping the previous copy, a save leaves checkpoint.json and .prev.json as two links to
    one file; the next save must still end with exactly the two files (rename of a link onto its twin is a no-op)."""
    save_checkpoint(tmp_path, {"generation": 1})
    os.link(tmp_path / CHECKPOINT, tmp_path / "twin")
    os.replace(tmp_path / "twin", tmp_path / PREVIOUS)
    save_checkpoint(tmp_path, {"generation": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT, PREVIOUS]
    assert load_checkpoint(tmp_path)["generation"] == 2
