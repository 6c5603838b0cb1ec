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
