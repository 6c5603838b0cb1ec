"""`evonas train`: train one cell on a task and print its metrics. (Filled in by the training work.)"""

import click


@click.command()
def train() -> None:
    """Train one cell on a task."""
    raise click.UsageError("not implemented yet")
