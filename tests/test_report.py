"""`evonas report RUN`: HTML with every section and embedded images, from a tiny search it runs itself."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil

import pytest
from click.testing import CliRunner
from evonas.cli.main import cli
from fake_training import FakeResult, Inline

from evonas.cells import node_count, parse
from evonas.errors import CheckpointError
from evonas.evaluation import Job
from evonas.evolution.config import RunConfig
from evonas.evolution.loop import Search
from evonas.reporting.report import (
    RecordingScreen,
    best_so_far,
    failure_reason,
    failures,
    load_run,
    operator_frequencies,
    prediction_pairs,
    write_report,
)
from evonas.store.archive import Archive

BUDGET = {"task": "fake", "steps": 1}


class SizeScreen:
    """Prefers small cells; learns nothing."""

    def score(self, cells):
        return [1.0 + 0.02 * node_count(parse(c)) for c in cells]

    def learn(self, records):
        pass


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = RunConfig.from_dict(dict(generations=3, population=6, offspring=5, seed=1,
                                   seed_cells=["tanh_rnn", "lstm", "gru"], surrogate="none"))
    Search(cfg, run, evaluator=Inline(timeouts=True), screen=RecordingScreen(SizeScreen(), run), budget=BUDGET,
           stdout=io.StringIO(), stderr=io.StringIO()).run()
    return run


def _sections(page: str) -> set[str]:
    return set(re.findall(r'<h2 id="([a-z-]+)"', page))


def test_report_has_every_section_and_embedded_images(run_dir):
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    page = path.read_text()
    assert _sections(page) == {"confirmation", "best-so-far", "surrogate", "rungs", "operators", "top-cells",
                               "failures"}
    assert "This run has not been confirmed: <code>evonas confirm" in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 5
    for b64 in images:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'src="http' not in page and "<link" not in page  # self-contained
    for name in ("best_so_far", "surrogate", "rungs", "operators", "failures"):
        assert (run_dir / "report" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert page.count('<div class="cell">') == 10
    for seed in ("tanh_rnn", "lstm", "gru"):
        assert f"<td>{seed}</td>" in page
    assert "h_t = " in page  # equations of the top cells
    assert "diverged: loss is nan at step N" in page  # failures grouped by reason, numbers blanked
    if shutil.which("dot"):
        assert page.count("<svg") == 10 and (run_dir / "report" / "cell-01.svg").exists()
    else:
        assert "Graphviz <code>dot</code> is not installed" in page and "<svg" not in page


def test_report_without_graphviz_notes_it(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    page = write_report(run_dir, tmp_path / "r.html").read_text()
    assert "<svg" not in page and "Graphviz <code>dot</code> is not installed" in page
    assert (run_dir / "report" / "cell-01.dot").read_text().startswith("digraph")


def test_numbers_behind_the_figures(run_dir):
    data = load_run(run_dir)
    rows = data.rows
    curve = best_so_far(rows)
    assert len(curve) == len(rows) == 3 + 6 + 3 * 5
    finite = [v for v in curve if v is not None]
    assert finite == sorted(finite, reverse=True)  # never gets worse
    ok = [r["valid_loss"] for r in rows if r["status"] == "ok"]
    assert curve[-1] == min(ok)
    assert set(data.seeds) == {"tanh_rnn", "lstm", "gru"}
    # predictions recorded by the wrapper pair with the offspring of generations 1..3, not the seeds
    pairs = prediction_pairs(data)
    assert pairs and set(pairs) <= {1, 2, 3}
    for g, ps in pairs.items():
        for p, m in ps:
            cell = next(r for r in rows if r["valid_loss"] == m and r["generation"] == g)["key"]
            assert p == pytest.approx(1.0 + 0.02 * node_count(parse(cell)))
    freq = operator_frequencies(rows)
    assert set(freq) == {0, 1, 2, 3}
    for shares in freq.values():
        assert sum(shares.values()) == pytest.approx(1.0)
        assert not {"x", "h_prev", "c_prev", "x_prev"} & set(shares)
    n_bad = sum(r["status"] != "ok" for r in rows)
    assert sum(n for _, n, _ in failures(rows)) == n_bad


def test_failure_reason_blanks_numbers():
    assert failure_reason("timed out after 31.5 s") == failure_reason("timed out after 45 s") == "timed out after N s"
    assert failure_reason("") == "(no reason given)"


def test_tau_and_missing_predictions_are_reported(tmp_path):
    """A hand-built run without predictions: the page says so and still shows the logged tau."""
    with Archive(tmp_path) as a:
        for i, key in enumerate(["Tanh(Add(MM(x),MM(h_prev)))", "ReLU(Add(MM(x),MM(h_prev)))"]):
            a.add(Job(key=key, cell=key, config=BUDGET, generation=i), FakeResult(key, "ok", "", 2.0 - i, 10))
    (tmp_path / "logbook.jsonl").write_text(json.dumps({"gen": 0, "tau": None}) + "\n"
                                            + json.dumps({"gen": 1, "tau": 0.42}) + "\n")
    page = write_report(tmp_path).read_text()
    assert "per-cell surrogate predictions are not recorded" in page
    assert "<td>1</td><td>0.420</td>" in page
    assert "no seed cells recorded" in page


@pytest.mark.parametrize("setup, message", [
    (lambda p: p / "missing", "no run folder"),
    (lambda p: p, "has no archive.sqlite"),
    (lambda p: (p / "archive.sqlite").write_bytes(b"garbage" * 200) and p, "corrupt|not an SQLite|cannot open"),
])
def test_bad_run_folder_is_one_line_error(tmp_path, setup, message):
    run = setup(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        write_report(run)
    result = CliRunner().invoke(cli, ["report", str(run)], obj={})
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1


def test_empty_archive_and_bad_logbook(tmp_path):
    Archive(tmp_path).close()
    with pytest.raises(CheckpointError, match="no evaluations"):
        load_run(tmp_path)
    key = "Tanh(Add(MM(x),MM(h_prev)))"
    with Archive(tmp_path) as a:
        a.add(Job(key=key, cell=key, config=BUDGET), FakeResult(key, "ok", "", 1.0, 10))
    (tmp_path / "logbook.jsonl").write_text("{not json\n")
    with pytest.raises(CheckpointError, match="logbook.jsonl line 1"):
        load_run(tmp_path)


def test_cli_writes_report(run_dir):
    result = CliRunner().invoke(cli, ["report", str(run_dir)], obj={})
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output and (run_dir / "report.html").exists()


def test_cells_show_out_dot(tmp_path):
    result = CliRunner().invoke(cli, ["cells", "show", "lstm", "--out", str(tmp_path / "lstm.dot")], obj={})
    assert result.exit_code == 0, result.output
    dot = (tmp_path / "lstm.dot").read_text()
    assert dot.startswith("digraph cell {") and 'label="lstm"' in dot and "Memory\\n(c_t)" in dot
    assert "canonical:" in result.output


def test_cells_show_out_svg_needs_graphviz(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    result = CliRunner().invoke(cli, ["cells", "show", "gru", "--out", str(tmp_path / "gru.svg")], obj={})
    assert result.exit_code == 2 and "apt-get install graphviz" in result.output
    assert not (tmp_path / "gru.svg").exists()
    result = CliRunner().invoke(cli, ["cells", "show", "gru", "--out", str(tmp_path / "gru.pdf")], obj={})
    assert result.exit_code == 2 and "not supported" in result.output


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot not installed")
def test_cells_show_out_svg_and_png(tmp_path):
    for name in ("c.svg", "c.png"):
        result = CliRunner().invoke(cli, ["cells", "show", "Tanh(Add(MM(x),MM(h_prev)))", "--out",
                                          str(tmp_path / name)], obj={})
        assert result.exit_code == 0, result.output
    assert "<svg" in (tmp_path / "c.svg").read_text()
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_predictions_from_the_logbook(tmp_path):
    """Without the recording wrapper, the search's own logbook (`predicted`) pairs predictions with results."""
    cfg = RunConfig.from_dict(dict(generations=2, population=5, offspring=4, seed=2, seed_cells=[]))
    Search(cfg, tmp_path, evaluator=Inline(timeouts=True), screen=SizeScreen(), budget=BUDGET, stdout=io.StringIO(),
           stderr=io.StringIO()).run()
    assert not (tmp_path / "predictions.jsonl").exists()
    data = load_run(tmp_path)
    assert data.predictions and all(p == pytest.approx(1.0 + 0.02 * node_count(parse(k)))
                                    for k, p in data.predictions.items())
    assert set(prediction_pairs(data)) <= {1, 2} and prediction_pairs(data)
    assert "per-cell surrogate predictions are not recorded" not in write_report(tmp_path).read_text()


def test_a_run_without_a_screen_says_so_in_one_line(tmp_path):
    cfg = RunConfig.from_dict(dict(generations=1, population=4, offspring=3, seed=2, seed_cells=[]))
    Search(cfg, tmp_path, evaluator=Inline(), budget=BUDGET, stdout=io.StringIO(), stderr=io.StringIO()).run()
    page = write_report(tmp_path).read_text()
    assert "This run had no surrogate screen (surrogate: none)." in page
    assert "per-cell surrogate predictions are not recorded" not in page
    assert not (tmp_path / "report" / "surrogate.png").exists()
