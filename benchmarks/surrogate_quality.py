"""Ranking quality of the surrogates on held-out cells, next to a ridge regression on operator counts.

For each of --splits random splits: --train cells for training, the rest held out. Failed/diverged cells are
in both parts. Prints Kendall tau with failures ranked below every success and tied among themselves (`tau`),
Kendall tau over the successful held-out cells alone (`tau_ok`: failures are easy to rank last and flatter the
first), Spearman and top-10% precision on the held-out part per split, and mean +- std over splits.

`--group-by family` keeps every cell of one family (a library cell and all its mutants: the CSV's `origin`
column, e.g. `mutant:lstm`; each random cell is its own family) on one side of the split, so that held-out
cells are not near-copies of training cells.

    .venv/bin/python benchmarks/surrogate_quality.py benchmarks/data/surrogate_cells.csv --splits 5 --train 200 \
        --threads 1 [--ensemble 1] [--kinds treelstm,gnn] [--group-by family] [--init builtin]
    # the shipped model's recipe, judged on held-out families of one task (the other task's data all in training):
    .venv/bin/python benchmarks/surrogate_quality.py benchmarks/data/surrogate_cells_jsb.csv --train 200 \
        --also benchmarks/data/surrogate_cells.csv --kinds treelstm --group-by family --threads 1
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from evonas.surrogate.api import DEFAULT_ENSEMBLE, Surrogate, load_init
from evonas.surrogate.data import read_records
from evonas.surrogate.graph import VOCAB
from evonas.surrogate.metrics import ranking_metrics
from evonas.surrogate.train import Normaliser

from evonas.cells import height, node_count, op_counts, parse

METRICS = ("kendall_tau", "kendall_tau_ok", "spearman", "top10_precision")


def families(path: str, n: int) -> list[str]:
    """Each row's family: the library cell it is or was mutated from (`origin` library:X / mutant:X -> X); a
    random cell, or a file without `origin`, is its own family."""
    with open(path, newline="", encoding="utf-8") as f:
        origins = [row.get("origin") or "" for row in csv.DictReader(f)]
    if len(origins) != n:
        raise SystemExit(f"{path}: {len(origins)} rows but {n} records")
    return [o.split(":", 1)[1] if ":" in o else f"#{i}" for i, o in enumerate(origins)]


def split_indices(n: int, n_train: int, seed: int, groups: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/held-out split; with groups, whole groups (in random order) fill the training part up to
    n_train cells and the rest are held out."""
    rng = np.random.default_rng(1000 + seed)
    if groups is None:
        perm = rng.permutation(n)
        return perm[:n_train], perm[n_train:]
    names = sorted(set(groups))
    train: list[int] = []
    for j in rng.permutation(len(names)):
        members = [i for i, g in enumerate(groups) if g == names[j]]
        if len(train) + len(members) <= n_train or not train:
            train += members
    held = sorted(set(range(n)) - set(train))
    return np.array(sorted(train)), np.array(held)


def count_features(cells: list[str]) -> np.ndarray:
    """Operator and source counts of the cell (not unrolled), plus node count and height."""
    rows = []
    for c in cells:
        node = parse(c)
        counts = op_counts(node)
        rows.append([counts.get(v, 0) for v in VOCAB] + [node_count(node), height(node)])
    return np.asarray(rows, dtype=np.float64)


class Ridge:
    """Closed-form ridge regression on standardised features; alpha picked by 5-fold CV on the training part."""

    ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)

    def fit(self, x: np.ndarray, y: np.ndarray, seed: int = 0) -> Ridge:
        self.mu, self.sd = x.mean(0), x.std(0) + 1e-9
        z = (x - self.mu) / self.sd
        folds = np.array_split(np.random.default_rng(seed).permutation(len(y)), 5)
        best = None
        for a in self.ALPHAS:
            err = 0.0
            for f in folds:
                tr = np.setdiff1d(np.arange(len(y)), f)
                w, b = self._solve(z[tr], y[tr], a)
                err += float(((z[f] @ w + b - y[f]) ** 2).sum())
            if best is None or err < best[0]:
                best = (err, a)
        self.alpha = best[1]
        self.w, self.b = self._solve(z, y, self.alpha)
        return self

    @staticmethod
    def _solve(z: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
        ym = y.mean()
        w = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - ym))
        return w, float(ym)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mu) / self.sd) @ self.w + self.b


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", nargs="?", default="benchmarks/data/surrogate_cells.csv")
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--only", default="", help="only these split indices (comma-separated), e.g. to use 2 processes")
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument("--kinds", default="treelstm,gnn")
    ap.add_argument("--ensemble", type=int, default=DEFAULT_ENSEMBLE, help="models per surrogate (1: a single model)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=None, help="hidden and head size (default: the model's own)")
    ap.add_argument("--group-by", choices=["none", "family"], default="none",
                    help="family: all mutants of one library cell on one side of the split")
    ap.add_argument("--also", default="",
                    help="another dataset added whole to every training part, as its own group (with the other "
                         "task's CSV and the defaults this is the recipe of the shipped builtin model)")
    ap.add_argument("--init", default="none",
                    help="fine-tune from this model (builtin or a folder) instead of a fresh one (treelstm only)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    records = read_records(args.data, group=Path(args.data).stem if args.also else None)
    extra = read_records(args.also, group=Path(args.also).stem) if args.also else []
    n = len(records)
    fails = sum(r.score is None for r in records)
    print(f"{args.data}: {n} cells ({fails} failed/diverged); {args.splits} splits of {args.train} train / "
          f"{n - args.train} held out; torch threads {args.threads}"
          + (f"; every training part also has all {len(extra)} cells of {args.also}" if extra else ""))
    feats = count_features([r.cell for r in records])
    groups = families(args.data, n) if args.group_by == "family" else None
    kinds = [k for k in args.kinds.split(",") if k]
    results: dict[str, list[dict]] = {name: [] for name in ["ridge(op counts)", *kinds]}
    todo = [int(i) for i in args.only.split(",") if i] or list(range(args.splits))
    for split in todo:
        tr, te = split_indices(n, args.train, split, groups)
        train = [records[i] for i in tr] + extra
        test = [records[i] for i in te]
        truth = [r.score for r in test]
        norm = Normaliser.fit([records[i].score for i in tr])
        ridge = Ridge().fit(feats[tr], norm.targets([records[i].score for i in tr]), seed=split)
        m = ranking_metrics(ridge.predict(feats[te]), truth)
        results["ridge(op counts)"].append(m)
        line = [f"split {split} ({len(tr)}/{len(te)}): ridge tau {m['kendall_tau']:.3f} "
                f"tau_ok {m['kendall_tau_ok']:.3f} (alpha {ridge.alpha:g})"]
        for kind in kinds:
            t0 = time.perf_counter()
            sizes = {"hidden": args.hidden, "head": args.hidden} if args.hidden else None
            if args.init != "none":
                s = load_init(args.init, seed=split, ensemble=args.ensemble)
                rep = s.fit(train, warm_start=True, epochs=args.epochs)
            else:
                s = Surrogate(kind, seed=split, ensemble=args.ensemble, sizes=sizes)
                rep = s.fit(train, epochs=args.epochs)
            m = s.evaluate(test)
            results[kind].append(m)
            line.append(f"{kind} tau {m['kendall_tau']:.3f} tau_ok {m['kendall_tau_ok']:.3f} "
                        f"({rep.epochs} ep, {time.perf_counter() - t0:.0f}s)")
        print("; ".join(line), flush=True)
    print()
    print(f"{'model':<18}" + "".join(f"{k:>22}" for k in METRICS) + "   (kendall_tau: failures tied worst; "
          "kendall_tau_ok: successes only)")
    for name, ms in results.items():
        cells = []
        for k in METRICS:
            vals = [m[k] for m in ms if m[k] is not None]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):>14.3f} +- {sd:.3f}")
        print(f"{name:<18}" + "".join(cells))
    base = statistics.mean(m["kendall_tau"] for m in results["ridge(op counts)"])
    for kind in kinds:
        tau = statistics.mean(m["kendall_tau"] for m in results[kind])
        print(f"{kind}: mean tau {tau:.3f}, {tau - base:+.3f} vs ridge (target: >= 0.5 and >= +0.1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
