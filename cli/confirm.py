"""`evonas confirm`: retrain a finished run's best cells and its seed cells at the full budget and say plainly
whether a found cell beats the best seed cell."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from evonas.errors import ConfigError


def _budget(items: tuple[str, ...]) -> dict:
    """`epochs=30`, `steps=2000`, `seconds=180`, `clock=cpu` -> a budget dict (ConfigError on anything else)."""
    out: dict = {}
    for item in items:
        name, _, value = item.partition("=")
        if name in ("epochs", "steps") and value.isdigit():
            out[name] = int(value)
        elif name == "seconds":
            try:
                out[name] = float(value)
            except ValueError:
                raise ConfigError(f"--budget {item}: seconds must be a number") from None
        elif name == "clock" and value in ("wall", "cpu"):
            out[name] = value
        else:
            raise ConfigError(f"--budget {item!r}: expected epochs=N, steps=N, seconds=X or clock=wall|cpu")
    if out and not set(out) & {"epochs", "steps", "seconds"}:
        raise ConfigError("--budget needs epochs=N, steps=N or seconds=X")
    if set(out) & {"epochs", "steps", "seconds"}:  # a given budget replaces the run's, unit and all
        out = {"epochs": None, "steps": None, "seconds": None, **out}
    return out


@click.command()
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.option("--top", type=click.IntRange(1), default=None, help="Found cells to confirm (default 3).")
@click.option("--seeds", type=click.IntRange(1), default=None, help="Fresh paired seeds (default 3).")
@click.option("--budget", multiple=True, metavar="KEY=VALUE",
              help="Full budget instead of the run's top rung: epochs=30, steps=2000, seconds=180, clock=cpu.")
@click.option("--match-params", default=None, metavar="CELL|N|none",
              help="Equal-parameter target (default: the run's match_params, else lstm; 'none' keeps each cell's "
                   "hidden size).")
def confirm(run: Path, top: int | None, seeds: int | None, budget: tuple[str, ...], match_params: str | None) -> None:
    """Retrain RUN's top cells and seed cells with fresh paired seeds at the full budget; compare on test loss.

    Writes RUN/confirm.json and RUN/confirm.csv (and the winner's weights to RUN/winner/); results are kept
    in RUN/confirm/ as they arrive, so a stopped confirmation continues where it stopped.
    """
    from evonas.evolution.confirm import ConfirmSettings, _run_state
    from evonas.evolution.confirm import confirm as run_confirm

    if not run.is_dir():
        raise ConfigError(f"no run folder at {run}")
    config, _, _ = _run_state(run)
    section = dict(config.get("confirm") or {})
    if top is not None:
        section["top"] = top
    if seeds is not None:
        section["seeds"] = seeds
    given = _budget(budget)
    if given:
        section["budget"] = {**(section.get("budget") or {}), **given}
    settings = ConfirmSettings.from_dict(section, config.get("match_params"))
    if match_params is not None:
        settings.match_params = (None if match_params == "none" else int(match_params) if match_params.isdigit()
                                 else match_params)
    run_confirm(run, settings, out=sys.stdout)
