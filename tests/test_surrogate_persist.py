"""Saving and loading surrogates: exact round trip, and every kind of bad file refused without running code."""

from __future__ import annotations

import builtins
import json
import pickle

import pytest
import torch
from evonas.surrogate.api import Surrogate, make_surrogate
from evonas.surrogate.persist import FORMAT_VERSION, META, WEIGHTS
from evonas.surrogate.rankers import kinds

from evonas.errors import SurrogateFormatError

CELLS = ["Tanh(Add(MM(x),MM(h_prev)))", "Gate3(Tanh(MM(h_prev)),h_prev,Sigmoid(Add(MM(x),MM(h_prev))))",
         "Sub(MM(x),Tanh(h_prev))", "Mult(Sigmoid(MM(x)),Tanh(Memory(Add(c_prev,MM(x)))))"]
RECORDS = [{"cell": c, "score": float(i), "status": "ok"} for i, c in enumerate(CELLS)] + [
    {"cell": "ReLU(Add(MM(x),h_prev))", "score": None, "status": "diverged"}]


class Payload:
    """Unpickling this creates a file: a real code-execution payload (builtins.open with mode 'w')."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = {}
    for kind in kinds():
        s = make_surrogate(kind, seed=0, hidden=8, head=8)
        s.fit(RECORDS, epochs=2)
        out[kind] = (s, s.save(tmp_path_factory.mktemp(kind) / "model"))
    return out


@pytest.mark.parametrize("kind", kinds())
def test_round_trip_gives_identical_scores_and_metadata(saved, kind):
    s, folder = saved[kind]
    loaded = Surrogate.load(folder)
    assert loaded.score(CELLS) == s.score(CELLS)
    meta = json.loads((folder / META).read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["kind"] == kind
    assert meta["sizes"]["hidden"] == 8 and meta["vocab"][:4] == ["x", "x_prev", "h_prev", "c_prev"]
    assert set(meta["normaliser"]) == {"center", "scale", "penalty"}
    assert len(meta["data_digest"]) == 64 and meta["n_records"] == len(RECORDS)


def _copy(folder, tmp_path):
    dst = tmp_path / "copy"
    dst.mkdir()
    for name in (META, WEIGHTS):
        (dst / name).write_bytes((folder / name).read_bytes())
    return dst


def _edit_meta(folder, **changes):
    meta = json.loads((folder / META).read_text())
    meta.update(changes)
    (folder / META).write_text(json.dumps(meta))


def test_other_format_version_is_refused(saved, tmp_path):
    folder = _copy(saved["treelstm"][1], tmp_path)
    _edit_meta(folder, format_version=FORMAT_VERSION + 1)
    with pytest.raises(SurrogateFormatError, match="format version 2"):
        Surrogate.load(folder)


@pytest.mark.parametrize("change,match", [
    ({"kind": "transformer"}, "unknown model kind"),
    ({"vocab": ["x", "h_prev"]}, "vocabulary"),
    ({"format": "something-else"}, "not an evonas surrogate"),
    ({"sizes": {"hidden": 9, "head": 8}}, "weights do not fit"),
    ({"normaliser": {"center": 0.0}}, "bad model description"),
])
def test_inconsistent_metadata_is_refused(saved, tmp_path, change, match):
    folder = _copy(saved["treelstm"][1], tmp_path)
    _edit_meta(folder, **change)
    with pytest.raises(SurrogateFormatError, match=match):
        Surrogate.load(folder)


def test_corrupt_files_are_refused(saved, tmp_path):
    folder = _copy(saved["gnn"][1], tmp_path)
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(SurrogateFormatError, match="corrupt"):
        Surrogate.load(folder)
    (folder / META).write_text("{ not json")
    with pytest.raises(SurrogateFormatError, match="not valid JSON"):
        Surrogate.load(folder)
    with pytest.raises(SurrogateFormatError, match="not a surrogate model folder"):
        Surrogate.load(tmp_path / "missing")


def test_state_dict_with_wrong_keys_is_refused(saved, tmp_path):
    folder = _copy(saved["treelstm"][1], tmp_path)
    state = torch.load(folder / WEIGHTS, weights_only=True)
    state["extra"] = torch.zeros(1)
    torch.save(state, folder / WEIGHTS)
    with pytest.raises(SurrogateFormatError, match="weights do not fit"):
        Surrogate.load(folder)
    torch.save({"a": "not a tensor"}, folder / WEIGHTS)
    with pytest.raises(SurrogateFormatError, match="plain state dict"):
        Surrogate.load(folder)


@pytest.mark.parametrize("how", ["torch.save", "raw pickle"])
def test_pickle_with_a_payload_is_refused_and_never_run(saved, tmp_path, how):
    folder = _copy(saved["treelstm"][1], tmp_path)
    marker = tmp_path / "pwned"
    state = dict(torch.load(folder / WEIGHTS, weights_only=True))
    state["evil"] = Payload(str(marker))
    if how == "torch.save":
        torch.save(state, folder / WEIGHTS)
    else:
        (folder / WEIGHTS).write_bytes(pickle.dumps(state))
    with pytest.raises(SurrogateFormatError, match="unsafe"):
        Surrogate.load(folder)
    assert not marker.exists()
    # The payload is real: an unsafe load would have run it.
    if how == "torch.save":
        torch.load(folder / WEIGHTS, weights_only=False)
    else:
        pickle.loads((folder / WEIGHTS).read_bytes())
    assert marker.exists()


def test_saving_over_a_file_is_refused(tmp_path):
    target = tmp_path / "model"
    target.write_text("x")
    with pytest.raises(SurrogateFormatError, match="not a folder"):
        make_surrogate("treelstm", hidden=8, head=8).save(target)
