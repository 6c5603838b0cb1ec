"""`evonas evolve` and `evonas resume`. (Filled in by the evolution work.)"""

import click


@click.command()
def evolve() -> None:
    """Run a search."""
    raise click.UsageError("not implemented yet")


@click.command()
def resume() -> None:
    """Resume a stopped run."""
    raise click.UsageError("not implemented yet")
