"""`evonas cells list` and `evonas cells show`: the cell library and any cell text."""

from __future__ import annotations

import click


@click.group()
def cells() -> None:
    """Inspect the cell library and any cell text."""
