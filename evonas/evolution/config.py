"""The run config: a dataclass read from YAML plus command-line overrides; a bad key or value is a ConfigError."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from evonas import defaults
from evonas.cells import FilterConfig, op_set
from evonas.errors import ConfigError
from evonas.evaluation.allocator import resolve_allocator
from evonas.evaluation.base import Evaluator
from evonas.evaluation.factory import make_evaluator
from evonas.evolution.select import SELECTIONS
from evonas.reporting import optuna_study

BACKENDS = ("local", "ray")
SURROGATES = ("none", "treelstm", "gnn")
ACQUISITIONS = ("mean", "ucb")
MUTATIONS = ("uniform", "node_replace", "insert", "shrink", "memory")


@dataclass
class RunConfig:
    """Everything a search needs; `train` holds extra TrainConfig fields (hidden, steps, epochs, lr, ...)."""

    task: str = "synthetic"
    data: str | None = None
    generations: int = 4
    population: int = 8
    offspring: int = 6  # cells trained per generation
    workers: int = 2
    backend: str = "local"
    ray_address: str | None = None
    device: str = "auto"
    evals_per_gpu: int = defaults.EVALS_PER_GPU  # evaluations sharing one GPU (each in its own process)
    allocator: str = "auto"  # malloc of the evaluation workers: auto | system | tcmalloc | jemalloc | a library path
    seed: int = 0
    out: str | None = None
    seed_cells: list[str] = field(default_factory=lambda: list(defaults.SEED_CELLS))
    surrogate: str = "none"
    surrogate_ensemble: int = defaults.SURROGATE_ENSEMBLE  # models in the screen's ensemble
    screen_factor: int = 4  # with a screen: candidates generated per cell trained
    explore_share: float = 0.25  # with a screen: share of the trained cells drawn by weighted sampling
    random_share: float = 0.5  # of those exploration slots: share drawn uniformly (the screen's tau_random sample)
    surrogate_init: str = "builtin"  # the screen starts from: builtin (shipped, pretrained) | a model folder | none
    surrogate_epochs: int | None = None  # fine-tuning epochs of each refit (None: the surrogate's default, 50)
    acquisition: str = "mean"  # mean: the ensemble's mean score; ucb: mean - ucb_k * spread (lower is better)
    ucb_k: float = 1.0
    selection: str = "tournament"
    tournament_size: int = 3
    elite: int = 2
    hof_size: int = 10
    ops: str | list[str] = "core"
    filters: dict = field(default_factory=lambda: dict(defaults.SEARCH_FILTERS))
    init_min_height: int = 2
    init_max_height: int = 5
    mut_max_height: int = 3
    cx_prob: float = 0.3
    mutation: dict = field(default_factory=lambda: {"uniform": 1.0, "node_replace": 1.0, "insert": 1.0,
                                                    "shrink": 0.7, "memory": 0.5})
    eval_timeout: float | None = None  # seconds per evaluation (None = no limit)
    best_k: int = 10  # cells written to best_cells.json
    optuna: str | None = None  # Optuna study file kept up to date after each generation (relative: in the run folder)
    train: dict = field(default_factory=dict)
    # Multi-fidelity: {rungs: [b0, b1, ...], eta: 3, unit: steps|epochs, promote: loss|curve}. Every chosen cell
    # trains at rung 0; the best 1/eta continue (from their saved state) to the next rung (at rung 0 ranked by
    # `promote`); seed cells always reach the top.
    # null: one rung, the `train` budget.
    fidelity: dict | None = None
    lrs: list[float] | None = None  # learning rates raced per cell at rung 0 (null: the train lr only)
    match_params: str | int | None = None  # library cell name or parameter count every cell is sized to (5%)
    confirm: dict | None = None  # run `evonas confirm` at the end: {top: 3, seeds: 3, budget: {...}}

    # ------------------------------------------------------------ loading

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "config") -> RunConfig:
        """Build and validate; unknown keys and bad values raise ConfigError naming key and value."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict | None = None) -> RunConfig:
        """Read a YAML file (or the defaults when None) and apply overrides whose value is not None."""
        data: dict = {}
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"config file {p} does not exist")
            try:
                data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
            if not isinstance(data, dict):
                raise ConfigError(f"config file {p} must hold a mapping, got {type(data).__name__}")
        for k, v in (overrides or {}).items():
            if v is not None:
                data[k] = v
        return cls.from_dict(data, where=str(path) if path else "config")

    def to_dict(self) -> dict:
        """Plain, JSON/YAML-safe dict (the copy saved in the run folder and checkpoint)."""
        return dataclasses.asdict(self)

    # ------------------------------------------------------------ validation

    def validate(self) -> None:
        """Raise ConfigError naming the first bad key and its value."""

        def bad(key: str, want: str) -> ConfigError:
            return ConfigError(f"{key} must be {want}, got {getattr(self, key)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for key, lo in (("generations", 0), ("population", 1), ("offspring", 1), ("workers", 1), ("seed", 0),
                        ("screen_factor", 1), ("surrogate_ensemble", 1), ("tournament_size", 1), ("elite", 0),
                        ("hof_size", 1),
                        ("init_min_height", 1), ("init_max_height", 1), ("mut_max_height", 0), ("best_k", 1)):
            if not is_int(getattr(self, key)) or getattr(self, key) < lo:
                raise bad(key, f"an integer >= {lo}")
        if not is_int(self.evals_per_gpu) or self.evals_per_gpu < 1:
            raise bad("evals_per_gpu", "an integer >= 1")
        resolve_allocator(self.allocator)  # a ConfigError naming the allocator when it cannot be used
        if self.init_max_height < self.init_min_height:
            raise bad("init_max_height", f">= init_min_height ({self.init_min_height})")
        for key in ("cx_prob", "explore_share", "random_share"):
            v = getattr(self, key)
            if not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v <= 1:
                raise bad(key, "a number in [0, 1]")
        for key, choices in (("backend", BACKENDS), ("surrogate", SURROGATES), ("selection", SELECTIONS),
                             ("acquisition", ACQUISITIONS)):
            if getattr(self, key) not in choices:
                raise bad(key, f"one of {', '.join(choices)}")
        if not isinstance(self.task, str) or not self.task:
            raise bad("task", "a task name (synthetic, text, music)")
        if not isinstance(self.surrogate_init, str) or not self.surrogate_init:
            raise bad("surrogate_init", "builtin, none or the path of a surrogate model folder")
        if self.surrogate_epochs is not None and (not is_int(self.surrogate_epochs) or self.surrogate_epochs < 1):
            raise bad("surrogate_epochs", "an integer >= 1 or null")
        if not isinstance(self.ucb_k, int | float) or isinstance(self.ucb_k, bool) or not self.ucb_k >= 0:
            raise bad("ucb_k", "a number >= 0")
        for key in ("data", "ray_address", "out", "optuna"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                raise bad(key, "a string")
        if self.optuna is not None:
            optuna_study.check_target(self.optuna)  # a .log/.journal/.db/.sqlite3 file, optuna installed
        if not isinstance(self.device, str) or not (self.device in ("auto", "cpu", "cuda")
                                                    or (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise bad("device", "auto, cpu, cuda or cuda:N")
        if self.eval_timeout is not None and (not isinstance(self.eval_timeout, int | float) or self.eval_timeout <= 0):
            raise bad("eval_timeout", "a positive number of seconds or null")
        if isinstance(self.seed_cells, str):
            self.seed_cells = [s.strip() for s in self.seed_cells.split(",") if s.strip()]
        if not isinstance(self.seed_cells, list) or not all(isinstance(s, str) for s in self.seed_cells):
            raise bad("seed_cells", "a list of cell-library names or cell texts")
        try:
            op_set(self.ops)
        except ConfigError as e:
            raise ConfigError(f"ops: {e}") from None
        if not isinstance(self.filters, dict):
            raise bad("filters", "a mapping")
        self.filter_config()
        if not isinstance(self.mutation, dict) or not self.mutation:
            raise bad("mutation", f"a mapping from {', '.join(MUTATIONS)} to weights")
        for k, v in self.mutation.items():
            if k not in MUTATIONS:
                raise ConfigError(f"mutation: unknown key {k!r}; known: {', '.join(MUTATIONS)}")
            if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"mutation.{k} must be a weight >= 0, got {v!r}")
        if not self.mutation_weights():
            raise bad("mutation", "a mapping with at least one positive weight usable with the operator set")
        if self.selection == "aging" and self.offspring >= self.population:
            raise ConfigError(f"selection aging needs offspring < population (each generation may replace only "
                              f"part of the queue), got offspring {self.offspring} and population {self.population}")
        if not isinstance(self.train, dict):
            raise bad("train", "a mapping of training settings")
        self._validate_fidelity()
        for k in ("task", "data", "device", "seed"):
            if k in self.train:
                raise ConfigError(f"train.{k}: set {k} at the top level of the config, not under train")

    def _validate_fidelity(self) -> None:
        """Check fidelity, lrs, match_params and confirm (ConfigError naming the key)."""
        f = self.fidelity
        if f is not None:
            if not isinstance(f, dict) or set(f) - {"rungs", "eta", "unit", "promote"}:
                raise ConfigError(f"fidelity must be a mapping with keys rungs, eta, unit, promote; got {f!r}")
            if f.get("promote", "loss") not in ("loss", "curve"):
                raise ConfigError(f"fidelity.promote must be loss or curve, got {f.get('promote')!r}")
            rungs, eta, unit = f.get("rungs"), f.get("eta", 3), f.get("unit", self.fidelity_unit())
            if (not isinstance(rungs, list) or not rungs or not all(isinstance(r, int) and not isinstance(r, bool)
                                                                     and r >= 1 for r in rungs)
                    or any(b <= a for a, b in zip(rungs, rungs[1:], strict=False))):
                raise ConfigError(f"fidelity.rungs must be a list of increasing positive integers, got {rungs!r}")
            if not isinstance(eta, int) or isinstance(eta, bool) or eta < 2:
                raise ConfigError(f"fidelity.eta must be an integer >= 2, got {eta!r}")
            if unit not in ("steps", "epochs"):
                raise ConfigError(f"fidelity.unit must be steps or epochs, got {unit!r}")
        if self.lrs is not None and (not isinstance(self.lrs, list) or not self.lrs or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in self.lrs)):
            raise ConfigError(f"lrs must be a non-empty list of positive learning rates or null, got {self.lrs!r}")
        m = self.match_params
        if m is not None and not (isinstance(m, str) and m) and not (isinstance(m, int) and not isinstance(m, bool)
                                                                    and m > 0):
            raise ConfigError(f"match_params must be a library cell name, a positive integer or null, got {m!r}")
        if isinstance(m, str):
            from evonas.cells import library

            if library.lookup(m) is None:
                raise ConfigError(f"match_params: {m!r} is not a cell-library name")
        c = self.confirm
        if c is not None and (not isinstance(c, dict) or set(c) - {"top", "seeds", "budget"}):
            raise ConfigError(f"confirm must be a mapping with keys top, seeds, budget; got {c!r}")

    # ------------------------------------------------------------ derived settings

    def fidelity_unit(self) -> str:
        """The unit of the rung budgets: the config's `fidelity.unit`, else the unit `train` sets (epochs or
        steps), else the task's own: steps for the synthetic task, epochs for text and music."""
        if self.fidelity and self.fidelity.get("unit"):
            return self.fidelity["unit"]
        if self.train.get("epochs") is not None:
            return "epochs"
        if self.train.get("steps") is not None:
            return "steps"
        return "steps" if self.task == "synthetic" else "epochs"

    def eta(self) -> int:
        """Successive halving's reduction factor (1/eta of the cells go on to the next rung)."""
        return int((self.fidelity or {}).get("eta", 3))

    def promote(self) -> str:
        """What rung 0's promotions rank by: `loss` (its validation loss) or `curve` (the top-rung loss a
        learning-curve predictor fitted on the run's archive expects, `evonas.evolution.curves`)."""
        return str((self.fidelity or {}).get("promote", "loss"))

    def rung_budgets(self, base: dict | None = None) -> list[dict]:
        """The TrainConfig dict of each rung, lowest first (one rung, the `train` budget, without fidelity);
        `base` replaces the run's training config (tests train a fake task)."""
        base = self.train_dict() if base is None else base
        if not self.fidelity:
            return [base]
        unit = self.fidelity_unit()
        return [{**base, "steps": None, "epochs": None, "seconds": None, unit: b} for b in self.fidelity["rungs"]]

    def evaluator(self, log: Path) -> Evaluator:
        """The evaluator this run asks for (backend, device, workers, time limit, threads, GPU packing,
        allocator), its workers printing to `log`; device, backend and allocator errors are raised here."""
        return make_evaluator(self.backend, self.device, self.workers, self.eval_timeout, self.train.get("threads"),
                              self.ray_address, self.evals_per_gpu, log=log, allocator=self.allocator)

    def filter_config(self) -> FilterConfig:
        """The structural filters of this run (`defaults.SEARCH_FILTERS`, then the config's `filters`)."""
        return FilterConfig.from_dict({**defaults.SEARCH_FILTERS, **self.filters})

    def mutation_weights(self) -> dict[str, float]:
        """Positive mutation weights; `memory` only when Memory is in the operator set."""
        ops = op_set(self.ops)
        return {k: float(v) for k, v in self.mutation.items() if v > 0 and (k != "memory" or "Memory" in ops)}

    def train_dict(self) -> dict:
        """The TrainConfig of every evaluation, as a validated dict (the archive's budget)."""
        from evonas.training.train import TrainConfig

        d = {**self.train, "task": self.task, "data": self.data, "device": self.device, "seed": self.seed}
        try:
            return TrainConfig.from_dict(d).to_dict()
        except ConfigError as e:
            raise ConfigError(f"train: {e}") from None
