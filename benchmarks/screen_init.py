"""In-search Kendall tau of the screen with a pretrained start (`surrogate_init: builtin`) against a cold one.

Runs `evonas evolve` (the given config, default configs/default.yaml) once per seed and init, then prints the
screen's tau per generation (`tau`: successful trained cells; `tau_all`: failures tied worst) and, over the first
--first generations, the mean per run, mean +- sd over seeds and a paired t-test over seeds (builtin - cold).
Runs already finished in --out are reused.

    .venv/bin/python benchmarks/screen_init.py --seeds 0,1,2 --out /tmp/screen_init [--config configs/jsb.yaml]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from scipy import stats


def run(config: str | None, seed: int, init: str, out: Path, extra: list[str]) -> list[dict]:
    """The logbook of one finished run (started when missing)."""
    folder = out / f"{init.replace('/', '_')}-seed{seed}"
    log = folder / "logbook.jsonl"
    if not (folder / "best_cells.json").exists() or not log.exists():
        evonas = str(Path(sys.executable).parent / "evonas")
        cmd = [evonas, "evolve", "--seed", str(seed), "--surrogate-init", init,
               "--out", str(folder), *(["--config", config] if config else []), *extra]
        if folder.exists():
            cmd = [evonas, "resume", str(folder)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def mean_tau(log: list[dict], key: str, first: int) -> float | None:
    """Mean of a logged tau over generations 1..first (None values skipped)."""
    vals = [e.get(key) for e in log if 1 <= e.get("gen", 0) <= first and e.get(key) is not None]
    return statistics.mean(vals) if vals else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=None)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--inits", default="builtin,none")
    ap.add_argument("--first", type=int, default=3, help="generations averaged (1..first)")
    ap.add_argument("--out", default="screen_init_out")
    args, extra = ap.parse_known_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    inits = args.inits.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table: dict[str, dict[str, list[float | None]]] = {i: {"tau": [], "tau_all": []} for i in inits}
    for init in inits:
        for seed in seeds:
            log = run(args.config, seed, init, out, extra)
            taus = " ".join(f"{e.get('tau'):+.3f}" if e.get("tau") is not None else "  n/a" for e in log[1:])
            print(f"{init:>8} seed {seed}: tau per generation {taus}")
            for key in ("tau", "tau_all"):
                table[init][key].append(mean_tau(log, key, args.first))
    for key in ("tau", "tau_all"):
        print(f"\n{key}, mean over generations 1..{args.first} per run; mean +- sd over seeds {seeds}:")
        for init in inits:
            vals = [v for v in table[init][key] if v is not None]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            print(f"  {init:>8}: {statistics.mean(vals):+.3f} +- {sd:.3f}  ({', '.join(f'{v:+.3f}' for v in vals)})")
        if len(inits) == 2:
            pairs = [(a, b) for a, b in zip(table[inits[0]][key], table[inits[1]][key], strict=True)
                     if a is not None and b is not None]
            diff = [a - b for a, b in pairs]
            if len(diff) > 1:
                t = stats.ttest_rel([a for a, _ in pairs], [b for _, b in pairs])
                print(f"  {inits[0]} - {inits[1]}: {statistics.mean(diff):+.3f} +- {statistics.stdev(diff):.3f}, "
                      f"paired t-test p = {t.pvalue:.2f} (two-sided, n = {len(diff)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
