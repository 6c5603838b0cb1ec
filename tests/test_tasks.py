"""Tasks: each loads and batches its data; bad paths and formats are one-line DataErrors."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch

from evonas.errors import ConfigError, DataError
from evonas.training.tasks import get_task
from evonas.training.tasks import synthetic as syn
from evonas.training.tasks.music import N_NOTES
from evonas.training.tasks.text import EOS, UNK, split_single, tokenize


# ---------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_and_structured():
    a = syn.generate(500, seed=7)
    assert a == syn.generate(500, seed=7)
    assert a != syn.generate(500, seed=8)
    text = " ".join(syn.generate(2000, seed=1))
    sentences = [s.split() for s in text.split(" .") if s.strip()][:-1]  # last may be cut off
    assert len(sentences) > 50
    for s in sentences:
        assert s[0] == "<" and s[2] == ":" and s[-2] == ">"
        assert s[1] == s[-1], "the name after '>' repeats the name after '<'"
        body = s[3:-2]
        assert not body or body[-1] == "_"
    assert any(len(s) == 5 for s in sentences) and max(len(s) for s in sentences) > 20  # short and long gaps


def test_synthetic_task_batches_carry_a_stream():
    task = get_task("synthetic")
    assert task.input_kind == "tokens" and task.carry and task.report_ppl
    assert task.n_inputs == len(task.vocab) == len(set(task.vocab))
    batches = list(task.batches("valid", 4, 10))
    assert batches[0].reset and not any(b.reset for b in batches[1:])
    assert batches[0].x.shape == (10, 4)
    # targets are the inputs shifted by one token along each column
    assert torch.equal(batches[0].y[:-1], batches[0].x[1:])
    assert torch.equal(batches[0].y[-1], batches[1].x[0])
    logits = torch.zeros(10, 4, task.n_outputs)
    total, count = task.loss_sum(logits, batches[0])
    assert float(count) == 40
    assert float(total) / float(count) == pytest.approx(math.log(task.n_outputs))


# ---------------------------------------------------------------- text
def _write_ptb(folder, prefix="ptb."):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{prefix}train.txt").write_text("the cat sat\nthe dog ran\n" * 20)
    (folder / f"{prefix}valid.txt").write_text("the cat ran\na bird sat\n" * 5)
    (folder / f"{prefix}test.txt").write_text("the dog sat\n" * 5)
    return folder


@pytest.mark.parametrize("prefix", ["ptb.", ""])
def test_text_word_level_layouts(tmp_path, prefix):
    task = get_task("text", str(_write_ptb(tmp_path / "d", prefix)), "word")
    assert task.vocab[:2] == [EOS, UNK]
    assert set(task.vocab) == {EOS, UNK, "the", "cat", "sat", "dog", "ran"}
    valid = [task.vocab[i] for i in task.splits["valid"].tolist()]
    assert valid[:8] == ["the", "cat", "ran", EOS, UNK, UNK, "sat", EOS]  # 'a' and 'bird' unseen in training
    b = next(iter(task.batches("train", 2, 5)))
    assert b.x.shape == (5, 2) and b.x.dtype == torch.long


def test_text_char_level_and_single_file_split(tmp_path):
    f = tmp_path / "input.txt"
    f.write_text("".join(f"line {i} of the play\n" for i in range(200)))
    task = get_task("text", str(f), "char")
    assert EOS in task.vocab and "l" in task.vocab and " " in task.vocab
    n = {k: len(v) for k, v in task.splits.items()}
    assert n["train"] > 8 * n["valid"] and n["valid"] > 0 and n["test"] > 0
    assert tokenize("ab\nc", "char") == ["a", "b", EOS, "c", EOS]
    a, b, c = split_single("x\n" * 100)
    assert a + b + c == "x\n" * 100 and a.endswith("\n") and b.endswith("\n")


@pytest.mark.parametrize("setup,match", [
    (lambda p: p / "missing", "no such file or folder"),
    (lambda p: (p / "d").mkdir() or p / "d", "folder has neither"),
    (lambda p: (p / "e.txt").write_text("  \n") and p / "e.txt", "empty"),
    (lambda p: (p / "b.txt").write_bytes(b"\xff\xfe\x00bad" * 10) and p / "b.txt", "not UTF-8"),
])
def test_text_bad_data_is_a_one_line_data_error(tmp_path, setup, match):
    path = setup(tmp_path)
    with pytest.raises(DataError, match=match) as e:
        get_task("text", str(path), "word")
    assert "\n" not in str(e.value) and str(path) in str(e.value)


# ---------------------------------------------------------------- music
MUSIC = {"train": [[[60, 64, 67], [62], [], [60, 72]], [[21, 108], [50.0]]] * 3,
         "valid": [[[60], [64], [67]]], "test": [[[60, 64], [65]]]}


def test_music_json_loads_and_batches_with_masks(tmp_path):
    f = tmp_path / "m.json"
    f.write_text(json.dumps(MUSIC))
    task = get_task("music", str(f))
    assert task.input_kind == "dense" and not task.carry and task.n_outputs == N_NOTES
    batches = list(task.batches("train", 4, 0, np.random.default_rng(0)))
    assert [b.x.shape[1] for b in batches] == [4, 2]
    b = list(task.batches("train", 2, 0))[0]  # fixed order: sequences 0 (4 steps) and 1 (2 steps)
    assert b.x.shape == (3, 2, N_NOTES) and b.mask.tolist() == [[1, 1], [1, 0], [1, 0]]
    assert b.x[0, 0, 60 - 21] == 1 and b.y[0, 0, 62 - 21] == 1 and b.x[0, 1, 0] == 1 and b.x[0, 1, 87] == 1
    total, count = task.loss_sum(torch.zeros(3, 2, N_NOTES), b)
    assert float(count) == 4 and float(total) == pytest.approx(4 * N_NOTES * math.log(2), rel=1e-5)


def test_music_batches_pad_with_zeros_and_fixed_order_batches_are_made_once(tmp_path):
    f = tmp_path / "m.json"
    f.write_text(json.dumps(MUSIC))
    task = get_task("music", str(f))
    first, again = list(task.batches("train", 4, 0)), list(task.batches("train", 4, 0))
    assert all(a is b for a, b in zip(first, again, strict=True))  # validation builds no batch twice
    b = first[0]
    assert b.mask[:, 1].tolist() == [1, 0, 0] and not b.x[1:, 1].any() and not b.y[1:, 1].any()
    shuffled = [list(task.batches("train", 4, 0, np.random.default_rng(s))) for s in (0, 0, 1)]
    assert all(torch.equal(a.x, b.x) for a, b in zip(shuffled[0], shuffled[1], strict=True))
    assert shuffled[0][0] is not shuffled[1][0]  # shuffled batches are new each time
    rows = {tuple(b.mask.sum(0).tolist()) for s in shuffled for b in s}
    assert len(rows) > 1  # the seeds order the sequences differently


def test_music_pickle_plain_data_loads(tmp_path):
    f = tmp_path / "m.pickle"
    f.write_bytes(pickle.dumps({k: [[tuple(s) for s in seq] for seq in v] for k, v in MUSIC.items()}))
    task = get_task("music", str(f))
    assert len(task.rolls["train"]) == 6


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("content,match", [
    (b"", "empty"),
    (b"{not json", "not valid JSON"),
    (json.dumps({"train": []}).encode(), "keys train, valid, test"),
    (json.dumps({**MUSIC, "valid": [[[60], [12]]]}).encode(), r"valid\[0\]\[1\] has 12"),
    (json.dumps({**MUSIC, "test": [[[60], "x"]]}).encode(), "must be a list of MIDI notes"),
    (pickle.dumps({**MUSIC, "train": [Evil()]}), "refusing to load builtins.print"),
    (pickle.dumps(np.zeros(3)), "refusing to load numpy"),
])
def test_music_bad_files_are_one_line_data_errors(tmp_path, capsys, content, match):
    f = tmp_path / ("m.pkl" if content[:1] == b"\x80" else "m.json")
    f.write_bytes(content)
    with pytest.raises(DataError, match=match) as e:
        get_task("music", str(f))
    assert "\n" not in str(e.value) and str(f) in str(e.value)
    assert "pwned" not in capsys.readouterr().out


def test_missing_data_and_unknown_task():
    with pytest.raises(DataError, match="no such file"):
        get_task("music", "/nonexistent/jsb.json")
    with pytest.raises(DataError, match="needs a data path"):
        get_task("text", None)
    with pytest.raises(ConfigError, match="unknown task"):
        get_task("speech")
