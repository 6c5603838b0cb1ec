"""Check a GPU machine before a long search: packing, throughput, utilisation, CPU/GPU agreement.

    .venv/bin/python benchmarks/gpu_check.py [--evals 24] [--steps 200] [--hidden 64] [--packings 1,2,4]

Prints four blocks (format in README "GPUs and clusters"):
1. the machine: GPUs (or plainly "no GPU found"), nvidia-smi, load average;
2. throughput: the same batch of evaluations (library cells x seeds, synthetic task, fixed step budget) through
   the local evaluator at 1, 2 and 4 evaluations per GPU (workers = GPUs x packing), in evaluations per hour,
   with GPU utilisation and memory sampled by nvidia-smi every 0.5 s when it is present. Worker start-up is
   excluded (a warm-up batch spawns the workers first);
3. the same seed's results on CPU and on GPU side by side (validation loss of a few library cells);
4. a short real search with packing (evals_per_gpu 2) in a temporary folder.
Without a GPU it says so and runs the CPU part only, with a small budget (1 min 43 s on a loaded 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import load_average  # noqa: E402

from evonas.cells import canonical_text  # noqa: E402
from evonas.cells.library import resolve  # noqa: E402
from evonas.evaluation import Job  # noqa: E402
from evonas.evaluation.factory import make_evaluator  # noqa: E402
from evonas.evolution.config import RunConfig  # noqa: E402
from evonas.evolution.loop import Search  # noqa: E402
from evonas.training.train import TrainConfig, evaluate  # noqa: E402

CELLS = ("tanh_rnn", "lstm", "gru", "ugrnn", "indrnn", "cifg")


class GpuSampler:
    """nvidia-smi utilisation (%) and memory used (MiB) of every GPU, sampled in a thread while running."""

    def __init__(self, period: float = 0.5):
        self.exe = shutil.which("nvidia-smi")
        self.period, self.util, self.mem = period, [], []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if self.exe:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        cmd = [self.exe, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        while not self._stop.is_set():
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout
            except (OSError, subprocess.TimeoutExpired):
                return
            for line in out.strip().splitlines():
                try:
                    util, mem = (float(v) for v in line.split(","))
                except ValueError:
                    continue
                self.util.append(util)
                self.mem.append(mem)
            self._stop.wait(self.period)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> tuple[str, str]:
        """('mean/max %', 'max MiB'), or dashes without samples."""
        if not self.util:
            return "-", "-"
        return f"{statistics.mean(self.util):.0f}/{max(self.util):.0f}", f"{max(self.mem):.0f}"


def jobs(n: int, device: str, steps: int, hidden: int) -> list[Job]:
    """n evaluations: library cells x seeds, same budget."""
    out = []
    for i in range(n):
        name, seed = CELLS[i % len(CELLS)], i // len(CELLS)
        cfg = TrainConfig(task="synthetic", steps=steps, hidden=hidden, seed=seed, device=device, threads=1).to_dict()
        out.append(Job(key=f"{name}#{seed}#{i}", cell=canonical_text(resolve(name)), config=cfg))
    return out


def throughput(device: str, packings: list[int], gpus: int, n: int, steps: int, hidden: int, workers: int) -> None:
    """Block 2: evaluations per hour at each packing (CPU: one row with `workers` processes)."""
    print(f"\nthroughput (synthetic task, {n} evaluations of {steps} steps, hidden {hidden}; worker start-up excluded)")
    print(f"{'device':<7} {'evals/GPU':>9} {'workers':>7} {'failed':>6} {'seconds':>8} {'evals/hour':>10} "
          f"{'GPU util mean/max %':>19} {'GPU mem max MiB':>15}")
    rows = [(p, gpus * p) for p in packings] if device == "cuda" else [(None, workers)]
    for pack, w in rows:
        ev = make_evaluator("local", device, workers=w, evals_per_gpu=pack or 1, threads=1)
        try:
            ev.run(jobs(w, device, 1, 8), lambda job, r: None)  # warm-up: spawn every worker, import torch
            results: list = []
            with GpuSampler() as sampler:
                t0 = time.perf_counter()
                ev.run(jobs(n, device, steps, hidden), lambda job, r, out=results: out.append(r))
                seconds = time.perf_counter() - t0
            failed = [r.reason for r in results if r.status != "ok"]
        finally:
            ev.close()
        util, mem = sampler.summary()
        print(f"{device:<7} {pack or '-':>9} {w:>7} {len(failed):>6} {seconds:>8.1f} {n / seconds * 3600:>10.0f} "
              f"{util:>19} {mem:>15}")
        for reason in sorted(set(failed))[:3]:
            print(f"        failure: {reason[:150]}")


def same_seed(has_gpu: bool, steps: int, hidden: int) -> None:
    """Block 3: validation loss of the same cells and seed on CPU and on GPU."""
    print(f"\nsame seed on CPU and GPU (synthetic task, seed 0, {steps} steps, hidden {hidden}; validation loss)")
    print(f"{'cell':<10} {'cpu':>9} {'gpu':>9} {'|diff|':>9}")
    for name in CELLS[:3]:
        losses = []
        for device in ("cpu", "cuda") if has_gpu else ("cpu",):
            r = evaluate(name, TrainConfig(task="synthetic", steps=steps, hidden=hidden, seed=0, device=device,
                                           threads=1))
            losses.append(r.valid_loss if r.status == "ok" else None)
        cpu = losses[0]
        gpu = losses[1] if len(losses) > 1 else None
        diff = f"{abs(cpu - gpu):.2e}" if cpu is not None and gpu is not None else "-"
        print(f"{name:<10} {cpu if cpu is None else f'{cpu:.4f}':>9} {'-' if gpu is None else f'{gpu:.4f}':>9} "
              f"{diff:>9}")


def short_search(device: str, workers: int, steps: int, hidden: int) -> None:
    """Block 4: a short real search with packing (evals_per_gpu 2) in a temporary folder."""
    cfg = RunConfig.from_dict({"device": device, "evals_per_gpu": 2, "workers": workers, "generations": 1,
                               "population": 4, "offspring": 3, "seed_cells": ["tanh_rnn", "lstm"],
                               "train": {"steps": steps, "hidden": hidden, "threads": 1}})
    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as quiet:
        t0 = time.perf_counter()
        best = Search(cfg, tmp, stdout=quiet, stderr=quiet).run()
        seconds = time.perf_counter() - t0
        book = [line for line in (Path(tmp) / "logbook.jsonl").read_text().splitlines() if line]
    entries = [json.loads(line) for line in book]
    trained, failed = sum(e["trained"] for e in entries), sum(e["failures"] for e in entries)
    top = best["best"][0] if best["best"] else None
    base = {e["seed"]: e.get("valid_loss") for e in best["baselines"]}
    print(f"\nshort search with packing (device {device}, evals_per_gpu 2, workers {workers}, 2 generations, "
          f"{steps} steps, hidden {hidden})")
    print(f"evaluations {trained}, failed {failed}, {seconds:.1f} s (start-up included), best valid loss "
          f"{top['valid_loss'] if top else float('nan'):.4f}, baselines "
          + ", ".join(f"{k} {v:.4f}" for k, v in base.items() if v is not None))


def main() -> None:
    """Run the four blocks (the CPU part only, briefly, without a GPU)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evals", type=int, default=24, help="Evaluations per throughput row (GPU).")
    ap.add_argument("--steps", type=int, default=200, help="Training steps per evaluation (GPU).")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--packings", default="1,2,4", help="Evaluations per GPU to compare.")
    args = ap.parse_args()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    print(f"gpu_check: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, "
          f"load average {load_average()}, {len(os.sched_getaffinity(0))} cores")
    if gpus:
        for i in range(gpus):
            props = torch.cuda.get_device_properties(i)
            print(f"GPU cuda:{i}: {props.name}, {props.total_memory / 2**30:.1f} GiB")
        evals, steps, hidden = args.evals, args.steps, args.hidden
    else:
        print("no GPU found (torch.cuda.is_available() is False): running the CPU part only, briefly")
        evals, steps, hidden = 6, 50, 32
    print(f"nvidia-smi: {shutil.which('nvidia-smi') or 'not found'}")
    cores = len(os.sched_getaffinity(0))
    if gpus:
        throughput("cuda", [int(p) for p in args.packings.split(",")], gpus, evals, steps, hidden, 0)
    throughput("cpu", [], 0, evals, steps, hidden, max(1, min(cores, 4)))
    same_seed(bool(gpus), steps, hidden)
    short_search("cuda" if gpus else "cpu", gpus * 2 if gpus else max(1, min(cores, 4)), steps, hidden)


if __name__ == "__main__":
    main()
