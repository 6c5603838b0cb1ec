"""`evonas report RUN`: a self-contained HTML report of a run. (Filled in by the evidence work.)"""

import click


@click.command()
def report() -> None:
    """Write RUN/report.html."""
    raise click.UsageError("not implemented yet")
