"""`evonas export CELL_OR_RUN --out DIR`: a cell as genotype.json plus a standalone PyTorch cell.py."""

from __future__ import annotations

from pathlib import Path

import click

from evonas.errors import ConfigError

DEFAULT_HIDDEN = 128  # a library cell or cell text has no size of its own: the music task's default hidden size


@click.command("export")
@click.argument("cell_or_run")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write genotype.json, cell.py (and weights.pt) into.")
@click.option("--input-size", type=click.IntRange(min=1), default=None,
              help="Input size (default: the run's, else the hidden size).")
@click.option("--hidden-size", type=click.IntRange(min=1), default=None,
              help=f"Hidden size (default: the run's, else {DEFAULT_HIDDEN}).")
@click.option("--force", is_flag=True, help="Replace the files of an earlier export in --out.")
def export(cell_or_run: str, out: Path, input_size: int | None, hidden_size: int | None, force: bool) -> None:
    """Export CELL_OR_RUN: a library name (lstm), a cell text, or a run folder (its confirmed winner with its
    trained weights when RUN/winner/meta.json exists, else the best cell of RUN/best_cells.json).

    Writes DIR/genotype.json (versioned: canonical cell, operators, sizes, where it came from), DIR/cell.py
    (imports only torch: `Cell` for one step, `RNN` for a sequence; `python DIR/cell.py` runs a tiny forward
    pass) and, with trained weights, DIR/weights.pt (load_state_dict into cell.RNN).
    """
    from evonas.nn.export import export_cell
    from evonas.reporting.handoff import handoff

    h = handoff(cell_or_run)
    if h.weights is not None:
        for name, given, known in (("--input-size", input_size, h.input_size),
                                   ("--hidden-size", hidden_size, h.hidden_size)):
            if given is not None and given != known:
                raise ConfigError(f"{name} {given} differs from the trained weights' size {known}")
    hidden = hidden_size or h.hidden_size or DEFAULT_HIDDEN
    inp = input_size or (h.input_size if hidden_size is None and h.input_size else hidden)
    genotype = export_cell(h.cell, out, inp, hidden, written=h.written, title=h.title, source=h.source,
                           op_set=h.op_set, weights=h.weights, force=force)
    files = ["genotype.json", "cell.py"] + (["weights.pt"] if h.weights is not None else [])
    click.echo(f"cell         {genotype['cell']}")
    click.echo(f"sizes        input {inp}, hidden {hidden}; {genotype['parameters']} parameters")
    if h.source.get("kind") == "run":
        click.echo(f"from         {h.source['run']}: {h.source['choice']}")
    click.echo(f"wrote        {', '.join(str(out / f) for f in files)}")
    click.echo(f"try          python {out / 'cell.py'}")
