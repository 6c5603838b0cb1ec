"""`evonas report RUN`: a self-contained HTML report of a run (see evonas.reporting.report)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the HTML here instead of RUN/report.html (PNGs still go to RUN/report/).")
def report(run: Path, out: Path | None) -> None:
    """Write RUN/report.html: best-so-far curve with the seed cells, surrogate quality, operators, top cells,
    failures. Images are embedded, so the one file can be mailed or archived."""
    from evonas.reporting.report import write_report

    path = write_report(run, out)
    click.echo(f"wrote {path} (figures in {Path(run) / 'report'})")
