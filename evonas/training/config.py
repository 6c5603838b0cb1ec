"""TrainConfig and EvalResult: the settings of one training run and its JSON-safe outcome (see COMMON.md)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from evonas.errors import ConfigError

TASKS = ("synthetic", "text", "music")
STATUSES = ("ok", "diverged", "failed")


@dataclass
class TrainConfig:
    """Everything that decides a training run; None means "the task's default" (see each task's DEFAULTS).

    Budget: training stops at the first of `epochs`, `steps`, `seconds` that is reached; when all three are
    None the task's default budget applies (a step budget with a seconds cap for `synthetic`). Same seed and
    an epoch/step budget on CPU give the same result.
    """

    task: str = "synthetic"  # synthetic | text | music
    data: str | None = None  # path for text (folder or single file) and music (JSON or pickle file)
    hidden: int | None = None
    layers: int = 1
    epochs: int | None = None
    steps: int | None = None
    seconds: float | None = None
    clock: str = "wall"  # what `seconds` measures: wall (elapsed) | cpu (this process's CPU time, for shared machines)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    optimizer: str | None = None  # adam | sgd
    lr: float | None = None
    weight_decay: float = 0.0
    clip: float | None = None  # max gradient norm; 0 turns clipping off
    dropout_emb: float = 0.0
    dropout_in: float = 0.0
    dropout_h: float = 0.0
    dropout_out: float = 0.0
    dropout_w: float = 0.0  # weight drop on the recurrent MMs (those reading h_prev/c_prev)
    tie: bool | None = None  # tie embedding and output weights (token tasks; default True)
    bptt: int | None = None
    batch_size: int | None = None
    eval_batch_size: int | None = None
    patience: int | None = None  # early stopping: validations without improvement before stopping
    eval_every: int | None = None  # validate every N steps (None: at the end of every epoch)
    level: str = "word"  # text task: word | char
    loss_ceiling: float | None = None  # training loss above this => diverged (None: max(3x uniform, 2x first loss))
    grad_ceiling: float = 1e6  # gradient norm (before clipping) above this => diverged
    test: bool = False  # also report the test loss (of the best-validation weights)
    threads: int | None = None  # torch.set_num_threads for this process (worker processes)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-safe dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build and validate; ConfigError names an unknown key or a bad value."""
        if not isinstance(d, dict):
            raise ConfigError(f"a training config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise ConfigError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> TrainConfig:
        """Raise ConfigError naming the first bad value; return self."""
        def bad(name: str, want: str) -> ConfigError:
            return ConfigError(f"{name} must be {want}, got {getattr(self, name)!r}")

        if self.task not in TASKS:
            raise bad("task", " | ".join(TASKS))
        if self.data is not None and not isinstance(self.data, str):
            raise bad("data", "a path string or null")
        for name in ("hidden", "epochs", "steps", "bptt", "batch_size", "eval_batch_size", "patience",
                     "eval_every", "threads"):
            v = getattr(self, name)
            if v is not None and not (_is_int(v) and v >= 1):
                raise bad(name, "a positive integer or null")
        if not (_is_int(self.layers) and self.layers >= 1):
            raise bad("layers", "a positive integer")
        if not _is_int(self.seed):
            raise bad("seed", "an integer")
        for name in ("seconds", "lr", "loss_ceiling"):
            v = getattr(self, name)
            if v is not None and not (_is_num(v) and v > 0 and math.isfinite(v)):
                raise bad(name, "a positive number or null")
        if not (_is_num(self.grad_ceiling) and self.grad_ceiling > 0):
            raise bad("grad_ceiling", "a positive number")
        if self.clip is not None and not (_is_num(self.clip) and self.clip >= 0 and math.isfinite(self.clip)):
            raise bad("clip", "a number >= 0 (0 = off) or null")
        if not (_is_num(self.weight_decay) and self.weight_decay >= 0):
            raise bad("weight_decay", "a number >= 0")
        for name in ("dropout_emb", "dropout_in", "dropout_h", "dropout_out", "dropout_w"):
            v = getattr(self, name)
            if not (_is_num(v) and 0 <= v < 1):
                raise bad(name, "a probability in [0, 1)")
        if self.optimizer is not None and self.optimizer not in ("adam", "sgd"):
            raise bad("optimizer", "adam | sgd or null")
        if self.clock not in ("wall", "cpu"):
            raise bad("clock", "wall | cpu")
        if self.level not in ("word", "char"):
            raise bad("level", "word | char")
        if not isinstance(self.device, str):
            raise bad("device", "auto | cpu | cuda | cuda:N")
        for name in ("test",):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "true or false")
        if self.tie is not None and not isinstance(self.tie, bool):
            raise bad("tie", "true, false or null")
        return self


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _finite_or_none(v: float | None) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return float(v)


CURVE_POINTS = 8  # windows of EvalResult.curve


def curve_points(losses: list[float], points: int = CURVE_POINTS) -> list[float]:
    """Means of `losses` over up to `points` equal consecutive windows (fewer when there are fewer losses)."""
    n = len(losses)
    k = min(points, n)
    return [sum(losses[i * n // k:(i + 1) * n // k]) / ((i + 1) * n // k - i * n // k) for i in range(k)]


@dataclass
class EvalResult:
    """The outcome of training one cell: status, losses (nats per token / per step), size and cost."""

    cell: str  # canonical text (or the text as given when it does not parse)
    status: str  # "ok" | "diverged" | "failed"
    reason: str = ""
    valid_loss: float | None = None
    valid_ppl: float | None = None
    test_loss: float | None = None
    test_ppl: float | None = None
    params: int = 0
    seconds: float = 0.0
    steps: int = 0
    epochs: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time for the evaluation (what a search's cost is counted in)
    # training-loss means over up to CURVE_POINTS equal windows of this run's steps: the learning curve a
    # promotion predictor reads (free: the losses are computed anyway)
    curve: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: NaN and infinities become None."""
        d = asdict(self)
        for k in ("valid_loss", "valid_ppl", "test_loss", "test_ppl"):
            d[k] = _finite_or_none(d[k])
        d["seconds"] = _finite_or_none(d["seconds"]) or 0.0
        d["epochs"] = _finite_or_none(d["epochs"]) or 0.0
        d["cpu_seconds"] = _finite_or_none(d["cpu_seconds"]) or 0.0
        d["curve"] = [v for v in (_finite_or_none(x) for x in d["curve"]) if v is not None]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        """Inverse of to_dict; keys this version does not know are ignored (older/newer archives)."""
        if not isinstance(d, dict) or "cell" not in d or "status" not in d:
            raise ConfigError("an EvalResult needs at least 'cell' and 'status'")
        known = {f.name for f in fields(cls)}
        r = cls(**{k: v for k, v in d.items() if k in known})
        if r.status not in STATUSES:
            raise ConfigError(f"EvalResult status must be one of {STATUSES}, got {r.status!r}")
        return r

    @property
    def loss(self) -> float:
        """Validation loss for ranking (lower is better); +inf unless the run is ok with a finite loss."""
        if self.status != "ok" or self.valid_loss is None or not math.isfinite(self.valid_loss):
            return math.inf
        return self.valid_loss
