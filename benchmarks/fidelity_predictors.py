"""What predicts a cell's top-rung loss: its rung-0 loss, a learning-curve predictor, or the surrogate?

Input: CSVs written by `benchmarks/proxy_fidelity.py --out` (every cell trained through all rung budgets, with
its rung-0 training-loss curve). For each of `--splits` seeded splits, the cells are divided into a training
part (as a search's archive would see them) and held-out cells; on the training part successive halving is
simulated (every cell has rung 0, the best 1/eta by rung-0 loss rung 1, the best 1/eta of those the top; the
library cells, as seeds, every rung). On the held-out cells that finished ok at the top rung it prints Kendall tau
against the top-rung loss of:
  rung-0 loss              what successive halving promotes on by default
  curve (SH)               `evonas.evolution.curves` fitted on the training cells that reached the top
  curve (all)              the same fitted on every training cell's top-rung loss (an upper bound: a search
                           never has these)
  surrogate first rung     the builtin TreeLSTM ensemble fine-tuned on the training cells' rung-0 results
  surrogate all rungs      the same fine-tuned on every rung the training cells reached (`surrogate.fidelity`)
and mean +- sd over splits with a paired t-test of each against the rung-0 loss.

    .venv/bin/python benchmarks/fidelity_predictors.py benchmarks/data/rungs_synthetic.csv \
        benchmarks/data/rungs_jsb.csv --splits 5

The two datasets were made with (about 14 and 41 minutes on 2 shared cores):
    .venv/bin/python benchmarks/proxy_fidelity.py --task synthetic --budgets 40,120,360 --hidden 32 --random 60 \
        --mutants 60 --workers 2 --out benchmarks/data/rungs_synthetic.csv
    .venv/bin/python benchmarks/proxy_fidelity.py --task music --budgets 2,6,18 --hidden 64 --lr 0.01 --random 40 \
        --mutants 40 --workers 2 --out benchmarks/data/rungs_jsb.csv
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
from pathlib import Path

from _common import load_average


def read(path: str) -> tuple[list[dict], list[str]]:
    """Rows with losses (None = failed) per budget column and the curve; the budget column names."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = [c for c in reader.fieldnames or [] if c.startswith("loss_")]
        rows = []
        for r in reader:
            losses = [float(r[c]) if r[c] else None for c in cols]
            curve = [float(v) for v in r["curve"].split(";") if v]
            rows.append({"cell": r["cell"], "origin": r["origin"], "losses": losses, "curve": curve})
    return rows, cols


def halving(rows: list[dict], eta: int) -> list[int]:
    """The highest rung each training cell reaches under successive halving (seeds: every rung; -1: failed)."""
    n_rungs = len(rows[0]["losses"])
    reached = [0 if r["losses"][0] is not None else -1 for r in rows]
    alive = [i for i, v in enumerate(reached) if v == 0]
    for k in range(1, n_rungs):
        ok = sorted((i for i in alive if rows[i]["losses"][k - 1] is not None), key=lambda i: rows[i]["losses"][k - 1])
        keep = set(ok[: max(1, len(alive) // eta)]) | {i for i in ok if rows[i]["origin"].startswith("library")}
        alive = [i for i in alive if i in keep]
        for i in alive:
            reached[i] = k
    return reached


def tau(a: list[float], b: list[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def one_split(rows: list[dict], seed: int, eta: int, test_share: float, surrogate: bool) -> dict[str, float]:
    """Kendall tau of each predictor on the held-out cells of one seeded split."""
    import random

    from evonas.evolution.curves import CurvePredictor, features

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_test = int(len(rows) * test_share)
    test = [rows[i] for i in order[:n_test] if rows[i]["losses"][-1] is not None]
    train = [rows[i] for i in order[n_test:]]
    reached = halving(train, eta)
    top = len(rows[0]["losses"]) - 1
    y_test = [r["losses"][-1] for r in test]
    out = {"rung-0 loss": tau([r["losses"][0] for r in test], y_test)}
    x_test = [features(r["cell"], r["losses"][0], r["curve"]) for r in test]
    for name, pool in (("curve (SH)", [r for r, k in zip(train, reached, strict=True) if k == top]),
                       ("curve (all)", [r for r in train if r["losses"][-1] is not None])):
        pool = [r for r in pool if r["losses"][-1] is not None]
        model = CurvePredictor().fit([features(r["cell"], r["losses"][0], r["curve"]) for r in pool],
                                     [r["losses"][-1] for r in pool])
        out[name] = tau(model.predict(x_test), y_test)
        out[f"n {name}"] = len(pool)
    if surrogate:
        from evonas.surrogate.api import load_init

        for name, every in (("surrogate first rung", False), ("surrogate all rungs", True)):
            records = []
            for r, k in zip(train, reached, strict=True):
                last = k if k >= 0 else 0
                for rung in (range(last + 1) if every else [0]):
                    loss = r["losses"][rung]
                    status = "ok" if loss is not None else "diverged"
                    records.append({"cell": r["cell"], "score": loss, "status": status, "rung": rung, "generation": 0})
            model = load_init("builtin", seed=seed, ensemble=3)
            model.fit(records, warm_start=True, epochs=50)
            out[name] = tau(model.score([r["cell"] for r in test]), y_test)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv", nargs="+", help="outputs of benchmarks/proxy_fidelity.py --out")
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--test-share", type=float, default=0.4)
    ap.add_argument("--no-surrogate", action="store_true", help="skip the two surrogate fits (fast)")
    args = ap.parse_args(argv)

    import torch
    from scipy.stats import ttest_rel

    torch.set_num_threads(1)
    for path in args.csv:
        rows, cols = read(path)
        t0 = time.time()
        splits = [one_split(rows, s, args.eta, args.test_share, not args.no_surrogate) for s in range(args.splits)]
        ok = sum(r["losses"][-1] is not None for r in rows)
        print(f"\n{Path(path).name}: {len(rows)} cells ({ok} ok at the top rung {cols[-1]}), {args.splits} splits, "
              f"{args.test_share:.0%} held out, eta {args.eta}, load {load_average()}, {time.time() - t0:.0f} s")
        base = [s["rung-0 loss"] for s in splits]
        print(f"{'predictor':<22} {'tau mean':>8} {'sd':>6}   paired t-test vs rung-0 loss (two-sided)")
        for name in [k for k in splits[0] if not k.startswith("n ")]:
            vals = [s[name] for s in splits]
            extra = ""
            if name != "rung-0 loss":
                p = ttest_rel(vals, base).pvalue
                extra = f"   diff {statistics.mean(vals) - statistics.mean(base):+.3f}, p = {p:.3f}"
                if f"n {name}" in splits[0]:
                    extra += f"  (fitted on {statistics.mean(s[f'n {name}'] for s in splits):.0f} cells)"
            sd = statistics.stdev(vals) if len(vals) > 1 else math.nan
            print(f"{name:<22} {statistics.mean(vals):>8.3f} {sd:>6.3f}{extra}")
        if "surrogate all rungs" in splits[0]:
            every, first = [s["surrogate all rungs"] for s in splits], [s["surrogate first rung"] for s in splits]
            print(f"surrogate all rungs - first rung: {statistics.mean(every) - statistics.mean(first):+.3f}, "
                  f"paired t-test p = {ttest_rel(every, first).pvalue:.3f}; per split "
                  + ", ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(every, first, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
