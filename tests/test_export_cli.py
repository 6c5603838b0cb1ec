"""`evonas export` through click's CliRunner: library cells, cell texts and run folders (winner or best cell)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from evonas.cli.main import cli

from evonas.cells import canonical_text, parse
from evonas.cells.library import resolve
from evonas.nn.compiler import compile_cell


def run(*args: str):
    return CliRunner().invoke(cli, list(args), obj={}, catch_exceptions=False)


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"cli_exported_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_run(root: Path, winner: bool) -> tuple[Path, torch.nn.Module | None]:
    """A run folder as a search leaves it (config.yaml, best_cells.json), with a confirmed winner if asked."""
    run_dir = root / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"task": "music", "data": "jsb", "ops": "core",
                                                         "train": {"hidden": 12, "epochs": 2}}))
    best = {"best": [{"cell": canonical_text(resolve("gru")), "written": "Gate3(Tanh(Add(MM(x),MM(Mult(Sigmoid("
                      "Add(MM(x),MM(h_prev))),h_prev)))),h_prev,Sigmoid(Add(MM(x),MM(h_prev))))", "seed": "gru",
                      "status": "ok", "valid_loss": 8.7, "test_loss": 8.8, "params": 1234, "generation": 0},
                     {"cell": canonical_text(resolve("lstm")), "written": "x", "valid_loss": 9.1}],
            "baselines": []}
    (run_dir / "best_cells.json").write_text(json.dumps(best))
    if not winner:
        return run_dir, None
    (run_dir / "winner").mkdir()
    module = compile_cell(resolve("lstm"), 10, 12)
    torch.save(module.state_dict(), run_dir / "winner" / "cell.pt")
    (run_dir / "winner" / "meta.json").write_text(json.dumps({"cell": canonical_text(resolve("lstm")), "input_size": 10,
                                                              "hidden_size": 12, "valid_loss": 8.5,
                                                              "test_loss": 8.6, "task": "music"}))
    return run_dir, module


def test_export_library_cell(tmp_path: Path) -> None:
    result = run("export", "gru", "--out", str(tmp_path / "d"), "--hidden-size", "16", "--input-size", "4")
    assert result.exit_code == 0, result.output
    g = json.loads((tmp_path / "d" / "genotype.json").read_text())
    assert (g["input_size"], g["hidden_size"]) == (4, 16) and g["source"]["kind"] == "library"
    assert g["source"]["name"] == "gru" and g["cell"] == canonical_text(resolve("gru"))
    assert not (tmp_path / "d" / "weights.pt").exists()
    assert load(tmp_path / "d" / "cell.py").RNN().hidden_size == 16


def test_export_cell_text_defaults_input_to_hidden(tmp_path: Path) -> None:
    result = run("export", "Tanh(Add(x, h_prev))", "--out", str(tmp_path / "d"), "--hidden-size", "8")
    assert result.exit_code == 0, result.output
    g = json.loads((tmp_path / "d" / "genotype.json").read_text())
    assert (g["input_size"], g["hidden_size"], g["same_size_required"]) == (8, 8, True)
    assert g["written"] == "Tanh(Add(x,h_prev))" and g["source"] == {"kind": "text"}


def test_export_run_winner_copies_weights_that_load(tmp_path: Path) -> None:
    run_dir, module = make_run(tmp_path, winner=True)
    result = run("export", str(run_dir), "--out", str(tmp_path / "d"))
    assert result.exit_code == 0, result.output
    out = tmp_path / "d"
    g = json.loads((out / "genotype.json").read_text())
    assert g["cell"] == canonical_text(resolve("lstm")) and (g["input_size"], g["hidden_size"]) == (10, 12)
    src = g["source"]
    assert src["kind"] == "run" and src["run"] == str(run_dir.resolve()) and src["task"] == "music"
    assert (src["valid_loss"], src["test_loss"]) == (8.5, 8.6) and "winner" in src["choice"]
    rnn = load(out / "cell.py").RNN()
    rnn.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    x = torch.randn(6, 2, 10)
    with torch.no_grad():
        assert torch.allclose(rnn(x)[0], module(x)[0], atol=1e-6)
    result = run("export", str(run_dir), "--out", str(tmp_path / "e"), "--hidden-size", "64")
    assert result.exit_code == 2 and "differs from the trained weights" in result.output


def test_export_run_without_winner_takes_the_best_cell(tmp_path: Path) -> None:
    run_dir, _ = make_run(tmp_path, winner=False)
    result = run("export", str(run_dir), "--out", str(tmp_path / "d"))
    assert result.exit_code == 0, result.output
    g = json.loads((tmp_path / "d" / "genotype.json").read_text())
    assert g["cell"] == canonical_text(resolve("gru")) and (g["input_size"], g["hidden_size"]) == (12, 12)
    assert g["source"]["valid_loss"] == 8.7 and g["source"]["test_loss"] == 8.8 and g["op_set"] == "core"
    assert g["written"].startswith("Gate3(") and not (tmp_path / "d" / "weights.pt").exists()


@pytest.mark.parametrize("case,message", [
    ("empty", "neither winner/meta.json nor best_cells.json"),
    ("no_best", "lists no trained cell"),
    ("bad_meta", "not valid JSON"),
    ("bad_cell", "bad cell"),
    ("bad_size", "'hidden_size' must be a positive integer"),
    ("bad_weights", "does not fit the cell"),
])
def test_bad_run_folders_are_one_line_errors(tmp_path: Path, case: str, message: str) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    winner = run_dir / "winner"
    if case == "no_best":
        (run_dir / "best_cells.json").write_text('{"best": [], "baselines": []}')
    elif case != "empty":
        winner.mkdir()
        meta = {"cell": "lstm", "input_size": 3, "hidden_size": 4}
        if case == "bad_cell":
            meta["cell"] = "Tanh(MM(x)"
        if case == "bad_size":
            meta["hidden_size"] = 0
        (winner / "meta.json").write_text("{" if case == "bad_meta" else json.dumps(meta))
        if case == "bad_weights":
            torch.save(compile_cell(parse("Tanh(Add(MM(x),MM(h_prev)))"), 3, 4).state_dict(), winner / "cell.pt")
    result = run("export", str(run_dir), "--out", str(tmp_path / "d"))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_bad_cell_and_existing_export(tmp_path: Path) -> None:
    result = run("export", "Tanh(MM(x)", "--out", str(tmp_path / "d"))
    assert result.exit_code == 2 and "error:" in result.stderr
    assert run("export", "lstm", "--out", str(tmp_path / "d")).exit_code == 0
    result = run("export", "gru", "--out", str(tmp_path / "d"))
    assert result.exit_code == 2 and "--force" in result.stderr
    assert run("export", "gru", "--out", str(tmp_path / "d"), "--force").exit_code == 0
