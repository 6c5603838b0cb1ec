"""Proxy fidelity: does a short training budget rank cells like the full one? (chooses the default rungs)

About 40 cells (the library cells, random filtered cells and mutants of the library cells) are trained once to
the full budget; on the way, the validation loss is taken at every candidate rung budget by continuing from
the saved training state (exactly the run a promoted cell gets in a search, `tests/test_train.py`). For each
budget it prints Kendall tau and Spearman rho against the full budget over the cells that finished ok, and the
overlap of the top 5. Failed or diverged cells are counted and left out of the correlations.

    .venv/bin/python benchmarks/proxy_fidelity.py --task synthetic --budgets 40,120,360,800 --hidden 32
    .venv/bin/python benchmarks/proxy_fidelity.py --task music --budgets 2,6,18,30 --hidden 64 --lr 0.01
"""

from __future__ import annotations

import argparse
import hashlib
import math
import multiprocessing as mp
import random
import sys
import tempfile
import time
from pathlib import Path

from _common import JSB, load_average


def cells(n_random: int, n_mutants: int, seed: int) -> list[tuple[str, str]]:
    """(canonical text, origin): the library cells, random filtered cells, mutants of library cells."""
    from evonas.surrogate.sample import random_cell, random_mutant

    from evonas.cells import CORE, canonical_text, passes_filters
    from evonas.cells.library import library
    from evonas.evolution.config import RunConfig

    filters = RunConfig().filter_config()
    rng = random.Random(seed)
    seen: dict[str, str] = {}
    for name in ("lstm", "gru", "tanh_rnn", "mgu", "ugrnn", "noaf", "nog"):
        entry = library().get(name)
        if entry is not None:
            seen.setdefault(canonical_text(entry.cell), f"library:{name}")
    goal = len(seen) + n_random
    while len(seen) < goal:
        c = random_cell(rng, CORE)
        if passes_filters(c, filters):
            seen.setdefault(canonical_text(c), "random")
    parents = [(n, e) for n, e in library().items() if n in ("lstm", "gru", "mgu", "ugrnn")]
    goal = len(seen) + n_mutants
    while len(seen) < goal:
        name, entry = rng.choice(parents)
        seen.setdefault(canonical_text(random_mutant(rng, entry.cell, CORE)), f"mutant:{name}")
    return list(seen.items())


def _init() -> None:
    import torch

    torch.set_num_threads(1)


def chain(job: tuple[str, dict, str, list[int], str]) -> tuple[str, list[float | None], str, list[float]]:
    """Train one cell through every budget, continuing each time; the validation loss at each budget and the
    training-loss curve of the first budget (EvalResult.curve, what a promotion predictor sees)."""
    from evonas.training.train import TrainConfig, evaluate

    cell, base, unit, budgets, folder = job
    state = Path(folder) / f"{hashlib.sha1(cell.encode()).hexdigest()[:16]}.pt"
    out: list[float | None] = []
    last: dict = {}
    curve: list[float] = []
    for i, b in enumerate(budgets):
        r = evaluate(cell, TrainConfig.from_dict({**base, unit: b}), lambda p: last.__setitem__("v", p["valid_loss"]),
                     state_in=state if i else None, state_out=state)
        curve = curve or r.curve
        if r.status != "ok":
            return cell, out + [None] * (len(budgets) - len(out)), r.status, curve
        out.append(last.get("v", r.valid_loss))  # the loss at this budget (not the best so far)
    state.unlink(missing_ok=True)
    return cell, out, "ok", curve


def write_csv(path: str, budgets: list[int], todo: list[tuple[str, str]], results: list) -> None:
    """One row per cell: cell, origin, status, the loss at each budget (loss_<budget>), the first budget's curve."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["cell", "origin", "status", *[f"loss_{b}" for b in budgets], "curve"])
        for (cell, origin), (_, losses, status, curve) in zip(todo, results, strict=True):
            w.writerow([cell, origin, status, *["" if v is None else repr(v) for v in losses],
                        ";".join(f"{v:.6g}" for v in curve)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=["synthetic", "music"], default="synthetic")
    ap.add_argument("--data", default=str(JSB) if JSB.exists() else None)
    ap.add_argument("--budgets", default="40,120,360,800", help="increasing; the last is the full budget")
    ap.add_argument("--unit", choices=["steps", "epochs"], default=None, help="default: epochs for music")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--random", type=int, default=22)
    ap.add_argument("--mutants", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write every cell's losses and first-budget curve to this CSV "
                                  "(the input of benchmarks/fidelity_predictors.py)")
    args = ap.parse_args(argv)

    from scipy.stats import kendalltau, spearmanr

    budgets = [int(b) for b in args.budgets.split(",")]
    unit = args.unit or ("epochs" if args.task == "music" else "steps")
    base = {"task": args.task, "hidden": args.hidden, "seed": args.seed, "threads": 1, "device": "cpu",
            "steps": None, "epochs": None}
    if args.task == "music":
        base.update(data=args.data, dropout_in=0.2, dropout_out=0.2)
    if args.lr:
        base["lr"] = args.lr
    todo = cells(args.random, args.mutants, args.seed)
    print(f"{len(todo)} cells, task {args.task}, budgets {budgets} {unit}, hidden {args.hidden}, "
          f"load {load_average()}", flush=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as folder, mp.get_context("spawn").Pool(args.workers, _init) as pool:
        results = pool.map(chain, [(c, base, unit, budgets, folder) for c, _ in todo])
    if args.out:
        write_csv(args.out, budgets, todo, results)
    ok = [losses for _, losses, status, _ in results if status == "ok" and all(v is not None for v in losses)]
    print(f"{len(ok)} of {len(results)} cells finished ok at every budget ({time.time() - t0:.0f} s)")
    full = [v[-1] for v in ok]
    top_full = set(sorted(range(len(ok)), key=lambda i: full[i])[:5])
    print(f"{unit:>8}  {'kendall tau':>11}  {'spearman':>8}  top-5 overlap")
    for j, b in enumerate(budgets):
        col = [v[j] for v in ok]
        tau, rho = kendalltau(col, full).statistic, spearmanr(col, full).statistic
        top = set(sorted(range(len(ok)), key=lambda i: col[i])[:5])
        print(f"{b:>8}  {tau:>11.3f}  {rho:>8.3f}  {len(top & top_full)}/5"
              + ("  (full budget)" if j == len(budgets) - 1 else ""))
    best = min(range(len(ok)), key=lambda i: full[i]) if ok else None
    if best is not None and not math.isnan(full[best]):
        print(f"best at the full budget: {full[best]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
