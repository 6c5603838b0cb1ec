"""`evonas archive`: inspect and export a run's archive. (Filled in by the evolution work.)"""

import click


@click.group()
def archive() -> None:
    """Inspect and export a run's archive."""
