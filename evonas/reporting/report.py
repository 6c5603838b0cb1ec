"""`evonas report RUN`: one self-contained HTML page (images embedded) summarising a run folder.

What it reads, all written by the search (evonas.evolution) or by a benchmark:
- `archive.sqlite`: every evaluation in arrival order (best-so-far curve, operators, top cells, failures);
- `best_cells.json` (`baselines`, each with its `seed` name) or else `checkpoint.json` (`seeds`): the seed cells;
- `logbook.jsonl`: one line per generation, with the screen's Kendall tau (`tau`) and, when the loop
  records them, the screen's predictions for the cells it chose (`predicted`: {cell: score} or [[cell, score]]);
- `predictions.jsonl` (optional): every call of the screen, `{"cells": [...], "scores": [...]}`, as written
  by `benchmarks/search_efficiency.py`'s recording wrapper. A trained cell is paired with the last
  score it got before it was trained (the call that chose it).
The PNGs are also written to RUN/report/, cell diagrams as SVG (or .dot when Graphviz is missing).
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evonas.cells import OPS, equations, node_count, op_counts, parse
from evonas.errors import CellError, CellSyntaxError, CheckpointError, EvonasError
from evonas.store.archive import ARCHIVE_NAME, Archive, fitness_rows

REPORT_HTML = "report.html"
REPORT_DIR = "report"
PREDICTIONS = "predictions.jsonl"
TOP_K = 10


@dataclass
class RunData:
    """Everything the report shows, read once from a run folder."""

    dir: Path
    rows: list[dict]
    logbook: list[dict] = field(default_factory=list)
    seeds: dict[str, str] = field(default_factory=dict)  # seed name -> canonical cell
    config: dict = field(default_factory=dict)
    predictions: dict[str, float] = field(default_factory=dict)  # canonical cell -> score that chose it
    notes: list[str] = field(default_factory=list)


class RecordingScreen:
    """Wraps a screen and appends each `score` call to RUN/predictions.jsonl, so the report can pair the
    screen's prediction for every trained cell with its measurement (the loop itself logs only the tau)."""

    def __init__(self, screen: Any, run_dir: str | Path):
        self.inner = screen
        self.path = Path(run_dir) / PREDICTIONS

    def score(self, cells: list[str]) -> list[float]:
        """The wrapped screen's scores, logged (non-finite scores are written as null)."""
        scores = list(self.inner.score(cells))
        clean = [float(s) if isinstance(s, int | float) and math.isfinite(s) else None for s in scores]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"cells": list(cells), "scores": clean}) + "\n")
        return scores

    def __getattr__(self, name: str) -> Any:  # learn / fit / on_resume hooks pass through
        return getattr(self.inner, name)


# ---------------------------------------------------------------- reading a run folder


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not readable JSON: {str(e).splitlines()[0]}") from None


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path} line {i} is not JSON: {e.msg}") from None
        if not isinstance(entry, dict):
            raise CheckpointError(f"{path} line {i} is not a JSON object")
        out.append(entry)
    return out


def _seeds(run: Path) -> dict[str, str]:
    """Seed name -> canonical cell, from best_cells.json (or checkpoint.json when that is missing)."""
    best = run / "best_cells.json"
    if best.exists():
        data = _read_json(best)
        base = data.get("baselines", []) if isinstance(data, dict) else []
        return {str(b["seed"]): str(b["cell"]) for b in base if isinstance(b, dict) and b.get("seed") and b.get("cell")}
    ckpt = run / "checkpoint.json"
    if ckpt.exists():
        data = _read_json(ckpt)
        seeds = data.get("seeds", {}) if isinstance(data, dict) else {}
        return {str(k): str(v) for k, v in seeds.items()} if isinstance(seeds, dict) else {}
    return {}


def _logbook_predictions(logbook: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for entry in logbook:
        pred = entry.get("predicted")
        items = pred.items() if isinstance(pred, dict) else pred if isinstance(pred, list) else []
        for item in items:
            try:
                key, score = item
                out[str(key)] = float(score)
            except (TypeError, ValueError):
                continue
    return out


def _file_predictions(path: Path, trained: set[str]) -> dict[str, float]:
    """Last score of each trained cell in the screen's call log (the call that chose it)."""
    out: dict[str, float] = {}
    for i, entry in enumerate(_read_jsonl(path), 1):
        cells, scores = entry.get("cells"), entry.get("scores")
        if not isinstance(cells, list) or not isinstance(scores, list) or len(cells) != len(scores):
            raise CheckpointError(f"{path} line {i}: expected equally long lists 'cells' and 'scores'")
        for key, score in zip(cells, scores, strict=True):
            if key in trained and isinstance(score, int | float):
                out[key] = float(score)
    return out


def load_run(run_dir: str | Path) -> RunData:
    """Read a run folder; a missing folder, archive or an archive without evaluations is a CheckpointError."""
    run = Path(run_dir)
    if not run.is_dir():
        raise CheckpointError(f"no run folder at {run}")
    if not (run / ARCHIVE_NAME).is_file():
        raise CheckpointError(f"{run} is not a run folder: it has no {ARCHIVE_NAME}")
    with Archive(run, create=False) as archive:
        rows = archive.rows()
    if not rows:
        raise CheckpointError(f"the archive of {run} holds no evaluations yet: nothing to report")
    data = RunData(dir=run, rows=rows)
    if (run / "logbook.jsonl").exists():
        data.logbook = _read_jsonl(run / "logbook.jsonl")
    else:
        data.notes.append("no logbook.jsonl: no per-generation Kendall tau")
    data.seeds = _seeds(run)
    if (run / "config.yaml").exists():
        import yaml

        try:
            cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise CheckpointError(f"{run / 'config.yaml'} is not valid YAML: {str(e).splitlines()[0]}") from None
        data.config = cfg if isinstance(cfg, dict) else {}
    data.predictions = _logbook_predictions(data.logbook)
    if (run / PREDICTIONS).exists():
        trained = {r["key"] for r in rows}
        data.predictions = {**_file_predictions(run / PREDICTIONS, trained), **data.predictions}
    return data


# ---------------------------------------------------------------- what the report shows


def _ok_loss(row: dict) -> float | None:
    v = row.get("valid_loss")
    return v if row.get("status") == "ok" and v is not None and math.isfinite(v) else None


def best_so_far(rows: list[dict]) -> list[float | None]:
    """Best validation loss after each trained cell, in arrival order (None until the first success)."""
    best, out = None, []
    for r in rows:
        v = _ok_loss(r)
        if v is not None and (best is None or v < best):
            best = v
        out.append(best)
    return out


def seed_losses(data: RunData) -> dict[str, float | None]:
    """Each seed cell's validation loss at its highest rung (None when it failed or was never trained)."""
    fit = {r["key"]: r for r in fitness_rows(data.rows)}
    return {name: _ok_loss(fit[key]) if key in fit else None for name, key in data.seeds.items()}


def prediction_pairs(data: RunData) -> dict[int, list[tuple[float, float]]]:
    """(predicted, measured) per generation for the trained cells whose screen score is known."""
    out: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for r in data.rows:
        p, m = data.predictions.get(r["key"]), _ok_loss(r)
        if p is not None and m is not None and math.isfinite(p):
            out[int(r["generation"])].append((p, m))
    return dict(out)


def taus(data: RunData) -> dict[int, float | None]:
    """Kendall tau per generation as the search logged it."""
    return {int(e["gen"]): e.get("tau") for e in data.logbook if "gen" in e}


def operator_frequencies(rows: list[dict]) -> dict[int, dict[str, float]]:
    """Per generation: each operator's share of all operator nodes in the cells trained that generation."""
    counts: dict[int, Counter[str]] = defaultdict(Counter)
    for r in rows:
        try:
            c = op_counts(parse(r["key"]))
        except (CellSyntaxError, CellError):
            continue
        counts[int(r["generation"])].update({op: n for op, n in c.items() if op in OPS})
    return {g: {op: n / total for op, n in c.items()} for g, c in sorted(counts.items())
            if (total := sum(c.values()))}


def failure_reason(reason: str) -> str:
    """A reason with its numbers blanked, so "timed out after 31 s" and "... 45 s" count together."""
    text = (reason or "(no reason given)").strip().splitlines()[0]
    return re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", text)[:160]


def failures(rows: list[dict]) -> list[tuple[str, int, str]]:
    """(status: reason pattern, count, one example reason) for every non-ok evaluation, most common first."""
    counts: Counter[str] = Counter()
    example: dict[str, str] = {}
    for r in rows:
        status = r["status"] if r["status"] != "ok" or _ok_loss(r) is not None else "diverged"
        if status == "ok":
            continue
        key = f"{status}: {failure_reason(r.get('reason', ''))}"
        counts[key] += 1
        example.setdefault(key, r.get("reason", "") or "")
    return [(k, n, example[k]) for k, n in counts.most_common()]


def top_cells(rows: list[dict], k: int = TOP_K) -> list[dict]:
    """The k best cells by fitness: highest rung reached first, then validation loss, parameters, text."""
    return [r for r in fitness_rows(rows) if _ok_loss(r) is not None][:k]


def rung_taus(logbook: list[dict]) -> dict[int, list[float | None]]:
    """Per generation: Kendall tau between consecutive rungs over the cells promoted (empty for one rung)."""
    return {e["gen"]: list(e["rung_tau"]) for e in logbook if e.get("rung_tau")}


def confirmation_html(run: Path) -> str:
    """The confirmation table (RUN/confirm.json), or one line saying the run has not been confirmed."""
    path = run / "confirm.json"
    if not path.exists():
        return (f'<p class="note">This run has not been confirmed: <code>evonas confirm {html.escape(str(run))}'
                "</code> retrains its best and its seed cells with fresh paired seeds and says whether a found "
                "cell beats the best seed cell.</p>")
    s = _read_json(path)

    def ms(m: Any, sd: Any) -> str:
        return "–" if m is None else f"{m:.4f} ± {sd:.4f}"

    rows = "".join(
        f"<tr><td>{html.escape(c['name'])}</td><td>{c.get('params') or '–'}</td><td>{c.get('hidden') or '–'}</td>"
        f"<td>{ms(c.get('valid_mean'), c.get('valid_sd'))}</td><td>{ms(c.get('test_mean'), c.get('test_sd'))}</td>"
        f"<td>{html.escape(c.get('verdict', ''))}</td><td><code>{html.escape(c['key'])}</code></td></tr>"
        for c in s.get("cells", []))
    return (f"<p>Seeds {html.escape(str(s.get('seeds')))}, equal parameters: "
            f"{html.escape(str(s.get('match_params')))}, budget {html.escape(str(s.get('budget')))}.</p>"
            "<table><tr><th>cell</th><th>params</th><th>hidden</th><th>valid (mean ± sd)</th>"
            f"<th>test (mean ± sd)</th><th>verdict</th><th>cell text</th></tr>{rows}</table>")


# ---------------------------------------------------------------- HTML


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else str(v)
    return html.escape(str(v))


def _inline_svg(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    start = text.find("<svg")
    return text[start:] if start >= 0 else ""


def _cell_section(rows: list[dict], seeds: dict[str, str], out_dir: Path) -> str:
    from evonas.reporting.diagram import write_diagram

    have_dot = shutil.which("dot") is not None
    names = {key: name for name, key in seeds.items()}
    parts = []
    if not have_dot:
        parts.append('<p class="note">Graphviz <code>dot</code> is not installed: diagrams are omitted '
                     "(their .dot text is in report/), equations only. Install it with "
                     "<code>apt-get install graphviz</code>.</p>")
    for i, r in enumerate(rows, 1):
        node = parse(r["key"])
        seed = f" (seed cell {html.escape(names[r['key']])})" if r["key"] in names else ""
        m = r["metrics"]
        metrics = (f"valid loss {_fmt(r['valid_loss'])} · valid ppl {_fmt(m.get('valid_ppl'), 3)} · "
                   f"test loss {_fmt(m.get('test_loss'))} · params {r['params']:,} · "
                   f"{_fmt(r['seconds'], 1)} s · generation {r['generation']} · {node_count(node)} nodes")
        if have_dot:
            try:
                diagram = _inline_svg(write_diagram(node, out_dir / f"cell-{i:02d}.svg", f"#{i}"))
            except EvonasError as e:  # Graphviz present but failing: say so in the page instead of crashing
                diagram = f'<p class="note">diagram failed: {html.escape(str(e))}</p>'
        else:
            write_diagram(node, out_dir / f"cell-{i:02d}.dot", f"#{i}")
            diagram = ""
        eqs = html.escape("\n".join(equations(node)))
        parts.append(f'<div class="cell"><h3>#{i}{seed}</h3><p class="metrics">{metrics}</p>'
                     f'<p><code class="text">{html.escape(r["key"])}</code></p>'
                     f'<div class="pair"><div class="diagram">{diagram}</div><pre>{eqs}</pre></div></div>')
    return "\n".join(parts)


_CSS = """
body{font-family:Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
img{max-width:100%}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left;font-size:.9em}.note{color:#7a5a00;background:#fff6d8;padding:.4em .7em}
.cell{border:1px solid #ddd;padding:.5em 1em;margin:1em 0}.pair{display:flex;gap:1.5em;align-items:flex-start}
.diagram svg{max-width:520px;height:auto}pre{font-size:.85em;background:#f7f7f7;padding:.5em;overflow-x:auto}
code.text{font-size:.8em;word-break:break-all}.metrics{color:#444}
"""


def render(data: RunData, out_dir: Path) -> str:
    """Build the HTML page; PNGs and diagrams are written to out_dir as a side effect."""
    from evonas.reporting import plots

    rows, notes = data.rows, list(data.notes)
    curve = best_so_far(rows)
    seeds = seed_losses(data)
    if not data.seeds:
        notes.append("no seed cells recorded (no best_cells.json baselines or checkpoint seeds)")
    pairs, tau = prediction_pairs(data), taus(data)
    # a screen object can be passed to a search whose config says none: any logged prediction or tau counts
    screened = (data.config.get("surrogate", "none") != "none" or bool(data.predictions)
                or any(t is not None for t in tau.values()))
    if screened and not data.predictions:
        notes.append("per-cell surrogate predictions are not recorded in this run folder (no 'predicted' field in "
                     f"logbook.jsonl and no {PREDICTIONS}): only the logged Kendall tau per generation is shown")
    freq, fails, top = operator_frequencies(rows), failures(rows), top_cells(rows)
    pngs = {
        "best_so_far": plots.best_so_far_plot(curve, seeds, f"{data.dir.name}: best validation loss so far"),
        **({"surrogate": plots.prediction_plot(pairs, tau)} if screened else {}),
        "operators": plots.operator_plot(freq),
        "failures": plots.failures_plot([(k, n) for k, n, _ in fails]),
        "rungs": plots.rung_tau_plot(rung_taus(data.logbook)),
    }
    for name, png in pngs.items():
        plots.save_png(png, out_dir / f"{name}.png")
    n_ok = sum(_ok_loss(r) is not None for r in rows)
    best = top[0] if top else None
    cfg = data.config
    summary = [("run folder", str(data.dir)), ("task", cfg.get("task", rows[0].get("task"))),
               ("generations logged", len(data.logbook)), ("evaluations", len(rows)), ("successful", n_ok),
               ("failed or diverged", len(rows) - n_ok), ("surrogate", cfg.get("surrogate", "–")),
               ("best validation loss", _fmt(best["valid_loss"]) if best else "–")]
    seed_rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{_fmt(v)}</td></tr>" for n, v in sorted(seeds.items()))
    extra = {int(e["gen"]): e for e in data.logbook if "gen" in e}
    tau_rows = "".join(
        f"<tr><td>{g}</td><td>{_fmt(t, 3)}</td><td>{_fmt(extra.get(g, {}).get('tau_all'), 3)}</td>"
        f"<td>{_fmt(extra.get(g, {}).get('tau_random_run'), 3)}</td><td>{len(pairs.get(g, []))}</td></tr>"
        for g, t in sorted(tau.items()))
    if screened:
        surrogate_html = f"""{_img(pngs["surrogate"], "surrogate prediction vs measurement and Kendall tau")}
<p>tau: over the successful cells; with failures: failed cells tied worst (easier); random sample: over the
candidates drawn uniformly, unscreened, pooled over the run so far (the screen against chance).</p>
<table><tr><th>generation</th><th>Kendall tau (logged)</th><th>tau with failures</th><th>tau, random sample</th>
<th>cells with a recorded prediction</th></tr>
{tau_rows or '<tr><td colspan="5">no logbook</td></tr>'}</table>"""
    else:
        surrogate_html = '<p class="note">This run had no surrogate screen (surrogate: none).</p>'
    fail_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{n}</td><td><code>{html.escape(ex[:200])}</code></td></tr>"
                        for k, n, ex in fails) or '<tr><td colspan="3">no failures</td></tr>'
    note_html = "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>evonas report: {html.escape(data.dir.name)}</title>
<style>{_CSS}</style></head><body>
<h1>evonas run report: {html.escape(data.dir.name)}</h1>
<p>Generated {stamp}.</p>
<table>{"".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in summary)}</table>
{note_html}
<h2 id="confirmation">Confirmation: found cells against the seed cells</h2>
{confirmation_html(data.dir)}
<h2 id="best-so-far">Best validation loss vs trained cells</h2>
<p>Step line: best validation loss among the cells trained so far, in the order results arrived. Dashed lines:
each seed cell (hand-designed baseline) trained under the same budget.</p>
{_img(pngs["best_so_far"], "best validation loss so far")}
<table><tr><th>seed cell</th><th>validation loss</th></tr>{seed_rows or '<tr><td colspan="2">none</td></tr>'}</table>
<h2 id="surrogate">Surrogate: prediction vs measurement</h2>
{surrogate_html}
<h2 id="rungs">Proxy health: rung-to-rung Kendall tau</h2>
<p>Over the cells promoted in each generation: how well a low rung's validation loss ranks them like the next
rung's. Near 1: the short budget is a faithful proxy; near 0: promotion is close to chance.</p>
{_img(pngs["rungs"], "Kendall tau between consecutive rungs per generation")}
<h2 id="operators">Operator frequencies over generations</h2>
{_img(pngs["operators"], "operator frequencies")}
<h2 id="top-cells">Top {len(top)} cells</h2>
{_cell_section(top, data.seeds, out_dir)}
<h2 id="failures">Failures by reason</h2>
{_img(pngs["failures"], "failures by reason")}
<table><tr><th>status: reason (numbers blanked)</th><th>count</th><th>example</th></tr>{fail_rows}</table>
</body></html>
"""


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write RUN/report.html (and RUN/report/*.png, diagrams); returns the HTML path."""
    data = load_run(run_dir)
    out_dir = data.dir / REPORT_DIR
    out_dir.mkdir(exist_ok=True)
    page = render(data, out_dir)
    path = Path(out) if out is not None else data.dir / REPORT_HTML
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
