"""Forward+backward speed of compiled cells, measured side by side in one process (median of repeats).

1. The library LSTM compiled by evonas against torch.nn.LSTM (fused oneDNN kernel on CPU) at
   (T=35, B=20, I=H=200) and (T=35, B=64, I=H=650). Targets on a 2-core CPU: <= 2.0x and <= 1.3x.
   The PyTorch-form GRU against torch.nn.GRU likewise, and both at the training default (T=35, B=32,
   H=128), for information.
2. Three random well-formed cells (passing the search filters, extended operators): the fast evaluator
   against the plain node-by-node one (`fast=False`).

Each repeat times every contender once, in alternating order, so that load from other processes hits
them alike; the median over repeats is reported.

    .venv/bin/python benchmarks/cell_speed.py [--threads 1] [--repeats 9] [--clock cpu|wall]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
from _common import compare, random_cells
from torch import nn

from evonas.cells import EXTENDED, to_text
from evonas.nn.compiler import compile_cell

LSTM = (
    "Mult(Sigmoid(Add(MM(x),MM(h_prev))),Tanh(Memory(Add(Mult(Sigmoid(Add(MM(x),MM(h_prev))),c_prev),"
    "Mult(Sigmoid(Add(MM(x),MM(h_prev))),Tanh(Add(MM(x),MM(h_prev))))))))"
)
GRU_PYTORCH = (
    "Gate3(h_prev,Tanh(Add(MM(x),Mult(Sigmoid(Add(MM(x),MM(h_prev))),MM(h_prev)))),Sigmoid(Add(MM(x),MM(h_prev))))"
)


# CPU time of this process by default: on a machine shared with other jobs, wall time mostly measures their load.
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def fwd_bwd(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One training-like call: forward over the sequence, backward from the sum of the outputs."""

    def run() -> None:
        for p in model.parameters():
            p.grad = None
        out, _ = model(x)
        out.sum().backward()

    return run


def main() -> None:
    """Print the ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="process CPU time (default) or wall time")
    args = ap.parse_args()
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.clock} time, "
        f"median of {args.repeats} repeats; load average {load} on {os.cpu_count()} cores"
    )

    for name, text, torch_rnn in [("LSTM", LSTM, nn.LSTM), ("GRU", GRU_PYTORCH, nn.GRU)]:
        print(f"\ncompiled library {name} vs torch.nn.{name}, forward+backward")
        for steps, batch, size in [(35, 20, 200), (35, 64, 650), (35, 32, 128)]:
            x = torch.randn(steps, batch, size)
            rnn = torch_rnn(size, size)
            cell = compile_cell(text, size, size)
            ref = compile_cell(text, size, size, fast=False)
            t = compare({"torch": fwd_bwd(rnn, x), "compiled": fwd_bwd(cell, x), "ref": fwd_bwd(ref, x)},
                        args.repeats, clock=clock)
            print(
                f"  T={steps} B={batch} I=H={size}: nn.{name} {t['torch'] * 1e3:7.1f} ms, "
                f"compiled {t['compiled'] * 1e3:7.1f} ms = {t['compiled'] / t['torch']:.2f}x, "
                f"node-by-node {t['ref'] * 1e3:7.1f} ms = {t['ref'] / t['torch']:.2f}x"
            )

    print("\nrandom cells (extended operators, search filters on): fast vs node-by-node, T=35 B=20 I=H=200")
    x = torch.randn(35, 20, 200)
    for cell in random_cells(args.seed, 3, EXTENDED, 200, 200):
        fast = compile_cell(cell, 200, 200)
        slow = compile_cell(cell, 200, 200, fast=False)
        t = compare({"fast": fwd_bwd(fast, x), "reference": fwd_bwd(slow, x)}, args.repeats, clock=clock)
        print(
            f"  {to_text(cell)}\n    {len(fast.mm)} MMs, {len(fast.plan.instructions)} step instructions: "
            f"node-by-node {t['reference'] * 1e3:6.1f} ms, "
            f"fast {t['fast'] * 1e3:6.1f} ms = {t['fast'] / t['reference']:.2f}x"
        )


if __name__ == "__main__":
    main()
