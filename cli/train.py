"""`evonas train`: train one cell on a task and print its metrics."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import click

from evonas.errors import ConfigError


def _fmt(v: float | None, digits: int = 4) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _progress(d: dict[str, Any]) -> None:
    """One line per validation on stderr: epoch, step, losses, elapsed."""
    click.echo(f"epoch {d['epoch']:7.2f}  step {d['step']:6d}  train {_fmt(d['train_loss'])}  "
               f"valid {_fmt(d['valid_loss'])}  best {_fmt(d['best_valid_loss'])}  {d['elapsed']:7.1f}s", err=True)


@click.command()
@click.argument("cell")
@click.option("--task", type=click.Choice(["synthetic", "text", "music"]), default="synthetic", show_default=True)
@click.option("--data", type=str, default=None, help="Data path: text folder/file, or music JSON/pickle file.")
@click.option("--level", type=click.Choice(["word", "char"]), default="word", show_default=True,
              help="Text task: word or character level.")
@click.option("--hidden", type=click.IntRange(min=1), default=None, help="Hidden size (default: the task's).")
@click.option("--match-params", default=None, metavar="CELL|N",
              help="Size the hidden layer so the model has the parameters of this library cell at --hidden "
                   "(or N parameters), within 5%.")
@click.option("--layers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epoch budget.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Optimizer-step budget.")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=None, help="Time budget.")
@click.option("--clock", type=click.Choice(["wall", "cpu"]), default="wall", show_default=True,
              help="What --seconds measures: elapsed time, or this process's CPU time (shared machines).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Learning rate.")
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--bptt", type=click.IntRange(min=1), default=None, help="Truncated BPTT length (token tasks).")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Variational dropout on inputs, between layers and on outputs.")
@click.option("--weight-drop", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="DropConnect on the recurrent MMs (those reading h_prev/c_prev).")
@click.option("--patience", type=click.IntRange(min=1), default=None, help="Early stopping patience.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=str, default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads.")
@click.option("--test/--no-test", default=True, show_default=True, help="Also measure the test split.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def train(cell: str, task: str, data: str | None, level: str, hidden: int | None, match_params: str | None,
          layers: int, epochs: int | None,
          steps: int | None, seconds: float | None, clock: str, lr: float | None, optimizer: str | None,
          batch_size: int | None, bptt: int | None, dropout: float, weight_drop: float, patience: int | None,
          seed: int, device: str, threads: int | None, test: bool, as_json: bool) -> None:
    """Train CELL (a library name such as lstm, or a cell text) on a task and print its metrics.

    Progress goes to stderr; the result to stdout. Exit code 0 when training ended ok, 1 when the cell
    diverged or failed, 2 on bad input (cell text, data path, settings).
    """
    from evonas.cells import canonical_text
    from evonas.cells.library import resolve
    from evonas.training.tasks import get_task
    from evonas.training.train import TrainConfig, evaluate

    node = resolve(cell)  # CellSyntaxError / CellError: exit 2 with the message
    try:
        cfg = TrainConfig(task=task, data=data, level=level, hidden=hidden, layers=layers, epochs=epochs,
                          steps=steps, seconds=seconds, clock=clock, lr=lr, optimizer=optimizer, batch_size=batch_size,
                          bptt=bptt, dropout_in=dropout, dropout_h=dropout, dropout_out=dropout, dropout_w=weight_drop,
                          patience=patience, seed=seed, device=device, threads=threads, test=test).validate()
    except TypeError as e:
        raise ConfigError(str(e)) from None
    get_task(task, data, level)  # DataError for a bad path or format: exit 2 before anything is printed
    if match_params is not None:
        from evonas.cells.library import lookup
        from evonas.training.sizing import match_hidden

        target: str | int = int(match_params) if match_params.isdigit() else match_params
        if isinstance(target, str) and lookup(target) is None:
            raise ConfigError(f"--match-params: {match_params!r} is neither a cell-library name nor an integer")
        sized = match_hidden(canonical_text(node), cfg.to_dict(), target)
        if isinstance(sized, str):
            raise ConfigError(f"--match-params {match_params}: {sized}")
        cfg.hidden = sized
    if not as_json:
        click.echo(f"training {canonical_text(node)} on {task}", err=True)
    result = evaluate(node, cfg, progress=None if as_json else _progress)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        ppl = result.valid_ppl is not None or result.test_ppl is not None
        lines = [
            f"status       {result.status}" + (f" ({result.reason})" if result.reason else ""),
            f"valid loss   {_fmt(result.valid_loss)}" + (f"  perplexity {_fmt(result.valid_ppl, 2)}" if ppl else ""),
        ]
        if test:
            lines.append(f"test loss    {_fmt(result.test_loss)}"
                         + (f"  perplexity {_fmt(result.test_ppl, 2)}" if ppl else ""))
        lines += [f"parameters   {result.params}", f"seconds      {result.seconds:.1f}",
                  f"steps        {result.steps}  ({result.epochs:.2f} epochs)"]
        click.echo("\n".join(lines))
    if result.status != "ok":
        sys.exit(1)
