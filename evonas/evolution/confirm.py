"""Confirmation: is a found cell really better than the seed cells? (DESIGN "Search loop", last paragraph)

The top K cells of a finished run and every seed cell are retrained at the full budget, at equal parameters
(`match_params`, default the LSTM at the run's hidden size), each at the learning rate its search arm found
best, with N fresh seeds shared by all cells (paired). Test loss is measured. Each found cell is compared with
the best seed cell (lowest mean test loss) by the paired differences over seeds and a one-sided paired t-test
(scipy), and gets one plain verdict line. Results go to `RUN/confirm/archive.sqlite` as they arrive (a killed
confirmation resumes without training anything twice), then `RUN/confirm.json` and `RUN/confirm.csv`. The
winner's weights (best found cell, first seed) are saved as `RUN/winner/cell.pt` (state dict of the compiled
cell), `RUN/winner/model.pt` (the whole model) and `RUN/winner/meta.json`.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from evonas.errors import CheckpointError, ConfigError
from evonas.evaluation import Evaluator, Job
from evonas.store.archive import Archive, fitness_rows, json_safe
from evonas.store.checkpoint import load_checkpoint
from evonas.store.runlog import CONFIG_COPY

CONFIRM_DIR, CONFIRM_JSON, CONFIRM_CSV, WINNER_DIR = "confirm", "confirm.json", "confirm.csv", "winner"
FIRST_SEED = 1000  # confirmation seeds are 1000, 1001, ...: never the seeds the search trained with
ALPHA = 0.05  # a found cell "beats" the reference when its paired one-sided p-value is below this


@dataclass
class ConfirmSettings:
    """What to confirm and how: top K found cells, N paired seeds, the budget, the parameter target."""

    top: int = 3
    seeds: int = 3
    budget: dict = field(default_factory=dict)  # TrainConfig settings over the top rung's, e.g. {"epochs": 30}
    match_params: str | int | None = "lstm"

    @classmethod
    def from_dict(cls, d: dict | None, run_match: str | int | None = None) -> ConfirmSettings:
        """From a run config's `confirm:` section (ConfigError naming a bad value)."""
        d = dict(d or {})
        budget = dict(d.get("budget") or {})
        if set(budget) & {"epochs", "steps", "seconds"}:  # a budget given here replaces the top rung's, unit and all
            budget = {"epochs": None, "steps": None, "seconds": None, **budget}
        s = cls(top=d.get("top", 3), seeds=d.get("seeds", 3), budget=budget,
                match_params=run_match if run_match is not None else "lstm")
        for name in ("top", "seeds"):
            v = getattr(s, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"confirm.{name} must be a positive integer, got {v!r}")
        fixed = {"task", "data", "device", "seed", "test"} & set(s.budget)
        if fixed:
            raise ConfigError(f"confirm.budget may not set {sorted(fixed)} (the run's task and device are kept; "
                              "seeds are fresh; test loss is always measured)")
        from evonas.training.config import TrainConfig

        TrainConfig.from_dict({k: v for k, v in s.budget.items()})  # ConfigError naming a bad key or value
        return s


def _run_state(run: Path) -> tuple[dict, dict[str, str], list[dict]]:
    """(run config dict, seed name -> key, archive rows) of a finished run."""
    if not (run / "archive.sqlite").exists():
        raise CheckpointError(f"no run in {run} (no archive.sqlite)")
    try:
        state = load_checkpoint(run)
        config, seeds = state["config"], dict(state.get("seeds") or {})
    except CheckpointError:
        import yaml

        if not (run / CONFIG_COPY).exists():
            raise
        config, seeds = yaml.safe_load((run / CONFIG_COPY).read_text(encoding="utf-8")), {}
    with Archive(run, create=False) as a:
        rows = a.rows()
    return config, seeds, rows


def plan(run: Path, settings: ConfirmSettings) -> tuple[list[dict], dict, Any]:
    """The cells to retrain (found cells first, then seed cells), the full budget they share, the run's config."""
    from evonas.evolution.config import RunConfig

    config, seeds, rows = _run_state(run)
    cfg = RunConfig.from_dict(config, where=f"{run} config")
    budget = {**cfg.rung_budgets()[-1], **settings.budget, "test": True}
    seed_keys = {key: name for name, key in seeds.items()}
    fit = [r for r in fitness_rows(rows) if r["status"] == "ok" and r["valid_loss"] is not None]
    found = [r for r in fit if r["key"] not in seed_keys][: settings.top]
    cells = [{"key": r["key"], "cell": r["cell"], "name": f"found-{i + 1}", "seed_cell": False,
              "lr": r["budget"].get("lr"), "search_valid_loss": r["valid_loss"]} for i, r in enumerate(found)]
    by_key = {r["key"]: r for r in fitness_rows(rows)}
    for key, name in seed_keys.items():
        row = by_key.get(key)
        cells.append({"key": key, "cell": row["cell"] if row else key, "name": name, "seed_cell": True,
                      "lr": row["budget"].get("lr") if row else None,
                      "search_valid_loss": row["valid_loss"] if row else None})
    if not any(c["seed_cell"] for c in cells):
        raise ConfigError(f"the run in {run} has no seed cells to compare with (seed_cells was empty)")
    return cells, budget, cfg


def confirm(run_dir: str | Path, settings: ConfirmSettings | None = None, evaluator: Evaluator | None = None,
            out: IO[str] | None = None) -> dict:
    """Retrain, compare and write the confirmation of a finished run; returns what confirm.json holds."""
    run = Path(run_dir)
    settings = settings or ConfirmSettings()
    if isinstance(settings.match_params, str):
        from evonas.cells.library import lookup

        if lookup(settings.match_params) is None:
            raise ConfigError(f"match_params: {settings.match_params!r} is not a cell-library name")
    cells, budget, cfg_run = plan(run, settings)
    sized = _sizes(cells, budget, settings.match_params)
    folder = run / CONFIRM_DIR
    folder.mkdir(exist_ok=True)
    states = folder / "states"
    results: dict[tuple[str, int], dict] = {}
    jobs = []
    with Archive(folder) as archive:
        for c in cells:
            if isinstance(sized[c["key"]], str):
                continue
            for i in range(settings.seeds):
                cfg = {**budget, "seed": FIRST_SEED + i, "hidden": sized[c["key"]],
                       **({"lr": c["lr"]} if c["lr"] is not None else {})}
                row = archive.get(c["key"], cfg)
                if row is not None:
                    results[(c["key"], i)] = row["metrics"]
                else:
                    jobs.append(Job(key=c["key"], cell=c["cell"], config=cfg, generation=i,
                                    state_out=str(states / f"{_slug(c['key'])}-s{i}.pt")))

        def on_result(job: Job, result: Any) -> None:
            archive.add(job, result)
            results[(job.key, job.generation)] = json_safe(result.to_dict())

        if jobs:
            own = evaluator is None
            evaluator = evaluator or cfg_run.evaluator(folder / "workers.log")
            try:
                evaluator.run(jobs, on_result)
            finally:
                if own:
                    evaluator.close()
    summary = summarise(cells, results, settings.seeds, sized)
    summary.update({"budget": budget, "seeds": [FIRST_SEED + i for i in range(settings.seeds)],
                    "match_params": settings.match_params})
    _save_winner(run, summary, states)
    (run / CONFIRM_JSON).write_text(json.dumps(json_safe(summary), indent=2) + "\n", encoding="utf-8")
    _write_csv(run / CONFIRM_CSV, summary)
    if out is not None:
        out.write(format_summary(summary) + "\n")
    return summary


def _sizes(cells: list[dict], budget: dict, target: str | int | None) -> dict[str, int | str]:
    """Hidden size per cell (equal parameters), or the reason it cannot be matched."""
    if target is None:
        return {c["key"]: budget.get("hidden") for c in cells}
    from evonas.training.sizing import match_hidden

    return {c["key"]: match_hidden(c["cell"], budget, target) for c in cells}


def _slug(key: str) -> str:
    import hashlib

    return hashlib.sha1(key.encode()).hexdigest()[:16]


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(cells: list[dict], results: dict, n_seeds: int, sized: dict) -> dict:
    """Per cell mean ± sd of valid/test loss, paired comparison of each found cell with the best seed cell."""
    from scipy.stats import ttest_rel

    table = []
    for c in cells:
        runs = [results.get((c["key"], i)) for i in range(n_seeds)]
        ok = [m for m in runs if m and m.get("status") == "ok" and m.get("test_loss") is not None]
        vm, vs = _mean_sd([m["valid_loss"] for m in ok])
        tm, ts = _mean_sd([m["test_loss"] for m in ok])
        table.append({**c, "hidden": sized[c["key"]] if not isinstance(sized[c["key"]], str) else None,
                      "unmatched": sized[c["key"]] if isinstance(sized[c["key"]], str) else None,
                      "params": ok[0]["params"] if ok else None, "runs_ok": len(ok), "valid_mean": vm,
                      "valid_sd": vs, "test_mean": tm, "test_sd": ts,
                      "test": [m["test_loss"] if m and m.get("status") == "ok" else None for m in runs]})
    refs = [t for t in table if t["seed_cell"] and t["test_mean"] is not None and t["runs_ok"] == n_seeds]
    ref = min(refs, key=lambda t: t["test_mean"]) if refs else None
    for t in table:
        t["verdict"] = _verdict(t, ref, n_seeds, ttest_rel)
    found = [t for t in table if not t["seed_cell"] and t["test_mean"] is not None]
    winner = min(found, key=lambda t: t["test_mean"]) if found else None
    return {"reference": ref["name"] if ref else None, "cells": table,
            "winner": winner["key"] if winner else None}


def _verdict(t: dict, ref: dict | None, n: int, ttest_rel: Any) -> str:
    """One plain line: does this cell beat the reference seed cell on test loss, by how much, how sure."""
    if t["unmatched"]:
        return f"not confirmed: {t['unmatched']}"
    if t["runs_ok"] < n:
        return f"not confirmed: {n - t['runs_ok']} of {n} runs did not finish ok"
    if ref is None:
        return "no reference: no seed cell finished every run"
    if t is ref:
        return "reference (best seed cell on test loss)"
    diffs = [r - c for r, c in zip(ref["test"], t["test"], strict=True)]  # > 0: this cell is better
    mean, sd = _mean_sd(diffs)
    wins = sum(d > 0 for d in diffs)
    p = float(ttest_rel(t["test"], ref["test"], alternative="less").pvalue) if n > 1 and sd else math.nan
    p_text = f"p = {p:.3g}" if math.isfinite(p) else "p undefined"
    what = "beats" if mean > 0 and math.isfinite(p) and p < ALPHA else "does not beat"
    sign = "by" if mean > 0 else "trails it by"
    return (f"{what} {ref['name']}{':' if what == 'does not beat' else ''} {sign} {abs(mean):.3f} ± {sd:.3f} "
            f"nats on test, {p_text}, {wins}/{n} seeds")


def format_summary(summary: dict) -> str:
    """The confirmation as a person reads it: one line per cell, then the verdicts."""
    lines = [f"confirmation at {_budget_text(summary['budget'])}, seeds {summary['seeds']}, "
             f"equal parameters: {summary['match_params']}",
             f"{'cell':<12} {'params':>8} {'hidden':>6} {'valid':>15} {'test':>15}  verdict"]
    for t in summary["cells"]:
        def ms(m: float | None, s: float | None) -> str:
            return "-" if m is None else f"{m:.4f} ± {s:.4f}"

        lines.append(f"{t['name']:<12} {t['params'] or '-':>8} {t['hidden'] or '-':>6} "
                     f"{ms(t['valid_mean'], t['valid_sd']):>15} {ms(t['test_mean'], t['test_sd']):>15}  {t['verdict']}")
    for t in summary["cells"]:
        if not t["seed_cell"]:
            lines.append(f"{t['name']}: {t['key']}")
    return "\n".join(lines)


def _budget_text(b: dict) -> str:
    parts = [f"{b[k]} {k}" for k in ("epochs", "steps") if b.get(k)]
    if b.get("seconds"):
        parts.append(f"{b['seconds']} s ({b.get('clock', 'wall')})")
    return ", ".join(parts) or "the task's default budget"


def _write_csv(path: Path, summary: dict) -> None:
    cols = ["name", "key", "seed_cell", "params", "hidden", "lr", "runs_ok", "valid_mean", "valid_sd", "test_mean",
            "test_sd", "verdict"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for t in summary["cells"]:
            w.writerow(["" if t.get(c) is None else t.get(c) for c in cols])


def _save_winner(run: Path, summary: dict, states: Path) -> None:
    """Keep the winner's trained weights (first seed) as state dicts + JSON meta; drop the other states."""
    winner = summary.get("winner")
    if winner:
        import torch

        path = states / f"{_slug(winner)}-s0.pt"
        if path.exists():
            state = torch.load(path, map_location="cpu", weights_only=True)
            model = state["best"] if state.get("best") is not None else state["model"]
            cell = {k[len("cells.0."):]: v for k, v in model.items() if k.startswith("cells.0.")}
            out = run / WINNER_DIR
            out.mkdir(exist_ok=True)
            torch.save(model, out / "model.pt")
            torch.save(cell, out / "cell.pt")
            t = next(t for t in summary["cells"] if t["key"] == winner)
            meta = {"cell": winner, "input_size": t["hidden"], "hidden_size": t["hidden"], "params": t["params"],
                    "seed": summary["seeds"][0], "test_loss": t["test"][0], "verdict": t["verdict"],
                    "budget": summary["budget"], "files": {"cell.pt": "state dict of compile_cell(cell, hidden, "
                                                                      "hidden)", "model.pt": "state dict of CellModel"}}
            (out / "meta.json").write_text(json.dumps(json_safe(meta), indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(states, ignore_errors=True)
