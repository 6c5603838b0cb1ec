"""What a person sees of a search: the status line, one summary line per generation, no JSON unless asked."""

from __future__ import annotations

import io
import json
import re

from fake_training import Inline
from test_search import BUDGET, SizeScreen, cfg

from evonas.evolution.loop import Search
from evonas.evolution.progress import Progress, summary_line

CLEAR = "\r\033[K"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def screen_lines(text: str) -> list[str]:
    """What stays on a terminal: each line as the last rewrite left it."""
    return [ln.split(CLEAR)[-1].split("\r")[-1] for ln in text.split("\n")]


def test_summary_line():
    entry = {"gen": 2, "trained": 7, "reused": 1, "failures": 1, "best": 0.53124, "best_ever": 0.52011,
             "tau": 0.4123, "seconds": 12.34, "predicted": {"Tanh(MM(x))": 0.1}}
    assert summary_line(entry) == ("gen 2  trained 6  from archive 1  failed 1  best 0.5312 (best ever 0.5201)  "
                                   "tau 0.41  12.3 s")
    assert summary_line({"gen": 0, "trained": 3, "reused": 0, "failures": 3, "best": None, "best_ever": None,
                         "tau": None, "seconds": 1.0}) == "gen 0  trained 3  failed 3  best - (best ever -)  1.0 s"


def test_status_line_is_cleared_before_a_summary_or_a_note():
    term = Terminal()
    p = Progress(total=4, stream=term)
    for loss in (0.9, None, 0.7):
        p.record({"status": "ok" if loss else "failed", "valid_loss": loss}, trained=True)
    p.note("warning: something")
    p.summary({"gen": 0, "trained": 3, "reused": 0, "failures": 1, "best": 0.7, "best_ever": 0.7, "tau": None,
               "seconds": 1.0})
    p.record({"status": "ok", "valid_loss": 0.5}, trained=True)
    p.finish()
    text = term.getvalue()
    lines = screen_lines(text)
    assert lines == ["warning: something",
                     "gen 0  trained 3  failed 1  best 0.7000 (best ever 0.7000)  1.0 s",
                     lines[2], ""]
    assert re.match(r"gen 0  trained 4/4  best 0\.5000  failures 1  elapsed 0:00  eta 0:00$", lines[2])
    assert CLEAR + "gen 0  trained 3  failed 1" in text  # the summary starts on a cleared line


def test_status_lines_elsewhere_are_a_heartbeat():
    out = io.StringIO()
    p = Progress(total=10, stream=out, heartbeat=3600)
    for _ in range(5):
        p.record({"status": "ok", "valid_loss": 1.0}, trained=True)
    assert out.getvalue().count("trained ") == 1 and CLEAR not in out.getvalue()


def test_search_writes_json_only_when_asked(tmp_path, capsys):
    """Without a stdout stream the logbook goes to its file only; with one, each line minus the predictions."""
    err = io.StringIO()
    Search(cfg(generations=2), tmp_path / "quiet", evaluator=Inline(), screen=SizeScreen(), budget=BUDGET,
           stderr=err).run()
    assert capsys.readouterr().out == ""
    book = [json.loads(x) for x in (tmp_path / "quiet" / "logbook.jsonl").read_text().splitlines()]
    assert len(book) == 3 and all("predicted" in e for e in book[1:])
    assert sum("best ever" in ln for ln in err.getvalue().splitlines()) == 3
    assert "predicted" not in err.getvalue() and "{" not in err.getvalue()

    out = io.StringIO()
    Search(cfg(generations=2), tmp_path / "json", evaluator=Inline(), screen=SizeScreen(), budget=BUDGET,
           stdout=out, stderr=io.StringIO()).run()
    book = [json.loads(x) for x in (tmp_path / "json" / "logbook.jsonl").read_text().splitlines()]
    assert [json.loads(x) for x in out.getvalue().splitlines()] == [
        {k: v for k, v in e.items() if k != "predicted"} for e in book]
