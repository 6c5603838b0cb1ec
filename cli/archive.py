"""`evonas archive`: inspect and export a run's archive (SQLite, one row per evaluation)."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path

import click

from evonas.errors import CheckpointError


def _open(run: str):
    from evonas.store.archive import Archive

    return Archive(run, create=False)


def _seeds(run: str) -> dict[str, str]:
    """Canonical key -> seed name, from the run's best_cells.json (empty when there is none)."""
    path = Path(run) / "best_cells.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    return {b["cell"]: b["seed"] for b in data.get("baselines", []) if b.get("seed")}


@click.group()
def archive() -> None:
    """Inspect and export a run's archive."""


@archive.command()
@click.argument("run", type=click.Path())
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False), default=None,
              help="Write CSV to this file (default: standard output).")
def export(run: str, csv_file: str | None) -> None:
    """Export every evaluation of RUN (a run folder or archive file) as CSV."""
    with _open(run) as a:
        if csv_file:
            n = a.export_csv(csv_file)
            click.echo(f"wrote {n} rows to {csv_file}", err=True)
            return
        fd, tmp = tempfile.mkstemp(suffix=".csv")
        os.close(fd)
        try:
            a.export_csv(tmp)
            sys.stdout.write(Path(tmp).read_text(encoding="utf-8"))
        finally:
            os.unlink(tmp)


@archive.command()
@click.argument("run", type=click.Path())
@click.option("--top", "-n", type=int, default=10, show_default=True, help="Rows to show.")
@click.option("--sort", type=click.Choice(["valid_loss", "params", "seconds", "generation"]), default="valid_loss",
              show_default=True)
@click.option("--full", is_flag=True, help="Do not shorten cell texts.")
def show(run: str, top: int, sort: str, full: bool) -> None:
    """The best cells of RUN as a table (seed baselines marked), with a status summary.

    One line per cell, at its fitness row: the highest rung it reached (a cell promoted further ranks above
    every cell that stopped earlier), then the best validation loss there."""
    from evonas.store.archive import fitness_order, fitness_rows, rung

    seeds = _seeds(run)
    with _open(run) as a:
        all_rows = a.rows()
    rows = fitness_rows(all_rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1

    def key(r: dict) -> tuple:
        if sort == "valid_loss":
            return fitness_order(r)
        v = r[sort]
        bad = v is None or (isinstance(v, float) and not math.isfinite(v)) or r["status"] != "ok"
        return (bad, v if not bad else 0, r["key"])

    click.echo(f"{len(all_rows)} evaluations of {len(rows)} cells: "
               + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    click.echo(f"{'#':>3}  {'valid_loss':>10}  {'ppl':>9}  {'params':>8}  {'gen':>3}  {'rung':>4}  {'status':<8}  cell")
    for i, r in enumerate(sorted(rows, key=key)[:top], 1):
        m = r["metrics"]
        loss = f"{r['valid_loss']:.4f}" if r["valid_loss"] is not None else "-"
        ppl = f"{m['valid_ppl']:.3f}" if m.get("valid_ppl") is not None else "-"
        cell = r["key"] if full or len(r["key"]) <= 90 else r["key"][:87] + "..."
        tag = f"  [seed: {seeds[r['key']]}]" if r["key"] in seeds else ""
        click.echo(f"{i:>3}  {loss:>10}  {ppl:>9}  {r['params']:>8}  {r['generation']:>3}  {rung(r):>4}  "
                   f"{r['status']:<8}  "
                   f"{cell}{tag}")


@archive.command("to-optuna")
@click.argument("run", type=click.Path())
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--study", "study_name", default=None, help="Study name (default: the run folder's name).")
def to_optuna(run: str, file: str, study_name: str | None) -> None:
    """Write RUN as an Optuna study in FILE (.log/.journal: journal file; .db/.sqlite3: SQLite), for
    `optuna-dashboard FILE`: one trial per cell, its features as parameters. Needs `evonas[dashboard]`."""
    from evonas.reporting.optuna_study import export_study

    n = export_study(run, file, study_name)
    click.echo(f"wrote {n} trials to {file}; view them with: optuna-dashboard {file}", err=True)
