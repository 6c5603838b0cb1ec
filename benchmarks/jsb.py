"""JSB Chorales: test NLL per time step of tanh RNN, GRU and LSTM at equal parameters and equal budget.

Acceptance (issue 3): the library LSTM at about 150k parameters reaches test NLL <= 8.50 within 3 minutes
of training on this 2-core machine. Published: tanh 9.10, GRU 8.54, LSTM 8.67 at ~20k parameters
(Chung et al. 2014); LSTM 8.45, GRU 8.43 at ~300k.

Usage: .venv/bin/python benchmarks/jsb.py [--data PATH] [--seconds 180] [--epochs N] [--seeds 3]
       [--params 150000] [--cells tanh_rnn,gru,lstm] [--threads 1] [--clock cpu|wall] [--dropout 0.2] [--lr 1e-2]
Each cell gets the hidden size that puts its model closest to --params; the test NLL is measured with the
weights of the best validation epoch. Prints one line per run and mean ± std per cell, and the machine
load before and after. By default the budget is measured on the process's CPU clock with one torch thread:
on a shared machine a wall-clock budget would measure the other jobs' load, not the cell.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import JSB, load_average

from evonas.cells.library import resolve
from evonas.nn.model import hidden_for_params
from evonas.training.tasks.music import N_NOTES
from evonas.training.train import TrainConfig, evaluate


def main(argv: list[str] | None = None) -> int:
    """Train each cell for each seed and print the test NLL table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(JSB))
    ap.add_argument("--seconds", type=float, default=180.0, help="training time per run (see --clock)")
    ap.add_argument("--epochs", type=int, default=None, help="epoch budget instead of (or besides) seconds")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--params", type=int, default=150_000, help="target parameter count per model")
    ap.add_argument("--cells", default="lstm,gru,tanh_rnn")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="cpu",
                    help="what --seconds measures (cpu: this process's CPU time, fair on a shared machine)")
    ap.add_argument("--dropout", type=float, default=0.2, help="variational dropout on inputs and outputs")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args(argv)
    if not Path(args.data).is_file():
        print(f"error: JSB data not found at {args.data} (pass --data)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    cells = args.cells.split(",")
    print(f"JSB Chorales {args.data}\nbudget {args.seconds:g} s ({args.clock} clock)"
          + (f" / {args.epochs} epochs" if args.epochs else "")
          + f" per run, {args.seeds} seed(s), ~{args.params} params, dropout {args.dropout}, lr {args.lr}, "
          f"batch {args.batch_size}, torch threads {args.threads}; load average at start {load_average()}", flush=True)
    hidden = {c: hidden_for_params(resolve(c), "dense", N_NOTES, N_NOTES, args.params) for c in cells}
    results: dict[str, list[tuple[float, float]]] = {c: [] for c in cells}
    for seed in range(args.seeds):
        for cell in cells:
            h, _ = hidden[cell]
            cfg = TrainConfig(task="music", data=args.data, hidden=h, seconds=args.seconds, clock=args.clock,
                              epochs=args.epochs or 10_000, seed=seed, device="cpu", lr=args.lr,
                              batch_size=args.batch_size, test=True,
                              dropout_in=args.dropout, dropout_out=args.dropout)
            t, c = time.perf_counter(), time.process_time()
            r = evaluate(cell, cfg)
            print(f"seed {seed} {cell:9s} hidden {h:4d} params {r.params:7d} status {r.status:8s} "
                  f"valid {r.valid_loss or float('nan'):.3f} test {r.test_loss or float('nan'):.3f} "
                  f"epochs {r.epochs:6.1f} wall {time.perf_counter() - t:6.1f}s cpu {time.process_time() - c:6.1f}s "
                  f"load {load_average()} {r.reason}",
                  flush=True)
            if r.status == "ok":
                results[cell].append((r.valid_loss, r.test_loss))
    print("\ncell       params  valid NLL (mean ± std)   test NLL (mean ± std)   runs")
    for cell in cells:
        v = [a for a, _ in results[cell]]
        t = [b for _, b in results[cell]]
        if not v:
            print(f"{cell:9s} {hidden[cell][1]:7d}  no successful run")
            continue
        sv = statistics.stdev(v) if len(v) > 1 else 0.0
        st = statistics.stdev(t) if len(t) > 1 else 0.0
        print(f"{cell:9s} {hidden[cell][1]:7d}  {statistics.mean(v):.3f} ± {sv:.3f}          "
              f"{statistics.mean(t):.3f} ± {st:.3f}          {len(v)}  (min test {min(t):.3f})")
    if "lstm" in results and results["lstm"]:
        best = min(t for _, t in results["lstm"])
        mean = statistics.mean(t for _, t in results["lstm"])
        print(f"LSTM test NLL: mean {mean:.3f}, best {best:.3f} (target <= 8.50: "
              f"{'met' if mean <= 8.50 else 'not met'} on the mean)")
    print(f"load average at end {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
