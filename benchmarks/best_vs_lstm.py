"""Does a found cell beat a plain LSTM? Retrain it with fresh seeds at the LSTM's parameter count, next to
the LSTM, under the same budget and the same seeds, and print both with spread and the paired difference.

The cell is a cell text, a library name, or a run folder (its best non-seed cell from best_cells.json).
Verdict rule (stated with the numbers): the cell "beats LSTM" only when it has the lower test loss with every
seed (paired by seed; the test split plays no part in the search); otherwise "does not beat LSTM". X ± Y is the
mean ± sample sd of the per-seed differences LSTM - cell (positive = the cell is better). Validation loss is
printed too.

Example:
  .venv/bin/python benchmarks/best_vs_lstm.py se_jsb/music/evo+sur/seed2 --task music \
      --hidden 126 --seconds 180 --clock cpu --lr 0.01 --dropout 0.2 --batch-size 8 --seeds 100,101,102
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from _common import JSB
from baselines import (
    add_budget_args,
    base_config,
    budget_text,
    default_hidden,
    match_hidden,
    param_count,
    train_many,
)

from evonas.cells import canonical_text, to_text
from evonas.cells.library import library, resolve
from evonas.errors import CheckpointError
from evonas.evaluation import Job
from evonas.training.train import TrainConfig


def cell_from(arg: str) -> tuple[str, str]:
    """(label, cell text) from a run folder (best non-seed cell), a library name or a cell text."""
    path = Path(arg)
    if path.is_dir():
        best = path / "best_cells.json"
        if not best.exists():
            raise CheckpointError(f"{path} has no best_cells.json")
        entries = [e for e in json.loads(best.read_text())["best"] if not e.get("seed")]
        if not entries:
            raise CheckpointError(f"{best} lists no searched (non-seed) cell")
        return f"best of {path}", entries[0]["written"]
    return arg if len(arg) < 40 else "cell", to_text(resolve(arg))


def main(argv: list[str] | None = None) -> None:
    """Train the cell and the LSTM on the same seeds and budget; print both and the verdict."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cell", help="cell text, library name, or run folder (uses its best non-seed cell)")
    p.add_argument("--task", default="music", choices=["synthetic", "music", "text"])
    p.add_argument("--data", default=str(JSB))
    add_budget_args(p)
    p.add_argument("--hidden", type=int, default=0, help="LSTM hidden size (0: the task default)")
    p.add_argument("--cell-lr", type=float, default=0.0,
                   help="learning rate of the found cell only (0: --lr, the same as the LSTM's); each model at the lr "
                        "that suits it is the fair comparison when one diverges at the other's")
    p.add_argument("--seeds", default="100,101,102", help="fresh training seeds (not the search's)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--out", default="", help="also write the summary (markdown) to this file")
    p.add_argument("--cache", default="", help="JSONL of finished results (see baselines.py)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    label, text = cell_from(args.cell)
    node, lstm = resolve(text), library()["lstm"].cell
    base = base_config(args)
    cfg0 = TrainConfig.from_dict(base)
    lstm_hidden = args.hidden or default_hidden(cfg0)
    target = param_count(lstm, cfg0, lstm_hidden)
    hidden, params = match_hidden(node, cfg0, target)
    jobs = []
    cell_lr = {"lr": args.cell_lr} if args.cell_lr else {}
    for name, n, h, extra in (("cell", node, hidden, cell_lr), ("lstm", lstm, lstm_hidden, {})):
        for s in seeds:
            conf = TrainConfig.from_dict({**base, **extra, "hidden": h, "seed": s}).to_dict()
            jobs.append(Job(key=f"{name}:{canonical_text(n)}", cell=to_text(n), config=conf))
    res = train_many(jobs, args.workers, args.timeout, args.cache or None)

    def losses(name: str, n, split: str) -> list[float | None]:
        rs = [res[(f"{name}:{canonical_text(n)}", s)] for s in seeds]
        return [r[f"{split}_loss"] if r["status"] == "ok" else None for r in rs]

    failed = [f"{name} seed {s}: {r['status']} ({r['reason']})" for name, n in (("cell", node), ("lstm", lstm))
              for s in seeds if (r := res[(f"{name}:{canonical_text(n)}", s)])["status"] != "ok"]

    lc, ll = losses("cell", node, "test"), losses("lstm", lstm, "test")
    vc, vl = losses("cell", node, "valid"), losses("lstm", lstm, "valid")

    def ms(xs: list[float]) -> str:
        return f"{statistics.fmean(xs):.4f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.4f}" if xs else "–"

    diffs = [b - a for a, b in zip(lc, ll, strict=True) if a is not None and b is not None]
    budget = budget_text(base) or "task default"
    lines = [f"Cell ({label}): `{canonical_text(node)}`",
             f"Task {args.task}, budget {budget}, seeds {seeds}; LSTM hidden {lstm_hidden} ({target:,} params), "
             f"cell hidden {hidden} ({params:,} params, {(params - target) / target:+.1%})"
             + (f", cell lr {args.cell_lr:g}." if args.cell_lr else "."),
             f"- cell: test loss {ms([x for x in lc if x is not None])}  per seed {lc}",
             f"- LSTM: test loss {ms([x for x in ll if x is not None])}  per seed {ll}",
             f"- LSTM - cell, test loss (paired by seed): {ms(diffs)}  per seed {[round(d, 4) for d in diffs]}",
             f"- validation loss (the search's selection set): cell {ms([x for x in vc if x is not None])}, "
             f"LSTM {ms([x for x in vl if x is not None])}"]
    if len(diffs) == len(seeds) and all(d > 0 for d in diffs):
        verdict = f"beats LSTM by {ms(diffs)} (lower test loss with every seed)"
    else:
        verdict = "does not beat LSTM" + (f" (difference {ms(diffs)}; better with {sum(d > 0 for d in diffs)}"
                                          f" of {len(seeds)} seeds)" if diffs else " (no paired results)")
    if failed:
        lines.append(f"- not finished: {'; '.join(failed)}")
    lines += [f"Verdict: {verdict}", f"Command: `{' '.join(sys.argv)}`"]
    text_out = "\n".join(lines) + "\n"
    print(text_out)
    if args.out:
        Path(args.out).write_text(text_out, encoding="utf-8")


if __name__ == "__main__":
    main()
