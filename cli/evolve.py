"""`evonas evolve` (start a search) and `evonas resume` (finish a stopped one).

Both hold the run folder's lock while they run (`evonas.store.lock`: one writer per run; a second one gets
one line naming the holder and exit code 2). Ctrl-C or SIGTERM stops the workers, keeps everything already
recorded, prints "interrupted at generation G; continue with: evonas resume RUN" and exits with 130 (SIGINT)
or 143 (SIGTERM); `evonas resume` then continues as after a kill.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from evonas.surrogate.screen import make_screen

from evonas.errors import ConfigError
from evonas.store.lock import RunLock
from evonas.store.runlog import WORKERS_LOG

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def _summary(best: dict) -> None:
    """Closing lines on stderr: the best cell and the baselines, side by side."""
    def line(e: dict) -> str:
        loss = f"{e['valid_loss']:.4f}" if e.get("valid_loss") is not None else e.get("status", "?")
        tag = f" [{e['seed']}]" if e.get("seed") else ""
        budget = ", ".join(f"{v} {k}" for k, v in (e.get("budget") or {}).items())
        return f"  {loss:>9}  {e['params']:>8}  {e.get('rung', 0):>4}  {budget:>10}  {e['cell']}{tag}"

    click.echo("best cells (valid loss, params, rung, budget; a higher rung ranks first):", err=True)
    for e in best["best"][:5]:
        click.echo(line(e), err=True)
    if best["baselines"]:
        click.echo("seed baselines:", err=True)
        for e in best["baselines"]:
            click.echo(line(e), err=True)


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML run config (default: configs/default.yaml when present).")
@click.option("--task", default=None, help="synthetic | text | music.")
@click.option("--data", default=None, help="Data path for text/music tasks.")
@click.option("--generations", type=int, default=None, help="Generations after the initial one.")
@click.option("--population", type=int, default=None, help="Survivors kept per generation.")
@click.option("--offspring", type=int, default=None, help="Cells trained per generation.")
@click.option("--workers", type=int, default=None, help="Parallel evaluations (local backend).")
@click.option("--backend", type=click.Choice(["local", "ray"]), default=None)
@click.option("--ray-address", default=None, help="Address of an existing Ray cluster (default: a local Ray).")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N.")
@click.option("--evals-per-gpu", type=int, default=None,
              help="Evaluations sharing one GPU, each in its own process (default 2).")
@click.option("--allocator", default=None,
              help="malloc of the evaluation workers (local, or a local Ray evonas starts): auto (tcmalloc or "
                   "jemalloc when installed) | system | tcmalloc | jemalloc | a library path.")
@click.option("--seed", type=int, default=None)
@click.option("--out", default=None, help="Run folder (default: runs/<timestamp>).")
@click.option("--seed-cells", default=None, help="Comma-separated library names (lstm,gru,...); '' for none.")
@click.option("--surrogate", type=click.Choice(["none", "treelstm", "gnn"]), default=None,
              help="Screen offspring with a learned ranker.")
@click.option("--surrogate-ensemble", type=click.IntRange(1), default=None,
              help="Models in the screen's ensemble (default 3: ranks better than 1, fits 3x slower).")
@click.option("--surrogate-init", default=None,
              help="The screen starts from: builtin (the pretrained model shipped with evonas), a model folder, none.")
@click.option("--acquisition", type=click.Choice(["mean", "ucb"]), default=None,
              help="Screen by the ensemble's mean score, or by mean - ucb_k * spread (ucb).")
@click.option("--show-config", is_flag=True, help="Print the whole resolved run config as YAML and exit.")
@click.option("--json", "as_json", is_flag=True, help="Also write each generation's logbook line (JSON) to stdout.")
def evolve(config_file: str | None, out: str | None, seed_cells: str | None, show_config: bool, as_json: bool,
           **overrides: Any) -> None:
    """Search for recurrent cells by evolution: progress and one summary line per generation on stderr, the
    logbook in RUN/logbook.jsonl (and on stdout with --json)."""
    from evonas.evolution.config import RunConfig
    from evonas.evolution.loop import Search

    if config_file is None and DEFAULT_CONFIG.exists():
        config_file = str(DEFAULT_CONFIG)
    if seed_cells is not None:
        overrides["seed_cells"] = [s.strip() for s in seed_cells.split(",") if s.strip()]
    cfg = RunConfig.load(config_file, overrides)
    if show_config:
        import yaml

        click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)
        return
    _check_data(cfg)
    run_dir = Path(out or cfg.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
    # Device and backend problems (--device cuda without a GPU, no Ray cluster) fail here, before the run folder.
    evaluator = cfg.evaluator(run_dir / WORKERS_LOG)

    def start() -> Search:
        if (run_dir / "checkpoint.json").exists() or (run_dir / "archive.sqlite").exists():
            raise ConfigError(f"run folder {run_dir} already holds a run; continue it with `evonas resume {run_dir}`")
        cfg.out = str(run_dir)
        click.echo(f"run folder: {run_dir}", err=True)
        return Search(cfg, run_dir, evaluator=evaluator,
                      screen=screen_of(cfg, run_dir),
                      stdout=sys.stdout if as_json else None)

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except BaseException:
        evaluator.close()
        raise
    _run_search(run_dir, start, evaluator)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM, raised in the main thread by `_interrupts`."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _interrupts() -> Iterator[None]:
    """Within the block the first SIGINT or SIGTERM raises Interrupted; later ones are ignored (we are stopping)."""
    fired: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if not fired:
            fired.append(signum)
            raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _run_search(run_dir: Path, start: Callable[[], Any], evaluator: Any = None) -> None:
    """Under the run's lock: `start()` the Search and run it, then print the summary; an interrupt stops the
    workers, prints one line and exits with 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM)."""
    search = None
    try:
        with _interrupts():
            try:
                with RunLock(run_dir):
                    search = start()
                    best = search.run()
            finally:
                if evaluator is not None:
                    evaluator.close()
    except Interrupted as e:
        where = f"at generation {search.next_gen}" if search is not None else "before the search started"
        click.echo(f"interrupted {where}; continue with: evonas resume {run_dir}", err=True)
        sys.exit(128 + e.signum)
    _summary(best)


def screen_of(cfg: Any, run_dir: Path) -> Any:
    """The run's screen as its config describes it (None without a surrogate)."""
    return make_screen(cfg.surrogate, run_dir, cfg.seed, cfg.surrogate_ensemble, init=cfg.surrogate_init,
                       acquisition=cfg.acquisition, ucb_k=cfg.ucb_k, warm_epochs=cfg.surrogate_epochs)


def _check_data(cfg: Any) -> None:
    """Load the task's data once before anything is trained: a bad path or format is one DataError, not a
    search in which every cell fails."""
    if cfg.task == "synthetic":
        return  # generated in code, nothing to check
    from evonas.training.tasks import get_task

    get_task(cfg.task, cfg.data, cfg.train_dict()["level"])  # the level every evaluation will use


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--generations", type=int, default=None, help="Extend the run to this many generations.")
@click.option("--workers", type=int, default=None)
@click.option("--backend", type=click.Choice(["local", "ray"]), default=None)
@click.option("--ray-address", default=None)
@click.option("--evals-per-gpu", type=int, default=None, help="Evaluations sharing one GPU.")
@click.option("--allocator", default=None, help="malloc of the evaluation workers (see evolve --help).")
@click.option("--json", "as_json", is_flag=True, help="Also write each generation's logbook line (JSON) to stdout.")
def resume(run: str, as_json: bool, **overrides: Any) -> None:
    """Continue a stopped run: archived evaluations are looked up, never trained again."""
    from evonas.evolution.loop import Search

    def start() -> Search:
        search = Search.resume(run, overrides=overrides, stdout=sys.stdout if as_json else None)
        search.evaluator  # noqa: B018 - device and backend problems fail here, before any work
        search.screen = screen_of(search.cfg, Path(run))
        click.echo(f"resuming {run} at generation {search.next_gen} of {search.cfg.generations}", err=True)
        return search

    _run_search(Path(run), start)
