"""The generated time loop run by TorchScript against the same source run as Python, in whole evaluations.

Evaluates the library GRU and random core cells (those of `train_speed.py`) at the default search budget
(synthetic, hidden 32, 200 steps, one thread), alternating the two runs of the loop (`LoopCode.functions`)
within one process, interleaved, median of repeats; prints CPU seconds per evaluation and the ratio, and
whether the valid losses are equal.

    .venv/bin/python benchmarks/loop_script.py [--repeats 3] [--random 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

from train_speed import DEFAULT_BUDGET, random_cell_texts


def main() -> None:
    """Time each cell's evaluation with the loop as TorchScript and as Python, interleaved."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--random", type=int, default=4, help="random core cells after the GRU")
    args = ap.parse_args()
    import torch

    from evonas.nn import loop_grad
    from evonas.training import train

    torch.set_num_threads(1)
    cfg = train.TrainConfig(**DEFAULT_BUDGET)
    scripted = loop_grad.LoopCode.functions

    def as_python(self: loop_grad.LoopCode, script: bool = True) -> loop_grad.Functions:
        return scripted(self, False)

    runs = {"TorchScript": scripted, "Python": as_python}
    print(f"{'TorchScript':>11s} {'Python':>7s} {'ratio':>6s}  equal  cell   (CPU s per evaluation, median of "
          f"{args.repeats})")
    train.evaluate("gru", cfg)  # warm-up: first-call costs of the process
    for cell in ["gru", *random_cell_texts(args.random)]:
        times: dict[str, list[float]] = {name: [] for name in runs}
        losses: dict[str, float | None] = {}
        for r in range(args.repeats):
            for name in runs if r % 2 == 0 else reversed(list(runs)):
                loop_grad.LoopCode.functions = runs[name]  # type: ignore[method-assign]
                start = time.process_time()
                result = train.evaluate(cell, cfg)
                times[name].append(time.process_time() - start)
                losses[name] = result.valid_loss
        loop_grad.LoopCode.functions = scripted  # type: ignore[method-assign]
        ts, py = (statistics.median(times[name]) for name in runs)
        print(f"{ts:10.2f}s {py:6.2f}s {py / ts:5.2f}x  {losses['TorchScript'] == losses['Python']!s:5s}  "
              f"{cell[:70]}", flush=True)


if __name__ == "__main__":
    main()
