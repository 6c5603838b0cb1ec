"""Search efficiency at an equal budget of trained cells: random search vs surrogate-screened random search
vs evolution without / with the surrogate, several seeds, on the synthetic task and JSB Chorales.

  (a) random      random cells that pass the structural filters (ramped half-and-half, as generation 0)
  (b) random+sur  random candidates screened by the surrogate, refitted after each batch (Schrimpf et al. 2017)
  (c) evo         evonas.evolution.loop.Search, surrogate "none"
  (d) evo+sur     Search with the surrogate screen (the same adapter `evonas evolve` uses; acquisition mean)
  (e) evo+ucb     (d) with `acquisition: ucb` (mean minus the ensemble's spread: optimistic where models disagree)

All four train exactly the same number of cells with the same training config, the same evaluator and the same
batch schedule (population, then `offspring` per round), and record every result in an evonas archive. With
search seed s, every method uses training seed s and the same first batch (same RNG stream), so the
comparison is paired. No seed cells (LSTM, GRU, ...) are given to any method unless --seed-cells says so.

Output (under --out): results.json (all curves), efficiency.md (table + ratio), curves_<task>.png, and one
run folder per (task, method, seed) that `evonas report` can read. A finished run folder is reused when the
script is run again with the same settings (delete it to retrain).

Cost: every table also counts what each run spent in CPU-seconds of training (`cpu_seconds` of its archive
rows) and the best validation loss at the FULL budget each method reached within the CPU-seconds of the cheapest
run of the task (`--fidelity` gives the evolution methods successive-halving rungs, whose last rung is the full
budget; their lower-rung results are cheaper but do not count as full-budget results).

Examples (the runs in the README; 60 cells, 3 seeds; JSB takes 4-15 minutes per run on 2 shared cores):
  .venv/bin/python benchmarks/search_efficiency.py --tasks synthetic --steps 300 --cells 60 --population 12 \
      --offspring 8 --seeds 3 --out se_synthetic
  .venv/bin/python benchmarks/search_efficiency.py --tasks jsb --jsb-epochs 10 --jsb-lr 0.01 --hidden 64 --cells 60 \
      --population 12 --offspring 8 --seeds 3 --out se_jsb
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

from _common import JSB

from evonas.evaluation import Job, LocalEvaluator
from evonas.evolution import screen as scr
from evonas.evolution.config import RunConfig
from evonas.evolution.loop import Search
from evonas.evolution.toolbox import make_toolbox
from evonas.reporting.report import RecordingScreen, best_so_far
from evonas.store.archive import Archive, json_safe
from evonas.store.runlog import append_logbook, write_config
from evonas.training.train import TrainConfig

METHODS = {"random": "(a) random", "random+sur": "(b) random + surrogate", "evo": "(c) evolution",
           "evo+sur": "(d) evolution + surrogate", "evo+ucb": "(e) evolution + surrogate, UCB acquisition"}
# paired comparisons printed under each table: (better?, than), over seeds
PAIRS = (("evo+sur", "random"), ("evo+sur", "evo"), ("evo+ucb", "evo+sur"))
DONE = "done.json"


def train_budget(task: str, data: str | None, seed: int, args: argparse.Namespace) -> dict:
    """The TrainConfig (as the archive's budget dict) of every cell of one run."""
    d: dict = {"task": task, "data": data, "seed": seed, "device": "cpu"}
    if task == "synthetic":
        d["steps"] = args.steps
    else:
        d["epochs"] = args.jsb_epochs
        if args.jsb_lr:
            d["lr"] = args.jsb_lr
        if args.jsb_steps:
            d["steps"] = args.jsb_steps
    if args.hidden:
        d["hidden"] = args.hidden
    return TrainConfig.from_dict(d).to_dict()


def budget_text(task: str, args: argparse.Namespace) -> str:
    """The per-cell training budget of a task, in words."""
    text = f"{args.steps} steps" if task == "synthetic" else (
        f"{args.jsb_epochs} epoch(s)" + (f" capped at {args.jsb_steps} steps" if args.jsb_steps else "")
        + (f", lr {args.jsb_lr:g}" if args.jsb_lr else ", the task's default lr"))
    return text + (f", hidden {args.hidden}" if args.hidden else ", task default hidden")


def run_config(task: str, data: str | None, seed: int, surrogate: str, args: argparse.Namespace) -> RunConfig:
    """The search config shared by all four methods (random search uses its generators and screen settings)."""
    return RunConfig.from_dict({
        "task": task, "data": data, "seed": seed, "generations": args.gens, "population": args.population,
        "offspring": args.offspring, "workers": args.workers, "device": "cpu", "surrogate": surrogate,
        "seed_cells": list(args.seed_cells), "screen_factor": args.screen_factor, "eval_timeout": args.timeout,
        "surrogate_ensemble": args.surrogate_ensemble,
        **({"fidelity": {"rungs": args.rungs, "eta": 3}} if args.rungs else {}),
    })


def make_screen(kind: str, run_dir: Path, seed: int, ensemble: int, args: argparse.Namespace,
                acquisition: str = "mean"):
    """The surrogate screen of `evonas evolve`, wrapped so every prediction is logged for the report."""
    from evonas.surrogate.screen import make_screen as cli_screen

    return RecordingScreen(cli_screen(kind, run_dir, seed, ensemble, init=args.surrogate_init, acquisition=acquisition,
                                      warm_epochs=args.surrogate_epochs), run_dir)


def random_search(cfg: RunConfig, run_dir: Path, evaluator, budget: dict, screened: bool, surrogate: str,
                  args: argparse.Namespace) -> None:
    """Random search with the same batch schedule as evolution, optionally screened by the surrogate."""
    rng = random.Random(cfg.seed)
    tb = make_toolbox(cfg, rng)
    write_config(run_dir, {**cfg.to_dict(), "method": "random+sur" if screened else "random"})
    screen = make_screen(surrogate, run_dir, cfg.seed, cfg.surrogate_ensemble, args) if screened else None
    from evonas.cells import library

    seeds = [library.resolve(s) for s in cfg.seed_cells]
    with Archive(run_dir) as archive:
        for g in range(cfg.generations + 1):
            t0 = time.monotonic()
            seen = archive.keys()
            predicted = None
            if g == 0:
                from evonas.cells import canonical_text, to_text

                chosen = [(canonical_text(s), to_text(s)) for s in seeds if canonical_text(s) not in seen]
                inds = tb.population(cfg.population, exclude=seen | {k for k, _ in chosen})
                chosen += [(i.key, str_cell(i)) for i in inds]
            else:
                n = cfg.offspring
                cands = tb.population(n * (cfg.screen_factor if screened else 1), exclude=seen)
                keys = [c.key for c in cands]
                idx = scr.random_subset(len(cands), n, rng)
                if screened:
                    scores = scr.clean_scores(screen.score(keys), len(keys))
                    if not all(math.isinf(v) for v in scores):
                        idx = scr.pick(keys, scores, n, cfg.explore_share, rng)
                        predicted = [scores[i] for i in idx]
                chosen = [(cands[i].key, str_cell(cands[i])) for i in idx]
            results: dict[str, dict] = {}

            def on_result(job: Job, result, results=results) -> None:
                archive.add(job, result)
                results[job.key] = json_safe(result.to_dict())

            evaluator.run([Job(key=k, cell=c, config=budget, generation=g) for k, c in chosen], on_result)
            losses = [results[k].get("valid_loss") if results[k].get("status") == "ok" else None for k, _ in chosen]
            tau = scr.kendall_tau(predicted, losses) if predicted is not None else None
            if screened:
                scr.learn(screen, archive.to_records(rungs="all"))
            ok = sorted(v for v in losses if v is not None)
            append_logbook(run_dir, {"gen": g, "trained": len(chosen), "failures": len(chosen) - len(ok),
                                     "best": ok[0] if ok else None, "tau": tau,
                                     "seconds": round(time.monotonic() - t0, 2)}, io.StringIO())


def str_cell(ind) -> str:
    """The cell text of a DEAP individual."""
    from evonas.cells import to_text
    from evonas.evolution.genome import to_node

    return to_text(to_node(ind))


def run_one(task: str, data: str | None, method: str, seed: int, args: argparse.Namespace, evaluator,
            root: Path) -> dict:
    """One (task, method, seed) run in its folder; returns its best-so-far curve and counts."""
    run_dir = root / task / method / f"seed{seed}"
    budget = train_budget(task, data, seed, args)
    if args.rungs and args.rungs[-1] != budget.get("steps" if task == "synthetic" else "epochs"):
        raise SystemExit(f"--fidelity: the last rung ({args.rungs[-1]}) must be the full budget of {task}")
    surrogate = args.surrogate if method.endswith(("+sur", "+ucb")) else "none"
    cfg = run_config(task, data, seed, surrogate, args)
    marker = run_dir / DONE
    settings = {"budget": budget, "config": cfg.to_dict(), "screen": [args.surrogate_init, args.surrogate_epochs]}
    if marker.exists() and json.loads(marker.read_text()).get("settings") == settings:
        print(f"  reuse {run_dir}", file=sys.stderr)
    elif args.summarise_only:
        if not marker.exists():
            raise SystemExit(f"--summarise-only: {run_dir} has not finished")
        print(f"  reuse {run_dir} (--summarise-only: settings not compared; the current code's training "
              "config may have gained fields since)", file=sys.stderr)
    else:
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        t0 = time.monotonic()
        if method.startswith("evo"):
            screen = (make_screen(surrogate, run_dir, seed, cfg.surrogate_ensemble, args,
                                  "ucb" if method.endswith("+ucb") else "mean") if surrogate != "none" else None)
            Search(cfg, run_dir, evaluator=evaluator, screen=screen, budget=budget, stdout=io.StringIO(),
                   stderr=io.StringIO()).run()
        else:
            random_search(cfg, run_dir, evaluator, budget, method.endswith("+sur"), args.surrogate, args)
        marker.write_text(json.dumps({"settings": settings, "seconds": round(time.monotonic() - t0, 1)}))
    with Archive(run_dir, create=False) as a:
        rows = a.rows()
    full = budget.get("steps") if task == "synthetic" else budget.get("epochs")
    unit = "steps" if task == "synthetic" else "epochs"
    curve = best_so_far(rows)[: args.cells] if not args.rungs or not method.startswith("evo") else \
        best_so_far([r for r in rows if r["budget"].get(unit) == full])[: args.cells]
    cost, spent, best_full = [], 0.0, None  # (CPU-seconds so far, best full-budget loss so far) per result
    for r in rows:
        spent += float(r["metrics"].get("cpu_seconds") or r["seconds"] or 0.0)
        if r["budget"].get(unit) == full and r["status"] == "ok" and r["valid_loss"] is not None:
            best_full = r["valid_loss"] if best_full is None else min(best_full, r["valid_loss"])
        cost.append((spent, best_full))
    taus = []
    log = run_dir / "logbook.jsonl"
    if log.exists():
        taus = [json.loads(line).get("tau") for line in log.read_text().splitlines() if line.strip()]
    return {"curve": curve, "cost": cost, "cpu": spent, "trained": len(rows),
            "failures": sum(r["status"] != "ok" for r in rows),
            "seconds": json.loads(marker.read_text())["seconds"], "taus": taus, "dir": str(run_dir)}


def mean_sd(xs: list[float]) -> str:
    """`mean ± sample sd (min..max)` of a list (sd 0 for one value)."""
    if not xs:
        return "–"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.4f} ± {sd:.4f} ({min(xs):.4f}..{max(xs):.4f})"


def cells_to_reach(curve: list[float | None], target: float | None, strictly: bool = False) -> int | None:
    """1-based number of trained cells after which the curve is at or below target (strictly below with
    `strictly`; None: never)."""
    if target is None:
        return None
    margin = -1e-12 if strictly else 1e-12
    return next((i + 1 for i, v in enumerate(curve) if v is not None and v <= target + margin), None)


def paired_lines(res: dict[str, list[dict]], within: dict[str, list[float | None]], n: int) -> list[str]:
    """For each pair in PAIRS that ran: the paired difference over seeds of the final best after n cells and of
    the best full-budget loss within the CPU budget, with a one-sided paired t-test (is the first lower?)."""
    from scipy.stats import ttest_rel

    lines = []
    for x, y in PAIRS:
        if not res.get(x) or not res.get(y) or len(res[x]) != len(res[y]) or len(res[x]) < 2:
            continue
        for what, vx, vy in (("final best", [r["curve"][-1] if r["curve"] else None for r in res[x]],
                              [r["curve"][-1] if r["curve"] else None for r in res[y]]),
                             ("best within the CPU budget", within.get(x, []), within.get(y, []))):
            pairs = [(a, b) for a, b in zip(vx, vy, strict=True) if a is not None and b is not None]
            if len(pairs) < 2:
                continue
            diff = [b - a for a, b in pairs]
            p = ttest_rel([a for a, _ in pairs], [b for _, b in pairs], alternative="less").pvalue
            lines.append(f"- {METHODS[y]} minus {METHODS[x]}, {what}, paired over {len(pairs)} seeds: "
                         f"{statistics.fmean(diff):+.4f} ± {statistics.stdev(diff):.4f}; one-sided paired t-test "
                         f"({x} lower) p = {p:.3g}")
    return ["", *lines] if lines else []


def summarise(task: str, res: dict[str, list[dict]], n: int) -> list[str]:
    """Markdown lines of one task: table per method and the (d)-vs-(a) ratio per seed."""
    lines = [f"### {task}", "", "| method | best validation loss after "
             f"{n} cells: mean ± sd (min..max) | failed cells (mean) | wall seconds per run (mean) | "
             "mean Kendall tau of the screen |", "|---|---|---|---|---|"]
    for m, label in METHODS.items():
        runs = res.get(m, [])
        finals = [r["curve"][-1] for r in runs if r["curve"] and r["curve"][-1] is not None]
        taus = [t for r in runs for t in r["taus"] if t is not None]
        tau = f"{statistics.fmean(taus):+.3f} (n={len(taus)})" if taus else "–"
        lines.append(f"| {label} | {mean_sd(finals)} | {statistics.fmean([r['failures'] for r in runs]):.1f} | "
                     f"{statistics.fmean([r['seconds'] for r in runs]):.0f} | {tau} |" if runs else f"| {label} | – |")
    budget = min((r["cpu"] for runs in res.values() for r in runs), default=0.0)
    lines += ["", f"Cost: CPU-seconds of training per run, and the best full-budget validation loss within "
              f"{budget:.0f} CPU-seconds (the cheapest run of this task):", "",
              "| method | CPU-seconds per run: mean ± sd | best full-budget loss within the budget | seeds that "
              "reached any |", "|---|---|---|---|"]
    within: dict[str, list[float | None]] = {}
    for m, label in METHODS.items():
        runs = res.get(m, [])
        if not runs:
            continue
        within[m] = [next((b for s, b in reversed(r["cost"]) if s <= budget + 1e-9), None) for r in runs]
        got = [v for v in within[m] if v is not None]
        cpus = [r["cpu"] for r in runs]
        sd = statistics.stdev(cpus) if len(cpus) > 1 else 0.0
        lines.append(f"| {label} | {statistics.fmean(cpus):.0f} ± {sd:.0f} | {mean_sd(got)} | "
                     f"{len(got)}/{len(runs)} |")
    lines += paired_lines(res, within, n)
    a, d = res.get("random", []), res.get("evo+sur", [])
    if a and d:
        lines += ["", "Cells (d) needs to reach (a)'s final best (same seed). All methods with one seed share the "
                  "same first batch, so when (a) found its best there, (d) reaches it at the same cell: the "
                  "count (a) itself needed is shown next to it.", ""]
        ratios, beats = [], []
        for ra, rd in zip(a, d, strict=True):
            target = ra["curve"][-1]
            k, ka = cells_to_reach(rd["curve"], target), cells_to_reach(ra["curve"], target)
            kb = cells_to_reach(rd["curve"], target, strictly=True)
            ratios.append(k / n if k else None)
            beats.append(kb / n if kb else None)
            lines.append(f"- seed {a.index(ra)}: (a) best {target if target is None else f'{target:.4f}'}, "
                         f"first reached by (a) after {ka} cells; "
                         + (f"(d) reaches it after {k} cells: ratio {k}/{n} = {k / n:.2f}" if k else
                            f"(d) does not reach it within {n} cells: ratio > 1")
                         + (f"; (d) goes below it after {kb} cells" if kb else "; (d) never goes below it"))

        def median_text(xs: list[float | None], verb: str) -> str:
            med = statistics.median([x if x is not None else math.inf for x in xs])
            got = sum(x is not None for x in xs)
            return f"{'> 1' if math.isinf(med) else f'{med:.2f}'} ({got}/{len(xs)} seeds {verb})"

        lines.append(f"- median ratio over seeds: {median_text(ratios, 'reached')}; cells to go strictly below "
                     f"(a)'s final best / {n}: {median_text(beats, 'went below')}")
    return lines + [""]


def main(argv: list[str] | None = None) -> None:
    """Parse options, run every (task, method, seed), write results.json, efficiency.md and the curves."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="synthetic,jsb", help="comma list of synthetic, jsb")
    p.add_argument("--jsb", default=str(JSB), help="JSB Chorales JSON (default ../shared/data/...)")
    p.add_argument("--cells", type=int, default=60, help="trained cells per run (the budget)")
    p.add_argument("--population", type=int, default=12, help="first batch (generation 0)")
    p.add_argument("--offspring", type=int, default=8, help="cells per later batch")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=1500, help="training steps per cell on synthetic")
    p.add_argument("--jsb-epochs", type=int, default=10, help="training epochs per cell on JSB")
    p.add_argument("--jsb-lr", type=float, default=1e-2,
                   help="Adam lr on JSB (0: the task default 3e-3; 1e-2 is the tuned LSTM lr of benchmarks/jsb.py)")
    p.add_argument("--jsb-steps", type=int, default=0, help="also cap JSB training at this many steps (0: no cap)")
    p.add_argument("--hidden", type=int, default=0, help="hidden size (0: the task's default)")
    p.add_argument("--surrogate", default="treelstm", choices=["treelstm", "gnn"])
    p.add_argument("--surrogate-ensemble", type=int, default=1,
                   help="models in the screen (1 reproduces the README's table; `evonas evolve` defaults to 3)")
    p.add_argument("--surrogate-init", default="builtin",
                   help="builtin (the default of `evonas evolve`), none (cold, the README's first table) or a folder")
    p.add_argument("--surrogate-epochs", type=int, default=None,
                   help="fine-tuning epochs per refit (configs/default.yaml uses 20; default: the surrogate's own)")
    p.add_argument("--screen-factor", type=int, default=4)
    p.add_argument("--fidelity", default="", help="rungs for the evolution methods, e.g. 100,300,1500 (the last "
                   "must be the full budget: --steps on synthetic, --jsb-epochs on JSB)")
    p.add_argument("--seed-cells", default="", help="comma list of library cells every method trains first")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per training worker and for the surrogate")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per evaluation before it counts failed")
    p.add_argument("--out", default="search_efficiency_out")
    p.add_argument("--summarise-only", action="store_true",
                   help="train nothing: rebuild the table and curves from the finished run folders under --out")
    args = p.parse_args(argv)
    args.seed_cells = [s for s in args.seed_cells.split(",") if s]
    args.rungs = [int(x) for x in args.fidelity.split(",") if x]
    if (args.cells - args.population) % args.offspring or args.cells <= args.population:
        p.error("--cells minus --population (and seed cells) must be a positive multiple of --offspring")
    args.gens = (args.cells - args.population) // args.offspring
    args.population -= len(args.seed_cells)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    from evonas.reporting import plots

    results: dict[str, dict[str, list[dict]]] = {}
    md = ["# Search efficiency", "", f"Command: `{' '.join(sys.argv)}`", "",
          f"Budget: {args.cells} trained cells per run ({args.population + len(args.seed_cells)} first, then "
          f"{args.offspring} per round), {args.seeds} seeds, surrogate {args.surrogate}, screen factor "
          f"{args.screen_factor}; training per cell: "
          + "; ".join(f"{t}: {budget_text(t, args)}" for t in args.tasks.split(",") if t) + ".", ""]
    import torch

    torch.set_num_threads(args.threads)  # the surrogate fits in this process
    with LocalEvaluator(workers=args.workers, timeout=args.timeout, devices=["cpu"], threads=args.threads) as ev:
        for task_name in [t for t in args.tasks.split(",") if t]:
            task, data = ("music", args.jsb) if task_name == "jsb" else (task_name, None)
            results[task_name] = {}
            for m in [m for m in args.methods.split(",") if m]:
                if m not in METHODS:
                    p.error(f"unknown method {m!r}; known: {', '.join(METHODS)}")
                results[task_name][m] = []
                for seed in range(args.seeds):
                    t0 = time.monotonic()
                    r = run_one(task, data, m, seed, args, ev, root)
                    results[task_name][m].append(r)
                    print(f"{task_name} {m} seed {seed}: best {r['curve'][-1]} after {len(r['curve'])} cells, "
                          f"{r['failures']} failed, {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
                (root / "results.json").write_text(json.dumps(json_safe(results), indent=1))
            curves = {METHODS[m]: [r["curve"] for r in rs] for m, rs in results[task_name].items()}
            png = plots.curves_plot(curves, f"{task_name}: best-so-far, mean and min..max over {args.seeds} seeds",
                                    args.cells)
            plots.save_png(png, root / f"curves_{task_name}.png")
            md += summarise(task_name, results[task_name], args.cells) + [f"![curves](curves_{task_name}.png)", ""]
            (root / "efficiency.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
