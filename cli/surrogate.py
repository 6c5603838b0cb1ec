"""`evonas surrogate`: train, evaluate and apply ranking surrogates (see surrogate/api.py for the Python API)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import click

from evonas import defaults
from evonas.errors import ConfigError, DataError


@click.group()
def surrogate() -> None:
    """Train, evaluate and apply ranking surrogates (TreeLSTM or GNN over the cell unrolled one step)."""


@surrogate.command("train")
@click.argument("data", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Model folder to write.")
@click.option("--model", "kind", default=None, help="Ranker kind: treelstm (default) or gnn.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Maximum epochs (early stopping may stop sooner).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisation, split and shuffling.")
@click.option("--init", "init", default=None,
              help="Fine-tune this saved model folder (or `builtin`, the model shipped with evonas) instead of "
                   "starting from scratch.")
@click.option("--ensemble", type=click.IntRange(min=1), default=defaults.SURROGATE_ENSEMBLE, show_default=True,
              help="Number of models (3 rank better than 1; 1 fits 3x faster).")
@click.option("--hidden", type=click.IntRange(min=1), default=None,
              help="Hidden and head size of each model (default: the model's own, 64).")
def train_cmd(data: tuple[Path, ...], out: Path, kind: str | None, epochs: int | None, seed: int, init: str | None,
              ensemble: int, hidden: int | None) -> None:
    """Fit a surrogate on DATA (CSV/JSONL with cell and score columns, or a run folder; several datasets are
    normalised and ranked each within itself) and save it to --out."""
    from evonas.surrogate.api import Surrogate, load_init
    from evonas.surrogate.data import read_datasets
    from evonas.surrogate.rankers import kinds

    if kind is not None and kind not in kinds():
        raise ConfigError(f"unknown --model {kind!r}; expected one of {kinds()}")
    records = read_datasets(data)
    if init is not None:
        model = load_init(init, seed=seed)
        if model is None:
            raise ConfigError("--init none: leave out --init to train from scratch")
        if kind is not None and kind != model.kind:
            raise ConfigError(f"--model {kind} does not match the kind of the --init model ({model.kind})")
        model.fit(records, warm_start=True, epochs=epochs)
    else:
        sizes = {"hidden": hidden, "head": hidden} if hidden else None
        model = Surrogate(kind or "treelstm", seed=seed, ensemble=ensemble, sizes=sizes)
        model.fit(records, epochs=epochs)
    model.save(out)
    fails = sum(r.score is None for r in records)
    fits = model.member_fits  # one report per ensemble member

    def each(values: list) -> str:
        return "/".join(str(v) for v in values)

    losses = each(["n/a" if f.best_valid_loss is None else f"{f.best_valid_loss:.4f}" for f in fits])
    click.echo(f"trained {len(fits)} {model.kind} model(s) on {len(records)} cells ({fails} failed/diverged): "
               f"epochs {each([f.epochs for f in fits])}, best held-out ranking loss {losses} "
               f"at epoch {each([f.best_epoch for f in fits])}, {sum(f.seconds for f in fits):.1f}s -> {out}")


@surrogate.command("evaluate")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
def evaluate_cmd(model_path: Path, data: Path) -> None:
    """Print Kendall tau (failures tied worst, and over successes alone), Spearman, top-10% precision and RMSE of
    MODEL's predictions on DATA (MODEL may be `builtin`, the model shipped with evonas)."""
    from evonas.surrogate.api import Surrogate, init_path
    from evonas.surrogate.data import read_records

    model = Surrogate.load(init_path(model_path))
    m = model.evaluate(read_records(data))

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    click.echo(f"cells            {m['n']} ({m['failures']} failed/diverged, ranked last)")
    click.echo(f"kendall_tau      {fmt(m['kendall_tau'])}  (failed/diverged tied worst)")
    click.echo(f"kendall_tau_ok   {fmt(m['kendall_tau_ok'])}  (successful cells alone)")
    click.echo(f"spearman         {fmt(m['spearman'])}")
    click.echo(f"top10_precision  {fmt(m['top10_precision'])}")
    click.echo(f"rmse             {fmt(m['rmse'])}  (successful cells, score units)")


@surrogate.command("rank")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.argument("cells", type=click.Path(path_type=Path))
@click.option("--out", "out", type=click.Path(path_type=Path), default=None, help="CSV to write (default: stdout).")
def rank_cmd(model_path: Path, cells: Path, out: Path | None) -> None:
    """Predict a score (lower = better) for each cell of CELLS (one per line, or a CSV with a cell column),
    in input order."""
    from evonas.surrogate.api import Surrogate
    from evonas.surrogate.data import read_cells

    model = Surrogate.load(model_path)
    texts = read_cells(cells)
    scores = model.score(texts)
    if out is None:
        _write(sys.stdout, texts, scores)
        return
    try:
        with open(out, "w", newline="", encoding="utf-8") as f:
            _write(f, texts, scores)
    except OSError as e:
        raise DataError(f"{out}: cannot write ({e.strerror})") from e
    click.echo(f"wrote {len(texts)} predicted scores to {out}")


def _write(stream, texts: list[str], scores: list[float]) -> None:
    w = csv.writer(stream, lineterminator="\n")
    w.writerow(["cell", "predicted_score"])
    for t, s in zip(texts, scores, strict=True):
        w.writerow([t, f"{s:.6g}"])
