"""LSTM vs tanh RNN on the synthetic task under its default budget: the LSTM should be >= 10% lower.

Usage: .venv/bin/python benchmarks/synthetic_gap.py [--seeds 3] [--steps N] [--threads 1] [--cells lstm,tanh_rnn]
Prints each run (validation loss, steps, seconds, status) and the mean validation loss per cell, and the
relative gap (1 - LSTM / tanh RNN) per seed and on the means.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from evonas.training.tasks.synthetic import DEFAULTS
from evonas.training.train import TrainConfig, evaluate


def main(argv: list[str] | None = None) -> int:
    """Train each cell for each seed under the default synthetic budget and print the gap."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="override the default step budget")
    ap.add_argument("--seconds", type=float, default=None, help="override the default seconds cap")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cells", default="lstm,tanh_rnn")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cells = args.cells.split(",")
    losses: dict[str, list[float]] = {c: [] for c in cells}
    with open("/proc/loadavg") as f:
        print(f"load average at start: {f.read().split()[:3]}; torch threads {args.threads}")
    for seed in range(args.seeds):
        for cell in cells:
            cfg = TrainConfig(task="synthetic", seed=seed, device="cpu", steps=args.steps or DEFAULTS["steps"],
                              seconds=args.seconds or DEFAULTS["seconds"])
            t, c = time.perf_counter(), time.process_time()
            r = evaluate(cell, cfg)
            loss = r.valid_loss if r.valid_loss is not None else float("nan")
            losses[cell].append(loss)
            print(f"seed {seed} {cell:10s} valid_loss {loss:.4f} status {r.status} steps {r.steps} "
                  f"params {r.params} wall {time.perf_counter() - t:.1f}s cpu {time.process_time() - c:.1f}s "
                  f"{r.reason}",
                  flush=True)
        if len(cells) >= 2:
            a, b = losses[cells[0]][-1], losses[cells[1]][-1]
            print(f"seed {seed} gap 1 - {cells[0]}/{cells[1]} = {1 - a / b:.1%}", flush=True)
    for cell in cells:
        v = losses[cell]
        spread = statistics.stdev(v) if len(v) > 1 else 0.0
        print(f"{cell:10s} mean valid_loss {statistics.mean(v):.4f} ± {spread:.4f} (std over {len(v)} seeds)")
    if len(cells) >= 2:
        a, b = statistics.mean(losses[cells[0]]), statistics.mean(losses[cells[1]])
        print(f"mean gap 1 - {cells[0]}/{cells[1]} = {1 - a / b:.1%} (target >= 10%)")
    with open("/proc/loadavg") as f:
        print(f"load average at end: {f.read().split()[:3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
