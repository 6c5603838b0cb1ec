"""A run as an Optuna study, for `optuna-dashboard FILE` (`evonas archive to-optuna`, run-config key `optuna`).

Written through Optuna's public API only: a JournalStorage over a JournalFileBackend for a `.log`/`.journal`
file, an RDBStorage (`sqlite:///`) for a `.db`/`.sqlite`/`.sqlite3` file. What the study holds:
- one trial per evaluated cell (the archive's `key`), numbered in the order cells first reached the archive;
  the cell's rows at different budgets (`steps`, else `epochs`, of the row's `budget`) are the trial's
  intermediate values (step = budget), the row at the largest budget decides the trial:
  COMPLETE (valid loss; and the parameter count as a second objective when `selection: nsga2`),
  FAIL (failed, diverged, or "ok" without a finite loss), PRUNED (ok, but stopped below the run's largest budget);
- parameters: the cell's features (`nodes`, `height`, `memory`, `seed`, `n_<Op>` per operator seen in the run),
  so parallel coordinates and parameter importance work;
- user attributes: the cell (canonical and as written), generation, status, reason, parameter count, seconds,
  seed name, the screen's prediction (from the logbook's `predicted`), budget;
- start and end times from the archive, so writing the same run twice gives the same study.
Writing again deletes the study (by name) and recreates it; other studies in the same file stay. The search
(`optuna: PATH`) only adds the new trials while the earlier ones are unchanged, so a running dashboard follows.
Screened-out candidates are not in the study: the run records only the cells it trained.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sqlite3
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evonas import defaults
from evonas.cells import height, node_count, op_counts, op_set, parse
from evonas.errors import CellError, CellSyntaxError, CheckpointError, ConfigError

if TYPE_CHECKING:
    import optuna

JOURNAL_SUFFIXES = (".log", ".journal")
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
OBJECTIVES = ("valid_loss", "params")  # the second only when the run is multi-objective (selection nsga2)


def check_target(path: str | Path) -> Path:
    """The study file as a Path; ConfigError for an unknown suffix or when optuna is not installed."""
    p = Path(path)
    if p.suffix.lower() not in JOURNAL_SUFFIXES + SQLITE_SUFFIXES:
        raise ConfigError(f"Optuna study file {str(p)!r} must end in {', '.join(JOURNAL_SUFFIXES + SQLITE_SUFFIXES)}")
    if importlib.util.find_spec("optuna") is None:
        raise ConfigError(f"writing the Optuna study {p} needs optuna: pip install 'evonas[dashboard]'")
    return p


# ---------------------------------------------------------------- from archive rows to trial specs (no optuna)


@dataclass
class TrialSpec:
    """One cell's trial, in plain values."""

    key: str
    state: str  # COMPLETE | FAIL | PRUNED
    values: list[float] | None
    intermediate: dict[int, float]
    params: dict[str, Any]
    user_attrs: dict[str, Any]
    start: datetime
    end: datetime


def row_budget(row: dict) -> int:
    """The budget step of an archive row: `steps`, else `epochs`, of its training config (0 when neither)."""
    budget = row.get("budget") or {}
    for k in ("steps", "epochs"):
        v = budget.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            return int(v)
    return 0


def cell_features(key: str) -> dict[str, Any]:
    """nodes, height, memory (uses Memory) and each operator's count of one cell (empty if it does not parse)."""
    try:
        node = parse(key)
    except (CellSyntaxError, CellError):
        return {}
    counts = op_counts(node)
    return {"nodes": node_count(node), "height": height(node), "memory": counts.get("Memory", 0) > 0,
            **{f"n_{op}": n for op, n in counts.items() if op[:1].isupper()}}


def _local(iso: str) -> datetime:
    """An archive time (ISO 8601 UTC) as a naive local datetime, as Optuna keeps its own."""
    return datetime.fromisoformat(iso).astimezone().replace(tzinfo=None)


def _loss(row: dict) -> float | None:
    v = row.get("valid_loss")
    return v if row.get("status") == "ok" and isinstance(v, float) and math.isfinite(v) else None


def trial_specs(rows: list[dict], seeds: dict[str, str], predictions: dict[str, float],
                multi_objective: bool, ops: Iterable[str] = ()) -> list[TrialSpec]:
    """One TrialSpec per cell of the archive rows (seeds: seed name -> canonical cell); an `n_<Op>` parameter for
    each of `ops` (the run's operator set: the parameters stay the same as the run goes on) and each op seen."""
    by_key: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["id"]):
        by_key.setdefault(r["key"], []).append(r)
    top = max((row_budget(r) for r in rows), default=0)
    seed_names = {cell: name for name, cell in seeds.items()}
    counted = sorted({f"n_{op}" for op in ops} | {k for key in by_key for k in cell_features(key) if k[:2] == "n_"})
    out = []
    for key, krows in by_key.items():
        final = max(krows, key=lambda r: (row_budget(r), r["id"]))
        inter = {row_budget(r): v for r in krows if (v := _loss(r)) is not None}
        loss = _loss(final)
        state = "FAIL" if loss is None else "COMPLETE" if row_budget(final) >= top else "PRUNED"
        values = None
        if state == "COMPLETE":
            values = [loss, float(final["params"])] if multi_objective else [loss]
        feats = cell_features(key)
        params = {"nodes": feats.get("nodes", 0), "height": feats.get("height", 0),
                  "memory": feats.get("memory", False), "seed": key in seed_names,
                  **{name: feats.get(name, 0) for name in counted}}
        attrs = {"cell": key, "written": final["cell"], "generation": krows[0]["generation"],
                 "status": final["status"] if loss is not None or final["status"] != "ok" else "diverged",
                 "params": final["params"], "seconds": round(sum(r["seconds"] for r in krows), 3),
                 "budget": row_budget(final), "task": final["task"]}
        if final.get("reason"):
            attrs["reason"] = final["reason"]
        if key in seed_names:
            attrs["seed"] = seed_names[key]
        if key in predictions and math.isfinite(predictions[key]):
            attrs["predicted"] = predictions[key]
        out.append(TrialSpec(key, state, values, inter, params, attrs, _local(krows[0]["started_at"]),
                             _local(final["finished_at"])))
    return out


def _upper(n: int, floor: int) -> int:
    """A range bound that moves rarely (`floor`, or the next power of two), so an updated study keeps its
    distributions and the search can append to it."""
    return floor if n <= floor else 1 << (int(n) - 1).bit_length()


# ---------------------------------------------------------------- writing with Optuna


def _distributions(specs: list[TrialSpec], floor: int) -> dict[str, Any]:
    """One distribution per parameter for all trials: counts in [0, floor], or larger when a cell needs it."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    names = specs[0].params if specs else {}
    dists: dict[str, Any] = {}
    for name, v in names.items():
        if isinstance(v, bool):
            dists[name] = CategoricalDistribution([False, True])
        else:
            dists[name] = IntDistribution(0, _upper(max(s.params[name] for s in specs), floor))
    return dists


def _frozen(spec: TrialSpec, dists: dict[str, Any]) -> optuna.trial.FrozenTrial:
    """The spec as an Optuna trial (the public FrozenTrial, as `create_trial` builds it, with the archive's times)."""
    from optuna.trial import FrozenTrial, TrialState

    return FrozenTrial(number=-1, trial_id=-1, state=TrialState[spec.state], value=None, values=spec.values,
                       datetime_start=spec.start, datetime_complete=spec.end, params=dict(spec.params),
                       distributions=dict(dists), user_attrs=dict(spec.user_attrs), system_attrs={},
                       intermediate_values=dict(spec.intermediate))


def signature(t: optuna.trial.FrozenTrial) -> tuple:
    """What makes two trials the same (everything but ids): compares written and loaded trials."""
    def when(d: datetime | None) -> float | None:
        return round(d.timestamp(), 3) if d else None

    return (t.state.name, t.values, sorted(t.intermediate_values.items()), sorted(t.params.items()),
            repr(sorted(t.distributions.items())), sorted(t.user_attrs.items()),
            when(t.datetime_start), when(t.datetime_complete))


def open_storage(path: Path) -> Any:
    """An Optuna storage on the file: journal for .log/.journal, SQLite (RDB) for .db/.sqlite/.sqlite3."""
    import optuna

    if path.suffix.lower() in JOURNAL_SUFFIXES:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path)))
    return optuna.storages.RDBStorage(f"sqlite:///{path.resolve()}")


def _close(storage: Any) -> None:
    import optuna

    if isinstance(storage, optuna.storages.RDBStorage):
        storage.remove_session()
        storage.engine.dispose()


def _refuse_foreign(path: Path) -> None:
    """ConfigError when `path` exists but is not an Optuna study file (Optuna would write into it)."""
    try:
        if not path.exists() or path.stat().st_size == 0:
            return
        if path.suffix.lower() in JOURNAL_SUFFIXES:
            with open(path, "rb") as f:
                first = f.readline(1 << 20)
            try:
                entry = json.loads(first)
                ours = first.endswith(b"\n") and isinstance(entry, dict) and "op_code" in entry
            except ValueError:
                ours = False
        else:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            finally:
                db.close()
            ours = not tables or "studies" in tables
    except sqlite3.DatabaseError:
        ours = False
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if not ours:
        raise ConfigError(f"{str(path)!r} is not an Optuna study file; not overwritten (choose another file name)")


def _rewrite(storage: Any, name: str, specs: list[TrialSpec], directions: list[str], run: Path,
             floor: int) -> None:
    """Delete the study `name` (when there is one) and write it again; other studies in the file stay."""
    import optuna
    from optuna.exceptions import ExperimentalWarning

    if name in optuna.get_all_study_names(storage):
        optuna.delete_study(study_name=name, storage=storage)
    study = optuna.create_study(storage=storage, study_name=name, directions=directions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        study.set_metric_names(list(OBJECTIVES[:len(directions)]))
    study.set_user_attr("evonas_run", str(run.resolve()))
    dists = _distributions(specs, floor)
    study.add_trials([_frozen(s, dists) for s in specs])


def _append(storage: Any, name: str, specs: list[TrialSpec], directions: list[str], floor: int) -> bool:
    """Add the trials the study lacks when it holds the start of `specs`; False when it must be rewritten."""
    import optuna

    if name not in optuna.get_all_study_names(storage):
        return False
    study = optuna.load_study(study_name=name, storage=storage)
    if [d.name.lower() for d in study.directions] != directions:
        return False
    have = study.get_trials(deepcopy=False)
    dists = _distributions(specs, floor)
    want = [_frozen(s, dists) for s in specs]
    if len(have) > len(want) or any(signature(h) != signature(w) for h, w in zip(have, want, strict=False)):
        return False
    study.add_trials(want[len(have):])
    return True


def export_study(run_dir: str | Path, path: str | Path, study_name: str | None = None,
                 fresh: bool = True) -> int:
    """Write the run in `run_dir` as the study `study_name` (default: the run folder's name) in `path`.

    fresh=True deletes the study and writes it again (re-exporting is idempotent; other studies in the file
    stay); fresh=False (the search, after each generation) only adds the trials the study lacks when it
    already holds the earlier ones, so a running optuna-dashboard follows along. Returns the trial count.
    """
    import optuna
    import sqlalchemy.exc

    from evonas.reporting.report import load_run

    run = Path(run_dir)
    path = check_target(path)
    data = load_run(run)
    multi = data.config.get("selection") == "nsga2"
    try:
        ops = op_set(data.config.get("ops", "core"))
    except ConfigError:  # a hand-edited config: the operators seen in the run are enough
        ops = frozenset()
    specs = trial_specs(data.rows, data.seeds, data.predictions, multi, ops)
    directions = ["minimize"] * (2 if multi else 1)
    filters = data.config.get("filters")
    max_nodes = {**defaults.SEARCH_FILTERS, **(filters if isinstance(filters, dict) else {})}.get("max_nodes")
    # Every count of a cell within the run's node limit (nodes, height, each operator) is at most that limit.
    floor = max_nodes if isinstance(max_nodes, int) and not isinstance(max_nodes, bool) and max_nodes > 0 else 8
    name = study_name or run.resolve().name
    _refuse_foreign(path)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" lines on the terminal
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        storage = open_storage(path)
        try:
            if fresh or not _append(storage, name, specs, directions, floor):
                _rewrite(storage, name, specs, directions, run, floor)
        finally:
            _close(storage)
    except (OSError, ValueError, optuna.exceptions.OptunaError, sqlalchemy.exc.SQLAlchemyError) as e:
        raise CheckpointError(f"cannot write the Optuna study {path}: {str(e).splitlines()[0]}") from None
    return len(specs)
