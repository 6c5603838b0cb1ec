"""Tiny Shakespeare, character level: validation loss of LSTM, GRU and tanh RNN at equal parameters and budget.

Usage: .venv/bin/python benchmarks/shakespeare.py [--data PATH] [--seconds 300] [--steps N] [--seeds 1]
       [--params 150000] [--cells lstm,gru,tanh_rnn] [--threads 1] [--clock cpu|wall]
The single input.txt is split 90/5/5 at line breaks (evonas.training.tasks.text). Each cell gets the hidden size that
puts its model (tied embeddings) closest to --params. Loss in nats per character (bits = nats / ln 2).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import SHAKESPEARE, load_average

from evonas.cells.library import resolve
from evonas.nn.model import hidden_for_params
from evonas.training.tasks import get_task
from evonas.training.train import TrainConfig, evaluate


def main(argv: list[str] | None = None) -> int:
    """Train each cell for each seed and print validation loss per character."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHAKESPEARE))
    ap.add_argument("--seconds", type=float, default=300.0, help="training time per run (see --clock)")
    ap.add_argument("--steps", type=int, default=None, help="step budget instead of (or besides) seconds")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--params", type=int, default=150_000)
    ap.add_argument("--cells", default="lstm,gru,tanh_rnn")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="cpu",
                    help="what --seconds measures (cpu: this process's CPU time, fair on a shared machine)")
    args = ap.parse_args(argv)
    if not Path(args.data).is_file():
        print(f"error: Tiny Shakespeare not found at {args.data} (pass --data)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    task = get_task("text", args.data, "char")
    cells = args.cells.split(",")
    print(f"{task.describe()}\nbudget {args.seconds:g} s ({args.clock} clock)"
          + (f" / {args.steps} steps" if args.steps else "")
          + f" per run, {args.seeds} seed(s), ~{args.params} params, torch threads {args.threads}; "
          f"load average at start {load_average()}", flush=True)
    hidden = {c: hidden_for_params(resolve(c), "tokens", task.n_inputs, task.n_outputs, args.params, tie=True)
              for c in cells}
    losses: dict[str, list[float]] = {c: [] for c in cells}
    for seed in range(args.seeds):
        for cell in cells:
            h, _ = hidden[cell]
            cfg = TrainConfig(task="text", data=args.data, level="char", hidden=h, seconds=args.seconds,
                              clock=args.clock, steps=args.steps, seed=seed, device="cpu", eval_every=args.eval_every)
            t, c = time.perf_counter(), time.process_time()
            r = evaluate(cell, cfg)
            v = r.valid_loss if r.valid_loss is not None else float("nan")
            print(f"seed {seed} {cell:9s} hidden {h:4d} params {r.params:7d} status {r.status:8s} "
                  f"valid {v:.4f} nats/char ({v / math.log(2):.3f} bits) steps {r.steps} epochs {r.epochs:.2f} "
                  f"wall {time.perf_counter() - t:.1f}s cpu {time.process_time() - c:.1f}s "
                  f"load {load_average()} {r.reason}", flush=True)
            if r.status == "ok":
                losses[cell].append(r.valid_loss)
    print("\ncell       params  valid nats/char (mean ± std)  bits/char")
    for cell in cells:
        v = losses[cell]
        if not v:
            print(f"{cell:9s} {hidden[cell][1]:7d}  no successful run")
            continue
        s = statistics.stdev(v) if len(v) > 1 else 0.0
        print(f"{cell:9s} {hidden[cell][1]:7d}  {statistics.mean(v):.4f} ± {s:.4f}              "
              f"{statistics.mean(v) / math.log(2):.3f}")
    print(f"load average at end {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
