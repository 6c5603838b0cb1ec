"""Our own "Search Space Odyssey" table: every library cell on one task at an equal parameter count and an
equal training budget, several seeds, mean ± spread, ranked.

Equal size: the target is the LSTM's parameter count at the task's default hidden size (or --hidden); each
cell gets the hidden size whose full model (built exactly as training builds it) has the parameter count
closest to the target, found by binary search; a cell that cannot get within --tolerance (5%) is flagged.
Equal budget: the same TrainConfig (steps/epochs, optimiser, ...) and the same seeds for every cell.

Example (what fits a shared 2-core machine; state the budget with the table):
  .venv/bin/python benchmarks/baselines.py --task music --epochs 30 --lrs 0.01,0.003 --dropout 0.2 --hidden 64 \
      --seeds 3 --workers 2 --out baselines_jsb.md --cache baselines_jsb.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from _common import JSB

from evonas.cells import Node, canonical_text, to_text
from evonas.evaluation import Job, LocalEvaluator
from evonas.nn.model import CellModel, count_params
from evonas.training.tasks import get_task
from evonas.training.train import TrainConfig, settings


def param_count(cell: Node, config: TrainConfig, hidden: int) -> int:
    """Trainable parameters of the model `evaluate` would build for this cell at this hidden size."""
    task = get_task(config.task, config.data, config.level)
    s = settings(config, task)
    model = CellModel(cell, task.input_kind, task.n_inputs, task.n_outputs, hidden, config.layers, s.tie)
    return count_params(model)


def default_hidden(config: TrainConfig) -> int:
    """The hidden size training uses when the config does not set one."""
    return settings(config, get_task(config.task, config.data, config.level)).hidden


def match_hidden(cell: Node, config: TrainConfig, target: int, max_hidden: int = 4096) -> tuple[int, int]:
    """(hidden, params): the hidden size whose model's parameter count is closest to `target` (binary search)."""
    lo, hi = 1, max_hidden
    while lo < hi:  # smallest hidden with params >= target (params grow with hidden)
        mid = (lo + hi) // 2
        if param_count(cell, config, mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    best = min({max(1, lo - 1), lo}, key=lambda h: (abs(param_count(cell, config, h) - target), h))
    return best, param_count(cell, config, best)


def mean_sd(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for fewer than two values)."""
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def _cache_key(job: Job) -> str:
    return json.dumps([job.cell, job.config], sort_keys=True)


def train_many(jobs: list[Job], workers: int, timeout: float | None,
               cache: str | None = None) -> dict[tuple[str, int], dict]:
    """Train every job with the local evaluator; results keyed by (job key, seed).

    With `cache` (a JSONL file), every result is appended as it arrives and a job whose cell text and training
    config are already in the file is not trained again (so a killed run continues where it stopped).
    """
    out: dict[tuple[str, int], dict] = {}
    done: dict[str, dict] = {}
    if cache and Path(cache).exists():
        for line in Path(cache).read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                done[entry["job"]] = entry["result"]
    todo = []
    for job in jobs:
        if _cache_key(job) in done:
            out[(job.key, job.config["seed"])] = done[_cache_key(job)]
        else:
            todo.append(job)
    if len(todo) < len(jobs):
        print(f"  {len(jobs) - len(todo)} result(s) taken from {cache}", file=sys.stderr)
    same: dict[str, list[Job]] = {}  # identical trees (e.g. mgu and gru) are trained once
    for job in todo:
        same.setdefault(_cache_key(job), []).append(job)
    jobs = [group[0] for group in same.values()]

    def on_result(job: Job, result) -> None:
        for twin in same[_cache_key(job)]:
            out[(twin.key, twin.config["seed"])] = result.to_dict()
        if cache:
            with open(cache, "a", encoding="utf-8") as f:
                f.write(json.dumps({"job": _cache_key(job), "result": result.to_dict()}) + "\n")
        r = out[(job.key, job.config["seed"])]
        print(f"  {job.key[:50]:<50} seed {job.config['seed']}: {r['status']} {r['valid_loss']} "
              f"({r['seconds']:.0f} s)", file=sys.stderr, flush=True)

    if jobs:
        with LocalEvaluator(workers=workers, timeout=timeout, devices=["cpu"], threads=1) as ev:
            ev.run(jobs, on_result)
    return out


def add_budget_args(p: argparse.ArgumentParser) -> None:
    """The training options every run of a comparison shares (also used by best_vs_lstm.py)."""
    p.add_argument("--epochs", type=int, default=0)
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--seconds", type=float, default=0.0)
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"], help="what --seconds measures")
    p.add_argument("--lr", type=float, default=0.0, help="learning rate (0: the task default)")
    p.add_argument("--batch-size", type=int, default=0, help="batch size (0: the task default)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout on the cell's inputs and outputs")


def base_config(args: argparse.Namespace) -> dict:
    """The shared TrainConfig dict (without hidden and seed); test loss is always measured."""
    d: dict = {"task": args.task, "data": args.data if args.task != "synthetic" else None, "device": "cpu",
               "test": True, "clock": args.clock}
    for k in ("epochs", "steps", "seconds", "lr", "batch_size"):
        if getattr(args, k):
            d[k] = getattr(args, k)
    if args.dropout:
        d["dropout_in"] = d["dropout_out"] = args.dropout
    return d


def budget_text(base: dict) -> str:
    """The shared budget and optimiser settings, in words."""
    keys = ("epochs", "steps", "seconds", "clock", "lr", "batch_size", "dropout_in")
    shown = [k for k in keys if k in base and (k != "clock" or "seconds" in base)]
    return ", ".join(f"{k.replace('_in', '')} {base[k]}" for k in shown)


def row_at(res: dict[tuple[str, int], dict], key: str, seeds: int) -> dict:
    """Mean ± sd of the validation (and test) losses of one cell at one setting over seeds 0..seeds-1."""
    rs = [res[(key, s)] for s in range(seeds)]
    ok = [r["valid_loss"] for r in rs if r["status"] == "ok" and r["valid_loss"] is not None]
    tests = [r["test_loss"] for r in rs if r["status"] == "ok" and r.get("test_loss") is not None]
    m, sd = mean_sd(ok) if ok else (math.inf, 0.0)
    return {"mean": m, "sd": sd, "losses": ok, "test": mean_sd(tests) if tests else None,
            "failed": len(rs) - len(ok), "seconds": statistics.fmean(r["seconds"] for r in rs),
            "reasons": sorted({r["reason"] for r in rs if r["status"] != "ok"})}


def main(argv: list[str] | None = None) -> None:
    """Match sizes, train every library cell with every seed, print and save the ranked markdown table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="music", choices=["synthetic", "music", "text"])
    p.add_argument("--data", default=str(JSB), help="data path (default: JSB Chorales in ../shared/data)")
    add_budget_args(p)
    p.add_argument("--hidden", type=int, default=0, help="LSTM hidden size that fixes the target (0: task default)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--lrs", default="", help="comma list of learning rates: every cell is trained at each and "
                   "shown at the one with its lowest mean validation loss (per-cell tuning, as Greff et al. tuned "
                   "every variant); overrides --lr")
    p.add_argument("--cells", default="", help="comma list of library names (default: the whole library)")
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--out", default="", help="also write the markdown table to this file")
    p.add_argument("--cache", default="", help="JSONL of finished results: reused, and appended to as results arrive")
    args = p.parse_args(argv)
    from evonas.cells.library import library

    lib = library()
    names = [n for n in args.cells.split(",") if n] or list(lib)
    base = base_config(args)
    cfg0 = TrainConfig.from_dict(base)
    lstm_hidden = args.hidden or default_hidden(cfg0)
    target = param_count(lib["lstm"].cell, cfg0, lstm_hidden)
    sizes = {n: match_hidden(lib[n].cell, cfg0, target) for n in names}
    lrs = [float(x) for x in args.lrs.split(",") if x] or [base.get("lr")]
    if args.lrs:
        base.pop("lr", None)
    jobs = []
    for n in names:
        for lr in lrs:
            conf_lr = {"lr": lr} if lr else {}
            for seed in range(args.seeds):
                conf = TrainConfig.from_dict({**base, **conf_lr, "hidden": sizes[n][0], "seed": seed}).to_dict()
                jobs.append(Job(key=f"{canonical_text(lib[n].cell)} lr={lr}", cell=to_text(lib[n].cell), config=conf))
    res = train_many(jobs, args.workers, args.timeout, args.cache or None)
    rows = []
    for n in names:
        per_lr = [row_at(res, f"{canonical_text(lib[n].cell)} lr={lr}", args.seeds) | {"lr": lr} for lr in lrs]
        best = min(per_lr, key=lambda r: (not r["losses"], r["mean"]))  # the lr with the lowest mean valid loss
        rows.append({"name": n, "hidden": sizes[n][0], "params": sizes[n][1], **best})
    total = sum(res[(j.key, j.config["seed"])]["seconds"] for j in {_cache_key(j): j for j in jobs}.values())
    rows.sort(key=lambda r: (r["failed"] > 0 and not r["losses"], r["mean"]))
    budget = (budget_text(base) or "task default") + " per run" + (
        f"; lr per cell: the one of {', '.join(f'{x:g}' for x in lrs)} with the lowest mean validation loss"
        if len(lrs) > 1 else "")
    lines = [f"Library cells on `{args.task}`"
             f"{'' if args.task == 'synthetic' else f' ({Path(args.data).name})'}: budget {budget}; "
             f"{args.seeds} seeds (0..{args.seeds - 1}), parameters matched to the LSTM at hidden {lstm_hidden} "
             f"({target:,} parameters, tolerance {args.tolerance:.0%}). Validation loss (nats per token; per time "
             f"step for music), mean ± sample sd over seeds, ranked by validation loss; test loss alongside. "
             f"Training time {total / 60:.0f} min summed over runs "
             "(shared 2-core CPU, 1 thread per run).", "",
             "| rank | cell | hidden | params (vs LSTM) | valid loss mean ± sd | min..max | test loss mean ± sd "
             "| lr | failed | s/run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    first: dict[str, str] = {}
    for n in names:
        first.setdefault(canonical_text(lib[n].cell), n)
    for i, r in enumerate(rows, 1):
        same = first[canonical_text(lib[r["name"]].cell)]
        if same != r["name"]:
            r["name"] += f" (same tree as {same})"
        dev = (r["params"] - target) / target
        flag = "" if abs(dev) <= args.tolerance else " **outside tolerance**"
        loss = f"{r['mean']:.4f} ± {r['sd']:.4f}" if r["losses"] else "–"
        rng = f"{min(r['losses']):.4f}..{max(r['losses']):.4f}" if r["losses"] else "–"
        test = f"{r['test'][0]:.4f} ± {r['test'][1]:.4f}" if r["test"] else "–"
        fail = f"{r['failed']}" + (f" ({'; '.join(r['reasons'])[:80]})" if r["failed"] else "")
        lines.append(f"| {i} | {r['name']} | {r['hidden']} | {r['params']:,} ({dev:+.1%}){flag} | {loss} | {rng} | "
                     f"{test} | {r['lr'] or 'default'} | {fail} | {r['seconds']:.0f} |")
    lines += ["", f"Command: `{' '.join(sys.argv)}`"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
