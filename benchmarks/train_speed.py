"""Training speed at the search's own sizes: whole training steps, whole evaluations, and where the time goes.

1. Training step (forward, loss, backward, gradient clipping, Adam: the training loop's step, with the task's
   fused output layer and loss and the flat optimizer of `evonas.training.optim`) of the model around a cell
   (`CellModel`) against the same model (same token lookup) around `torch.nn.LSTM` / `nn.GRU` trained with the
   same step, and against `nn.LSTM` trained the stock way (`nn.Embedding`, `nn.Linear`, `F.cross_entropy`,
   `torch.optim.Adam(foreach=True)`, `clip_grad_norm_`), in one process, one thread, interleaved, each timing
   `--calls` steps in a row after an untimed one, median of repeats: the library LSTM, the PyTorch-form GRU and
   the library GRU, and five random cells over the core operators (those of the default search), at hidden
   32/64/128, batch 8/32, T=35, on the synthetic task and on JSB chorales (real batches cut to 35 steps);
   plus the LSTM at B=64 H=650.
2. Whole evaluations at the default search budget (configs/default.yaml: synthetic, hidden 32, 200 steps,
   one thread) and at JSB's rung 0 (configs/jsb.yaml: hidden 64, 5 epochs): CPU seconds per evaluation,
   cold (`evonas train ... --json` in a fresh process: interpreter, imports, data, training) and warm (a
   process that has already evaluated one cell, as a search worker), for this tree and, with `--baseline
   DIR`, for another source tree (e.g. `git archive` of an older commit), interleaved run by run. When an
   allocator is installed, this tree's warm worker runs twice: with the system's malloc, and with the
   allocator a search's workers preload (`evonas.evaluation.allocator`, `auto`: tcmalloc, else jemalloc).
   The cold run is always the system's malloc, as `evonas train` in a terminal has it.
3. Where one warm evaluation's time goes (data, forward, backward, optimizer, validation) and the start-up.

    .venv/bin/python benchmarks/train_speed.py [--quick] [--repeats 7] [--calls 5] [--data JSB.json] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _common import JSB, REPO, compare, load_average, random_cells

LSTM = "lstm"
GRU_PYTORCH = (
    "Gate3(h_prev,Tanh(Add(MM(x),Mult(Sigmoid(Add(MM(x),MM(h_prev))),MM(h_prev)))),Sigmoid(Add(MM(x),MM(h_prev))))"
)
DEFAULT_BUDGET = {"task": "synthetic", "hidden": 32, "steps": 200, "threads": 1, "device": "cpu", "seed": 0}
JSB_BUDGET = {"task": "music", "hidden": 64, "epochs": 5, "threads": 1, "device": "cpu", "seed": 0}
PHASES = ("start-up", "data", "forward", "backward", "optimizer", "validation", "other")


def random_cell_texts(count: int, seed: int = 0) -> list[str]:
    """`count` random cells over the core operators (the default search's), 12..21 nodes, passing its filters,
    typed for any sizes (7 and 11), as the library and `evonas train` require."""
    from evonas.cells import CORE, to_text

    return [to_text(c) for c in random_cells(seed, count, CORE, 7, 11)]


# ---------------------------------------------------------------- 1. training steps, in this process


def step_contenders(task_name: str, data: str | None, hidden: int, batch: int, steps: int,
                    cells: dict[str, str]) -> dict[str, Callable[[], None]]:
    """One training-step closure per contender, all on the same batch."""
    import torch
    from torch import nn

    from evonas.cells.library import resolve
    from evonas.nn.model import CellModel, embedded_dropout
    from evonas.training.optim import FlatAdam, flatten
    from evonas.training.tasks import get_task

    task = get_task(task_name, data)
    rng = __import__("numpy").random.default_rng(0)
    b = next(iter(task.batches("train", batch, steps, rng)))
    b.x, b.y = b.x[:steps], b.y[:steps]
    b.mask = None if b.mask is None else b.mask[:steps]

    class TorchModel(nn.Module):
        """The CellModel layout around a fused PyTorch RNN. `own_encoder`: CellModel's token lookup (so that
        only the recurrent layer differs from the compiled cell's model), else `nn.Embedding` (the stock way)."""

        def __init__(self, rnn: type[nn.Module], own_encoder: bool = True):
            super().__init__()
            self.tokens = task.input_kind == "tokens"
            self.own_encoder = own_encoder and self.tokens
            self.encoder = nn.Embedding(task.n_inputs, hidden) if self.tokens else nn.Linear(task.n_inputs, hidden)
            self.rnn = rnn(hidden, hidden)
            self.decoder = nn.Linear(hidden, task.n_outputs)

        def features(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
            h = embedded_dropout(self.encoder, x, 0.0, self.training) if self.own_encoder else self.encoder(x)
            return self.rnn(h)[0], None

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
            return self.decoder(self.features(x)[0]), None

    def trainer(model: nn.Module) -> Callable[[], None]:
        """The step of evonas' training loop (`_Loop.train_step`: the task's output layer and loss in one, flat
        Adam and clipping), the same for all."""
        flat = flatten(model)
        opt = FlatAdam(flat, lr=1e-3)

        def run() -> None:
            hidden, _ = model.features(b.x)
            total, count = task.head_loss_sum(hidden, model.decoder, b)
            loss = total / max(float(count), 1.0)
            float(loss.detach())
            flat.zero_grad()
            loss.backward()
            flat.clip_grad_norm_(1.0)
            opt.step()

        return run

    def stock_trainer(model: nn.Module) -> Callable[[], None]:
        """The usual PyTorch step: `nn.Linear` then `F.cross_entropy` (the task's `loss_sum`),
        `torch.optim.Adam(foreach=True)` and `clip_grad_norm_`, per tensor."""
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-3, foreach=True)

        def run() -> None:
            logits, _ = model(b.x)
            total, count = task.loss_sum(logits, b)
            loss = total / count.clamp(min=1)
            float(loss.detach())
            for p in params:
                p.grad = None
            loss.backward()
            float(torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True))
            opt.step()

        return run

    out = {"nn.LSTM": trainer(TorchModel(nn.LSTM)), "nn.GRU": trainer(TorchModel(nn.GRU)),
           "stock nn.LSTM": stock_trainer(TorchModel(nn.LSTM, own_encoder=False))}
    for name, text in cells.items():
        model = CellModel(resolve(text), task.input_kind, task.n_inputs, task.n_outputs, hidden)
        model.cells[0].use_fused = name != "LSTM(plan)"  # the generic plan, not PyTorch's kernel
        out[name] = trainer(model)
    return out


def step_table(args: argparse.Namespace) -> None:
    """Print section 1: training-step time of each contender as a ratio to nn.LSTM (nn.GRU for the GRUs)."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    rand = random_cell_texts(args.random)
    cells = {"LSTM": LSTM, "LSTM(plan)": LSTM, "GRU(pt)": GRU_PYTORCH, "GRU": "gru",
             **{f"rand{i + 1}": t for i, t in enumerate(rand)}}
    print(f"\n1. training step (forward, loss, backward, clip, Adam), T=35; ratio to nn.LSTM, every model trained\n"
          "   with evonas' step (the task's fused output layer and loss, flat Adam and clipping; the same token\n"
          "   lookup); 'stock': nn.LSTM with nn.Embedding, nn.Linear and F.cross_entropy,\n"
          "   torch.optim.Adam(foreach=True) and clip_grad_norm_, and 'LSTM/stock' the library LSTM in evonas' step\n"
          "   against it; each timing is\n"
          f"   {args.calls} steps in a row after one untimed, median of {args.repeats} interleaved repeats\n"
          "   (LSTM(plan): the LSTM on the generic plan, not PyTorch's kernel; GRU(pt): the PyTorch-form GRU,\n"
          "   and GRU: the library GRU, to nn.GRU)")
    for i, t in enumerate(rand):
        print(f"   rand{i + 1} = {t}")
    tasks = [t for t in [("synthetic", None), ("music", args.data)] if t[0] in args.tasks and (t[1] or t[0] != "music")]
    sizes = [(h, b) for h in args.hidden for b in args.batch]
    head = (f"  {'task':9s} {'B':>3s} {'H':>4s} {'nn.LSTM':>9s} {'nn.GRU':>8s} {'stock':>8s} {'LSTM/stock':>10s}  "
            + " ".join(f"{n:>7s}" for n in cells))
    print(head)
    for task, data in tasks:
        for hidden, batch in sizes + ([(650, 64)] if task == "synthetic" and args.big else []):
            chosen = cells if hidden <= 128 else {"LSTM": LSTM}
            t = compare(step_contenders(task, data, hidden, batch, 35, chosen), args.repeats, calls=args.calls)
            ratios = []
            for n in cells:
                ref = t["nn.GRU"] if n.startswith("GRU") else t["nn.LSTM"]
                ratios.append(f"{t[n] / ref:6.2f}x" if n in t else f"{'-':>7s}")
            print(f"  {task:9s} {batch:3d} {hidden:4d} {t['nn.LSTM'] * 1e3:7.2f}ms {t['nn.GRU'] * 1e3:6.2f}ms "
                  f"{t['stock nn.LSTM'] * 1e3:6.2f}ms {t['LSTM'] / t['stock nn.LSTM']:9.2f}x  " + " ".join(ratios),
                  flush=True)


# ---------------------------------------------------------------- 2-3. evaluations, in child processes


def child_env(tree: Path | None, preload: Path | None = None) -> dict[str, str]:
    """Environment of a child process importing evonas from `tree` (None: this checkout), with the allocator
    `preload` preloaded as a search's worker processes have it (`evonas.evaluation.allocator`)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("LD_PRELOAD", None)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    if preload is not None:
        env["LD_PRELOAD"] = str(preload)
    return env


def run_child(argv: list[str], tree: Path | None, preload: Path | None = None) -> tuple[float, str]:
    """Run a child process; return its CPU seconds (user + system) and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # cwd: `python -c` puts the working directory first on sys.path, so it decides which evonas is imported
    proc = subprocess.run(argv, env=child_env(tree, preload), capture_output=True, text=True, check=False,
                          cwd=tree or REPO)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{argv[:4]} failed: {proc.stderr.strip()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, proc.stdout


def cold_argv(cell: str, budget: dict) -> list[str]:
    """`evonas train` on one cell with a budget, JSON out, in a fresh interpreter."""
    argv = [sys.executable, "-c", "from evonas.cli.main import main; main()", "train", cell, "--json"]
    for key in ("task", "data", "hidden", "steps", "epochs", "threads", "device", "seed"):
        if key in budget:
            argv += [f"--{key}", str(budget[key])]
    return argv


def worker(spec: dict) -> dict:
    """In a child: evaluate spec's cells warm (after one untimed evaluation) and profile one evaluation."""
    t0 = time.process_time()
    import torch

    t_torch = time.process_time() - t0
    from evonas.training import train

    t_import = time.process_time() - t0
    try:  # the allocator this worker runs with (a baseline tree may predate evonas.evaluation.allocator)
        from evonas.evaluation.allocator import loaded_allocator

        malloc = loaded_allocator()
    except ImportError:
        malloc = "system"
    torch.set_num_threads(1)
    cfg = train.TrainConfig(**spec["budget"])
    first = time.process_time()
    train.evaluate(spec["cells"][0], cfg)
    t_first = time.process_time() - first
    warm, losses, statuses = [], [], []
    for cell in spec["cells"]:
        start = time.process_time()
        r = train.evaluate(cell, cfg)
        warm.append(time.process_time() - start)
        losses.append(r.valid_loss)
        statuses.append(r.status)
    return {"malloc": malloc, "import_torch": t_torch, "import": t_import, "first_eval": t_first, "warm": warm,
            "losses": losses,
            "statuses": statuses, "phases": profile_phases(train, spec["cells"][0], cfg)}


def profile_phases(train: object, cell: str, cfg: object) -> dict[str, float]:
    """CPU seconds per phase of one evaluation, by wrapping the functions the training loop calls."""
    import torch

    from evonas.nn.model import CellModel
    from evonas.training.tasks.base import Task

    spent = dict.fromkeys(PHASES, 0.0)
    stack: list[str] = []

    def timed(phase: str, fn: Callable) -> Callable:
        def wrapper(*a: object, **k: object) -> object:
            if stack:  # nested (e.g. forward inside validation): the outer phase keeps the time
                return fn(*a, **k)
            stack.append(phase)
            start = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                spent[phase] += time.process_time() - start
                stack.pop()

        return wrapper

    def timed_iter(fn: Callable) -> Callable:
        def wrapper(*a: object, **k: object) -> object:
            it = iter(fn(*a, **k))
            while True:
                start = time.process_time()
                try:
                    item = next(it)
                except StopIteration:
                    return
                finally:
                    if not stack:
                        spent["data"] += time.process_time() - start
                yield item

        return wrapper

    loop = train._Loop  # type: ignore[attr-defined]
    # (owner, attribute, phase): what the training loop calls, each timed as its phase. This tree's loop calls
    # CellModel.features and then the task's head_loss_sum (output layer and loss, counted as forward); an
    # older tree's calls CellModel.forward and the task's loss_sum (counted as other)
    task_class = type(train.get_task(cfg.task, cfg.data, cfg.level))  # type: ignore[attr-defined]
    fused = hasattr(CellModel, "features")
    wrapped = [(CellModel, "features" if fused else "forward", "forward"), (torch.Tensor, "backward", "backward"),
               (torch.optim.Adam, "step", "optimizer"), (torch.nn.utils, "clip_grad_norm_", "optimizer"),
               (loop, "split_loss", "validation"), *([(task_class, "head_loss_sum", "forward")] if fused else [])]
    try:  # the flat optimizer step (this tree); a baseline tree may predate it
        from evonas.training import optim

        wrapped += [(owner, name, "optimizer") for owner, name in
                    ((optim.FlatAdam, "step"), (optim.FlatSGD, "step"), (optim.FlatParams, "clip_grad_norm_"),
                     (optim.FlatParams, "zero_grad"))]
    except ImportError:
        pass
    originals = [getattr(owner, name) for owner, name, _ in wrapped]
    batch_originals = {c: c.batches for c in (task_class,) if issubclass(c, Task)}
    for (owner, name, phase), fn in zip(wrapped, originals, strict=True):
        setattr(owner, name, timed(phase, fn))
    for c, fn in batch_originals.items():
        c.batches = timed_iter(fn)
    try:
        start = time.process_time()
        train.evaluate(cell, cfg)  # type: ignore[attr-defined]
        total = time.process_time() - start
    finally:
        for (owner, name, _), fn in zip(wrapped, originals, strict=True):
            setattr(owner, name, fn)
        for c, fn in batch_originals.items():
            c.batches = fn
    spent["other"] = total - sum(spent.values())
    return spent


def contenders(args: argparse.Namespace) -> dict[str, tuple[Path | None, Path | None]]:
    """The evaluation table's rows: label -> (source tree, None for this checkout; allocator preloaded into the
    worker, None for the system's malloc). This tree runs as a search's workers do (with the allocator `auto`
    finds, when one is installed), and also with the system's malloc; a baseline tree with the system's."""
    from evonas.evaluation.allocator import allocator_of, loaded_allocator, resolve_allocator

    preload = resolve_allocator("auto")
    rows: dict[str, tuple[Path | None, Path | None]] = {}
    if args.baseline:
        rows["baseline"] = (Path(args.baseline).resolve(), None)
    if preload is None:
        rows["this tree"] = (None, None)
    else:
        rows["this tree, glibc"] = (None, None)
        rows[f"this tree, {allocator_of(preload.name)}"] = (None, preload)
    assert loaded_allocator() == "system", "run the benchmark itself without LD_PRELOAD"
    return rows


def eval_table(args: argparse.Namespace) -> None:
    """Print sections 2 and 3 for this tree (with the system's malloc and the workers' allocator) and the
    baseline tree, interleaved."""
    cells = ["lstm", "gru", *random_cell_texts(args.random)]
    budgets = [("default", DEFAULT_BUDGET)] + ([("jsb rung 0", {**JSB_BUDGET, "data": args.data})]
                                               if args.data and not args.quick else [])
    trees = contenders(args)
    me = str(Path(__file__).resolve())
    for label, budget in budgets:
        cold: dict[str, list[float]] = {t: [] for t in trees}
        warm: dict[str, list[dict]] = {t: [] for t in trees}
        for r in range(args.eval_repeats):
            for tree in trees if r % 2 == 0 else reversed(list(trees)):
                path, preload = trees[tree]
                if preload is None:  # `evonas train` in a terminal runs with the system's malloc
                    cpu, out = run_child(cold_argv("lstm", budget), path)
                    if '"valid_loss"' in out:  # an older tree's CLI may not start here (see the README)
                        cold[tree].append(cpu)
                spec = json.dumps({"budget": budget, "cells": cells})
                _, out = run_child([sys.executable, me, "--worker", spec], path, preload)
                warm[tree].append(json.loads(out.strip().splitlines()[-1]))
        print(f"\n2. evaluations at the {label} budget {budget}; CPU seconds, median of {args.eval_repeats} runs",
              flush=True)
        print(f"  {'tree':18s} {'cold LSTM':>10s} {'evals/CPU-min':>13s} {'warm mean':>10s} {'evals/CPU-min':>13s}  "
              "warm per cell (lstm, gru, rand...; * = diverged or failed, left out of the mean)")
        rate = {}
        for tree in trees:
            per_cell = [statistics.median(w["warm"][i] for w in warm[tree]) for i in range(len(cells))]
            ok = [status == "ok" for status in warm[tree][0].get("statuses", ["ok"] * len(cells))]
            mean = statistics.fmean(t for t, good in zip(per_cell, ok, strict=True) if good)
            cold_s = statistics.median(cold[tree]) if cold[tree] else None
            rate[tree] = (60 / cold_s if cold_s else None, 60 / mean)
            marked = " ".join(f"{t:.2f}{'' if ok[i] else '*'}" for i, t in enumerate(per_cell))
            cold_cols = f"{cold_s:9.2f}s {rate[tree][0]:13.1f}" if cold_s else f"{'-':>10s} {'-':>13s}"
            print(f"  {tree:18s} {cold_cols} {mean:9.2f}s {rate[tree][1]:13.1f}  {marked}")
        print("  malloc in the warm workers: " + ", ".join(f"{t}: {warm[t][0].get('malloc', 'system')}" for t in trees))
        if "baseline" in trees:
            base = rate["baseline"]
            for tree in [t for t in trees if t != "baseline"]:
                cold_ratio = f"cold {rate[tree][0] / base[0]:.2f}x, " if rate[tree][0] and base[0] else ""
                print(f"  speed-up of {tree} over the baseline (evals per CPU-minute): {cold_ratio}"
                      f"warm {rate[tree][1] / base[1]:.2f}x")
                pairs = list(zip(warm["baseline"][0]["losses"], warm[tree][0]["losses"], strict=True))
                diff = max((abs(a - b) / abs(a) for a, b in pairs if a and b), default=0.0)
                print(f"    valid losses equal to the baseline's: {sum(a == b for a, b in pairs)} of {len(pairs)}; "
                      f"max relative difference {diff:.1e}")
        print(f"\n3. where the time goes (CPU s, median of runs): start-up in a fresh process, then one warm LSTM "
              f"evaluation at the {label} budget")
        print(f"  {'tree':18s} {'torch':>6s} {'evonas':>6s} {'1st eval':>8s} | "
              + " ".join(f"{p:>10s}" for p in PHASES[1:]) + f" {'total':>7s}")
        for tree in trees:
            med = {k: statistics.median(w["phases"][k] for w in warm[tree]) for k in PHASES[1:]}
            imp_t = statistics.median(w["import_torch"] for w in warm[tree])
            imp = statistics.median(w["import"] for w in warm[tree]) - imp_t
            first = statistics.median(w["first_eval"] for w in warm[tree])
            total = sum(med.values())
            print(f"  {tree:18s} {imp_t:6.2f} {imp:6.2f} {first:8.2f} | "
                  + " ".join(f"{med[p]:5.2f} {100 * med[p] / total:3.0f}%" for p in PHASES[1:]) + f" {total:7.2f}")


def main() -> None:
    """Parse the options and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7, help="interleaved repeats per training-step timing")
    ap.add_argument("--calls", type=int, default=5,
                    help="training steps in a row per timing (after one untimed), as a training loop runs them")
    ap.add_argument("--eval-repeats", type=int, default=3, help="runs per evaluation measurement")
    jsb = str(JSB) if JSB.is_file() else None
    ap.add_argument("--data", default=jsb, help="JSB chorales JSON (default: the shared copy, when present)")
    ap.add_argument("--baseline", help="another source tree (holding evonas/) to time evaluations against")
    ap.add_argument("--quick", action="store_true", help="fewer sizes, cells and repeats; synthetic only")
    ap.add_argument("--only", choices=("steps", "evals"), help="run one part only")
    ap.add_argument("--tasks", default="synthetic,music", help="tasks of the training-step table")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    args.hidden, args.batch, args.random, args.big = [32, 64, 128], [8, 32], 5, True
    args.tasks = args.tasks.split(",")
    if args.quick:
        args.hidden, args.batch, args.random, args.data = [32, 128], [32], 2, None
        args.repeats, args.eval_repeats = min(args.repeats, 5), 1
    import torch

    print(f"torch {torch.__version__}, one thread, CPU time; load average {load_average()} on {os.cpu_count()} cores"
          + (f"; baseline tree {args.baseline}" if args.baseline else ""))
    if args.only != "evals":
        step_table(args)
    if args.only != "steps":
        eval_table(args)
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
