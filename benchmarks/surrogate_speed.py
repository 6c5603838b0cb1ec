"""Surrogate speed: scoring throughput from cell text to score, and training time per epoch.

Throughput is measured on distinct random cells with an empty graph cache ("cold": parse + unroll + batch +
model, the realistic case for new offspring) and again with the cache filled ("warm"), in one process
(torch threads = 2) and split over 2 processes (1 thread each). Median of --repeats runs. Training time:
seconds per epoch on --train-cells cells (batch 64, no early stopping). Run on an otherwise idle machine for
meaningful numbers; the load average is printed alongside.

    .venv/bin/python benchmarks/surrogate_speed.py --cells 10000 --repeats 5 --train-cells 1000 --hidden 64 \
        [--ensemble 1]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import time

import torch
from evonas.surrogate.api import DEFAULT_ENSEMBLE, Surrogate
from evonas.surrogate.sample import random_cell
from evonas.surrogate.train import FitConfig

from evonas.cells import CORE, EXTENDED, to_text

_worker: Surrogate | None = None


def distinct_cells(n: int, seed: int) -> list[str]:
    """n distinct random filtered cells (70% core operators, 30% extended)."""
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    while len(seen) < n:
        seen[to_text(random_cell(rng, EXTENDED if rng.random() < 0.3 else CORE))] = None
    return list(seen)


def _init(folder: str) -> None:
    global _worker
    torch.set_num_threads(1)
    _worker = Surrogate.load(folder)


def _score(texts: list[str]) -> int:
    assert _worker is not None
    _worker.clear_cache()
    return len(_worker.score(texts))


def throughput_one(s: Surrogate, texts: list[str], repeats: int) -> tuple[float, float]:
    """(cold, warm) cells per second in this process."""
    cold, warm = [], []
    for _ in range(repeats):
        s.clear_cache()
        t = time.perf_counter()
        s.score(texts)
        cold.append(len(texts) / (time.perf_counter() - t))
        t = time.perf_counter()
        s.score(texts)
        warm.append(len(texts) / (time.perf_counter() - t))
    return statistics.median(cold), statistics.median(warm)


def throughput_two(folder: str, texts: list[str], repeats: int) -> float:
    """Cold cells per second with the texts split over 2 worker processes (startup excluded)."""
    half = len(texts) // 2
    rates = []
    with mp.get_context("spawn").Pool(2, _init, (folder,)) as pool:
        pool.map(_score, [texts[:50], texts[50:100]])  # warm up both workers
        for _ in range(repeats):
            t = time.perf_counter()
            done = sum(pool.map(_score, [texts[:half], texts[half:]], chunksize=1))
            rates.append(done / (time.perf_counter() - t))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-cells", type=int, default=1000)
    ap.add_argument("--kinds", default="treelstm,gnn")
    ap.add_argument("--hidden", default="64,32", help="hidden sizes to measure (comma-separated)")
    ap.add_argument("--ensemble", type=int, default=DEFAULT_ENSEMBLE,
                    help="models per surrogate (graphs are built once for all; 1: a single model)")
    args = ap.parse_args(argv)
    texts = distinct_cells(args.cells, seed=7)
    print(f"{len(texts)} distinct cells; cpus {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}")
    train_texts = texts[: args.train_cells]
    records = [{"cell": c, "score": float(len(c) % 17), "status": "ok"} for c in train_texts]
    runs = [(k, int(h)) for k in args.kinds.split(",") if k for h in args.hidden.split(",") if h]
    for kind, hidden in runs:
        torch.set_num_threads(2)
        s = Surrogate(kind, seed=0, ensemble=args.ensemble, sizes={"hidden": hidden, "head": hidden},
                      fit_config=FitConfig(valid_fraction=0.0))
        cold, warm = throughput_one(s, texts, args.repeats)
        with tempfile.TemporaryDirectory() as tmp:
            s.save(tmp)
            two = throughput_two(tmp, texts, args.repeats)
        rep = s.fit(records, epochs=3)
        per_epoch = statistics.median(rep.epoch_seconds)
        print(f"{kind:9s} x{args.ensemble} sizes {s.sizes}: scoring cold {cold:8.0f} cells/s (1 process, 2 threads), "
              f"{two:8.0f} cells/s (2 processes x 1 thread); warm {warm:8.0f} cells/s; "
              f"training {per_epoch:.2f} s/epoch per model on {len(records)} cells (2 threads)", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
