"""Bad input through the real CLI (`evonas` in a fresh process): malformed YAML, unknown keys, wrong types,
missing or empty data folders, data files in the wrong format, bad cells and paths.

Each must give exactly one stderr line `error: <what is wrong, naming the key/value/file>`, exit code 2 and
no traceback; `evonas --debug ...` shows the traceback as well.
"""

from __future__ import annotations

import json
import pickle

import pytest
import reliability_jobs as rj

# A run that would finish in seconds if the input were good (so a missed check cannot hang the test).
SMALL = "generations: 0\npopulation: 1\nworkers: 1\ndevice: cpu\nseed_cells: []\ntrain: {hidden: 4, steps: 1}\n"


def evolve_with(tmp_path, text: str, *extra: str):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    return cfg, rj.run_cli("evolve", "--config", str(cfg), "--out", str(tmp_path / "run"), *extra)


CONFIG_CASES = [
    # (config text, fragments the error line must hold)
    ("population: [4, 5\n", ["not valid YAML"]),
    ("- population\n- 4\n", ["must hold a mapping"]),
    ("population: 4\npopulaton: 5\n", ["'populaton'"]),
    ("population: many\n", ["population", "'many'"]),
    ("generations: 1.5\n", ["generations", "1.5"]),
    ("offspring: true\n", ["offspring", "True"]),
    ("device: gpu\n", ["device", "'gpu'"]),
    ("backend: slurm\n", ["backend", "'slurm'"]),
    ("surrogate: oracle\n", ["surrogate", "'oracle'"]),
    ("cx_prob: 2\n", ["cx_prob", "2"]),
    ("ops: [MM, Foo]\n", ["ops", "Foo"]),
    pytest.param("ops:\n", ["ops", "None"], id="ops: (empty)"),  # bug B5 (fixed)
    pytest.param("ops: [Foo, 1]\n", ["ops", "Foo"], id="ops: [Foo, 1]"),  # bug B5 (fixed)
    ("filters: 3\n", ["filters", "3"]),
    ("filters: {max_nodes: lots}\n", ["max_nodes", "lots"]),
    ("mutation: {teleport: 1}\n", ["mutation", "'teleport'"]),
    ("train: {lr: fast}\n", ["lr", "'fast'"]),
    ("train: {hiden: 8}\n", ["hiden"]),
    ("train: {steps: -5}\n", ["steps", "-5"]),
    ("train: [1, 2]\n", ["train"]),
    ("task: poetry\n", ["task", "'poetry'"]),
    ("optuna: study.csv\n", ["Optuna study file", "study.csv", ".log"]),
    ("optuna: 3\n", ["optuna", "3"]),
]


@pytest.mark.parametrize("text,fragments", CONFIG_CASES,
                         ids=[c.id if hasattr(c, "id") else c[0].strip()[:24] for c in CONFIG_CASES])
def test_bad_config_is_one_line_naming_the_problem(tmp_path, text, fragments):
    cfg, proc = evolve_with(tmp_path, text)
    rj.assert_one_line_error(proc, *fragments, alone=False)
    others = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("error: ")]
    assert all(ln.startswith("run folder: ") for ln in others), proc.stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir()), "a bad config left a run folder"


def test_missing_config_file(tmp_path):
    proc = rj.run_cli("evolve", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "run"))
    rj.assert_one_line_error(proc, str(tmp_path / "nope.yaml"), "does not exist")


def test_bad_option_value_is_a_usage_error_without_traceback(tmp_path):
    proc = rj.run_cli("evolve", "--population", "many", "--out", str(tmp_path / "run"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--population" in proc.stderr and "'many'" in proc.stderr


def test_unknown_seed_cell_is_one_line_and_leaves_no_trap(tmp_path):
    cfg, proc = evolve_with(tmp_path, SMALL.replace("seed_cells: []", "seed_cells: [lstmm]"))
    rj.assert_one_line_error(proc, "lstmm", alone=False)
    cfg.write_text(SMALL)  # the user fixes the typo and runs the same command again
    again = rj.run_cli("evolve", "--config", str(cfg), "--out", str(tmp_path / "run"))
    assert again.returncode == 0, again.stderr[-2000:]


def test_debug_flag_shows_the_traceback(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("population: many\n")
    proc = rj.run_cli("--debug", "evolve", "--config", str(cfg), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr and "ConfigError" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("error: population must be")


# ------------------------------------------------------------------------------------------------ data


def music_json(**override) -> str:
    seq = [[60, 64], [62], [], [65, 69]]
    data = {"train": [seq, seq], "valid": [seq], "test": [seq]}
    data.update(override)
    return json.dumps(data)


def data_case(tmp_path, case: str) -> tuple[str, str, list[str]]:
    """(task, data path, fragments of the expected error) for one kind of bad data."""
    if case == "missing folder":
        return "text", str(tmp_path / "nowhere"), [str(tmp_path / "nowhere"), "no such file"]
    if case == "empty folder":
        (tmp_path / "empty").mkdir()
        return "text", str(tmp_path / "empty"), [str(tmp_path / "empty")]
    if case == "empty text file":
        (tmp_path / "t.txt").write_text("")
        return "text", str(tmp_path / "t.txt"), [str(tmp_path / "t.txt"), "empty"]
    if case == "binary text file":
        (tmp_path / "t.txt").write_bytes(b"\xff\xfe\x00\x81" * 100)
        return "text", str(tmp_path / "t.txt"), [str(tmp_path / "t.txt"), "UTF-8"]
    if case == "ptb folder with an empty split":
        d = tmp_path / "ptb"
        d.mkdir()
        for s in ("train", "valid", "test"):
            (d / f"ptb.{s}.txt").write_text("the cat sat on the mat\n" * 20 if s != "valid" else "")
        return "text", str(d), [str(d / "ptb.valid.txt")]
    if case == "music missing":
        return "music", str(tmp_path / "jsb.json"), [str(tmp_path / "jsb.json")]
    if case == "music not json":
        (tmp_path / "jsb.json").write_text("{train: [[60]]")
        return "music", str(tmp_path / "jsb.json"), [str(tmp_path / "jsb.json"), "JSON"]
    if case == "music a list":
        (tmp_path / "jsb.json").write_text("[[60, 62]]")
        return "music", str(tmp_path / "jsb.json"), [str(tmp_path / "jsb.json"), "train, valid, test"]
    if case == "music bad note":
        (tmp_path / "jsb.json").write_text(music_json(valid=[[[60], [200]]]))
        return "music", str(tmp_path / "jsb.json"), [str(tmp_path / "jsb.json"), "200"]
    if case == "music text file":
        (tmp_path / "jsb.json").write_text("the cat sat on the mat\n")
        return "music", str(tmp_path / "jsb.json"), [str(tmp_path / "jsb.json")]
    if case == "music pickle with a class":
        (tmp_path / "jsb.pkl").write_bytes(pickle.dumps({"train": [[[60]]], "valid": [[[complex(60, 1)]]], "test": []}))
        return "music", str(tmp_path / "jsb.pkl"), [str(tmp_path / "jsb.pkl"), "pickle"]
    raise ValueError(case)


DATA_CASES = ["missing folder", "empty folder", "empty text file", "binary text file",
              "ptb folder with an empty split", "music missing", "music not json", "music a list", "music bad note",
              "music text file", "music pickle with a class"]


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_data_through_train_is_one_line_naming_the_file(tmp_path, case):
    task, path, fragments = data_case(tmp_path, case)
    proc = rj.run_cli("train", "Tanh(Add(MM(x),MM(h_prev)))", "--task", task, "--data", path, "--steps", "1",
                      "--hidden", "4", "--device", "cpu")
    rj.assert_one_line_error(proc, *fragments)


@pytest.mark.parametrize("case", ["missing folder", "empty folder", "music not json"])
def test_bad_data_through_evolve_is_one_line_before_any_training(tmp_path, case):
    task, path, fragments = data_case(tmp_path, case)
    _, proc = evolve_with(tmp_path, SMALL, "--task", task, "--data", path)
    rj.assert_one_line_error(proc, *fragments, alone=False)


# ------------------------------------------------------------------------------------------------ cells, paths


@pytest.mark.parametrize("cell,fragments", [
    ("Tanh(Add(MM(x),MM(h_prev))", ["column"]),
    ("Tanh(Foo(x))", ["Foo"]),
    ("Tanh(MM(x))", ["state"]),
    ("", ["column"]),
])
def test_bad_cell_through_train_is_one_line(cell, fragments):
    proc = rj.run_cli("train", cell, "--steps", "1", "--hidden", "4", "--device", "cpu")
    rj.assert_one_line_error(proc, *fragments)


@pytest.mark.parametrize("command", ["resume", "archive export", "archive show"])
def test_missing_run_folder_is_one_line(tmp_path, command):
    proc = rj.run_cli(*command.split(), str(tmp_path / "no-such-run"))
    rj.assert_one_line_error(proc, str(tmp_path / "no-such-run"))
