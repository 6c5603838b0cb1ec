"""Build the surrogate benchmark dataset: library cells, random filtered cells and mutants of library cells,
each trained briefly on a task with `evonas.evaluate`, written to a CSV (cell, score, status, ...).

score = validation loss (lower = better); empty for diverged/failed cells. Rows are appended as results arrive
and cells already in the CSV are skipped, so an interrupted build resumes where it stopped.

Regenerate benchmarks/data/surrogate_cells.csv (about 15 minutes on 2 idle cores; much longer on a loaded machine):

    .venv/bin/python benchmarks/make_surrogate_dataset.py --out benchmarks/data/surrogate_cells.csv \
        --random 190 --mutants 130 --steps 120 --hidden 32 --workers 2 --seed 0

The JSB Chorales dataset at the rung-0 budget of configs/jsb.yaml (2 epochs, hidden 64, lr 0.01, dropout 0.2 in
and out; about 30 minutes with 2 workers on the shared machine), a different seed for other cells:

    .venv/bin/python benchmarks/make_surrogate_dataset.py --out benchmarks/data/surrogate_cells_jsb.csv \
        --task music --data ../shared/data/jsb_chorales/jsb-chorales-quarter.json --epochs 2 --hidden 64 \
        --lr 0.01 --dropout 0.2 --random 190 --mutants 130 --workers 2 --seed 1
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import random
import sys
import time
from pathlib import Path

COLUMNS = ["cell", "score", "status", "reason", "origin", "params", "seconds", "steps", "epochs"]


def candidates(n_random: int, n_mutants: int, seed: int) -> list[tuple[str, str]]:
    """(canonical cell text, origin) for the library cells, random filtered cells and library mutants."""
    from evonas.surrogate.sample import random_cell, random_mutant

    from evonas.cells import CORE, EXTENDED, canonical_text
    from evonas.cells.library import library

    rng = random.Random(seed)
    seen: dict[str, str] = {}
    lib = library()
    for name, entry in lib.items():
        seen.setdefault(canonical_text(entry.cell), f"library:{name}")
    target = len(seen) + n_random
    while len(seen) < target:
        ops = EXTENDED if rng.random() < 0.3 else CORE
        seen.setdefault(canonical_text(random_cell(rng, ops)), "random")
    parents = list(lib.items())
    target = len(seen) + n_mutants
    while len(seen) < target:
        name, entry = rng.choice(parents)
        ops = EXTENDED if rng.random() < 0.3 else CORE
        seen.setdefault(canonical_text(random_mutant(rng, entry.cell, ops)), f"mutant:{name}")
    return list(seen.items())


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _evaluate(job: tuple[str, str, dict]) -> dict:
    """Train one cell (runs in a worker process); evaluate() records failures instead of raising."""
    from evonas import TrainConfig, evaluate

    cell, origin, cfg = job
    r = evaluate(cell, TrainConfig.from_dict(cfg))
    ok = r.status == "ok" and r.valid_loss is not None
    return {"cell": cell, "score": r.valid_loss if ok else "", "status": r.status, "reason": r.reason[:200],
            "origin": origin, "params": r.params, "seconds": round(r.seconds, 3), "steps": r.steps,
            "epochs": round(r.epochs, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/data/surrogate_cells.csv")
    ap.add_argument("--random", type=int, default=190, help="random filtered cells")
    ap.add_argument("--mutants", type=int, default=130, help="mutants of library cells")
    ap.add_argument("--task", default="synthetic", choices=["synthetic", "music", "text"])
    ap.add_argument("--data", default=None, help="data file/folder of the music and text tasks")
    ap.add_argument("--steps", type=int, default=None, help="training steps per cell (synthetic default: 120)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs per cell (instead of steps)")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default: the task's)")
    ap.add_argument("--dropout", type=float, default=0.0, help="dropout on the cell's input and output")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--list", action="store_true", help="only print the candidate cells")
    args = ap.parse_args(argv)

    from evonas import TrainConfig

    cells = candidates(args.random, args.mutants, args.seed)
    if args.list:
        for c, o in cells:
            print(o, c)
        return 0
    out = Path(args.out)
    done: set[str] = set()
    columns = COLUMNS
    if out.exists():
        with open(out, newline="") as f:
            reader = csv.DictReader(f)
            done = {row["cell"] for row in reader}
            columns = list(reader.fieldnames or COLUMNS)  # an older file keeps its columns
    steps = args.steps if args.steps is not None or args.epochs is not None else 120
    cfg = {"task": args.task, "data": args.data, "steps": steps, "epochs": args.epochs, "hidden": args.hidden,
           "lr": args.lr, "dropout_in": args.dropout, "dropout_out": args.dropout, "seed": args.seed,
           "threads": 1, "device": "cpu"}
    TrainConfig.from_dict(cfg)  # a bad setting fails here, not in every worker
    jobs = [(c, o, cfg) for c, o in cells if c not in done]
    random.Random(args.seed).shuffle(jobs)  # a partial file is then a representative sample
    print(f"{len(cells)} candidates, {len(done)} already in {out}, {len(jobs)} to train", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    new_file = not out.exists()
    t0 = time.time()
    with open(out, "a", newline="") as f, mp.get_context("spawn").Pool(args.workers, _init_worker) as pool:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        if new_file:
            w.writeheader()
        for i, row in enumerate(pool.imap_unordered(_evaluate, jobs), 1):
            w.writerow(row)
            f.flush()
            if i % 10 == 0 or i == len(jobs):
                print(f"{i}/{len(jobs)} done, {time.time() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
