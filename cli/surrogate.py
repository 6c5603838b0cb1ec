"""`evonas surrogate`: train, evaluate and apply ranking surrogates. (Filled in by the surrogate work.)"""

import click


@click.group()
def surrogate() -> None:
    """Train, evaluate and apply ranking surrogates."""
