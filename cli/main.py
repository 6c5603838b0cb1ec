"""Entry point of the `evonas` command: one click group; expected errors become one line and exit code 2."""

from __future__ import annotations

import sys
import traceback

import click

from evonas.errors import EvonasError


class EvonasGroup(click.Group):
    """A click group that turns `EvonasError` into `error: <message>` and exit code 2 (traceback with --debug)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EvonasError as e:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


@click.group(cls=EvonasGroup)
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.version_option(package_name="evonas")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """evonas: discover recurrent cells by evolution, screened by a learned ranking surrogate."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _register() -> None:
    """Each command (group) lives in its own module of evonas.cli."""
    from evonas.cli import archive, cells, confirm, data, evolve, export, report, surrogate, train

    cli.add_command(cells.cells)
    cli.add_command(train.train)
    cli.add_command(evolve.evolve)
    cli.add_command(evolve.resume)
    cli.add_command(archive.archive)
    cli.add_command(surrogate.surrogate)
    cli.add_command(report.report)
    cli.add_command(confirm.confirm)
    cli.add_command(export.export)
    cli.add_command(data.data)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(obj={})
