"""`Surrogate`: the one object the CLI and the search use -- fit on records, score cells (lower = better),
evaluate, save and load. `make_surrogate(kind, seed)` is the factory the search imports."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from evonas.surrogate import persist
from evonas.surrogate.data import Record, as_records, digest, sort_records
from evonas.surrogate.graph import VOCAB, GraphCache, batch_graphs
from evonas.surrogate.metrics import ranking_metrics
from evonas.surrogate.model import Ensemble
from evonas.surrogate.rankers import kinds, ranker_class
from evonas.surrogate.train import FitConfig, FitReport, Normaliser, fit_model, group_targets

from evonas import defaults
from evonas.cells import Node
from evonas.errors import ConfigError, SurrogateFormatError

SCORE_BATCH = 2048
# Models per surrogate unless told otherwise: 3 TreeLSTMs rank held-out cells better than one (Kendall tau
# 0.518 vs 0.477 in benchmarks/surrogate_quality.py) and still score > 5,000 cells/s (surrogate_speed.py).
DEFAULT_ENSEMBLE = defaults.SURROGATE_ENSEMBLE  # the one definition lives in evonas.defaults
WARM_EPOCHS = 50  # default epochs of a warm-start refit (e.g. after each generation)
BUILTIN = Path(__file__).resolve().parent / "builtin"  # the pretrained model shipped with evonas (package data)


class Surrogate:
    """A ranker (or an ensemble of K) plus the target normalisation of the data it was fitted on."""

    def __init__(self, kind: str = "treelstm", seed: int = 0, ensemble: int = DEFAULT_ENSEMBLE,
                 sizes: dict[str, Any] | None = None, fit_config: FitConfig | None = None):
        if kind not in kinds():
            raise ConfigError(f"unknown surrogate model {kind!r}; known: {kinds()}")
        if not isinstance(ensemble, int) or ensemble < 1:
            raise ConfigError(f"ensemble size must be a positive integer, got {ensemble!r}")
        self.kind, self.seed, self.ensemble_size = kind, seed, ensemble
        self.fit_config = fit_config or FitConfig()
        try:
            self.model = self._build(sizes or {})
        except TypeError as e:
            raise ConfigError(f"bad sizes for surrogate model {kind!r}: {e}") from e
        self.sizes: dict[str, Any] = self.model.members[0].sizes()
        self.normaliser = Normaliser()
        self.fitted = False
        self.data_digest: str | None = None
        self.n_records = 0
        self.last_fit: FitReport | None = None
        self.member_fits: list[FitReport] = []  # one report per ensemble member, from the last fit
        self._graphs = GraphCache(self.model.form)

    def _build(self, sizes: dict[str, Any]) -> Ensemble:
        cls = ranker_class(self.kind)
        members = []
        with torch.random.fork_rng():
            for k in range(self.ensemble_size):
                torch.manual_seed(self.seed * 1009 + k)
                members.append(cls(**sizes))
        return Ensemble(members).eval()

    # ---- fitting -------------------------------------------------------------------------------------------
    def fit(self, records: Iterable[Record | dict], warm_start: bool = False, epochs: int | None = None) -> FitReport:
        """Fit on (cell, score) records (score None = failure). warm_start keeps the current weights (a refit
        after each generation, or fine-tuning a loaded model); otherwise the model starts from its seed.

        The records are sorted first, so the fit (split, batches, result) does not depend on their order; records
        of several groups (datasets) are normalised and ranked within their group."""
        recs = sort_records(as_records(records))
        if not recs:
            raise ConfigError("cannot fit a surrogate on zero records")
        if not warm_start:
            self.model = self._build(self.sizes)
        groups = [r.group for r in recs]
        targets, self.normaliser = group_targets([r.score for r in recs], groups)
        names = sorted(set(groups))
        group_ids = [names.index(g) for g in groups]
        graphs = self._graphs.many([r.cell for r in recs])
        n_epochs = epochs if epochs is not None else (WARM_EPOCHS if warm_start else self.fit_config.epochs)
        report, self.member_fits = FitReport(), []
        with torch.random.fork_rng():
            for k, member in enumerate(self.model.members):
                torch.manual_seed(self.seed * 1009 + k)
                cfg = FitConfig(**{**asdict(self.fit_config), "epochs": n_epochs, "seed": self.seed * 1009 + k})
                report = fit_model(member, graphs, targets, cfg, group_ids)
                self.member_fits.append(report)
        self.model.eval()
        self.fitted = True
        self.data_digest = digest(recs)
        self.n_records = len(recs)
        self.last_fit = report
        return report

    # ---- scoring -------------------------------------------------------------------------------------------
    def clear_cache(self) -> None:
        """Forget the cached graphs (they are rebuilt on demand)."""
        self._graphs = GraphCache(self.model.form)

    def _normalised(self, cells: Sequence[str | Node]) -> tuple[np.ndarray, np.ndarray]:
        graphs = self._graphs.many(cells)
        means, spreads = [], []
        with torch.no_grad():
            for i in range(0, len(graphs), SCORE_BATCH):
                m, s = self.model.mean_spread(batch_graphs(graphs[i:i + SCORE_BATCH], self.model.form))
                means.append(m.numpy())
                spreads.append(s.numpy())
        if not means:
            return np.zeros(0), np.zeros(0)
        mean, spread = np.concatenate(means).astype(np.float64), np.concatenate(spreads).astype(np.float64)
        mean = np.where(np.isfinite(mean), mean, self.normaliser.penalty)
        return mean, np.where(np.isfinite(spread), spread, 0.0)

    def score(self, cells: Sequence[str | Node]) -> list[float]:
        """Predicted score of each cell (lower = better; units of the training scores), in input order."""
        mean, _ = self._normalised(list(cells))
        return [float(v) for v in self.normaliser.denormalise(mean)]

    def score_with_spread(self, cells: Sequence[str | Node]) -> tuple[list[float], list[float]]:
        """Predicted scores and the ensemble's spread (standard deviation, score units; 0 for one model)."""
        mean, spread = self._normalised(list(cells))
        return ([float(v) for v in self.normaliser.denormalise(mean)],
                [float(v) for v in spread * self.normaliser.scale])

    def evaluate(self, records: Iterable[Record | dict]) -> dict[str, float | None]:
        """Kendall tau with failures tied last and over the successes alone, Spearman, top-10% precision
        (failures rank last) and RMSE on successes."""
        recs = as_records(records)
        return ranking_metrics(self.score([r.cell for r in recs]), [r.score for r in recs])

    # ---- persistence ---------------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """Everything needed to rebuild the model and read its outputs (JSON-safe)."""
        return {
            "kind": self.kind, "sizes": self.sizes, "ensemble": self.ensemble_size, "seed": self.seed,
            "vocab": list(VOCAB), "normaliser": self.normaliser.to_dict(), "fitted": self.fitted,
            "data_digest": self.data_digest, "n_records": self.n_records,
            "fit_config": asdict(self.fit_config),
            "last_fit": None if self.last_fit is None else {k: v for k, v in asdict(self.last_fit).items()
                                                             if k != "epoch_seconds"},
        }

    def save(self, folder: str | Path) -> Path:
        """Write the model folder (weights.pt state dict + meta.json)."""
        return persist.save(folder, self.model.state_dict(), self.metadata())

    def keep_members(self, k: int) -> None:
        """Keep the first k models of the ensemble (a loaded model used with a smaller ensemble size)."""
        if 1 <= k < self.ensemble_size:
            self.model = Ensemble(list(self.model.members)[:k]).eval()
            self.ensemble_size = k

    @classmethod
    def load(cls, folder: str | Path) -> Surrogate:
        """Read a model folder; any mismatch or corruption is a SurrogateFormatError (no code is run)."""
        meta = persist.load_meta(folder)
        where = Path(folder) / persist.META
        try:
            kind, sizes, k = meta["kind"], meta["sizes"], meta["ensemble"]
            norm, vocab = meta["normaliser"], meta["vocab"]
        except KeyError as e:
            raise SurrogateFormatError(f"{where}: missing field {e.args[0]!r}") from e
        if vocab != list(VOCAB):
            raise SurrogateFormatError(f"{where}: operator vocabulary differs from this evonas's {list(VOCAB)}")
        if kind not in kinds():
            raise SurrogateFormatError(f"{where}: unknown model kind {kind!r}; known: {kinds()}")
        if not isinstance(sizes, dict) or not isinstance(k, int) or not isinstance(norm, dict):
            raise SurrogateFormatError(f"{where}: bad sizes/ensemble/normaliser fields")
        names = {f.name for f in fields(FitConfig)}
        fit_cfg = {a: b for a, b in (meta.get("fit_config") or {}).items() if a in names}
        try:
            s = cls(kind, int(meta.get("seed", 0)), k, sizes, FitConfig(**fit_cfg))
            s.normaliser = Normaliser(**{a: float(norm[a]) for a in ("center", "scale", "penalty")})
        except (ConfigError, TypeError, KeyError, ValueError) as e:
            raise SurrogateFormatError(f"{where}: bad model description ({e})") from e
        state = persist.load_weights(folder)
        try:
            s.model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[0]
            path = Path(folder) / persist.WEIGHTS
            raise SurrogateFormatError(f"{path}: weights do not fit the model ({first})") from e
        s.model.eval()
        s.fitted = bool(meta.get("fitted", True))
        s.data_digest = meta.get("data_digest")
        s.n_records = int(meta.get("n_records") or 0)
        if not all(math.isfinite(v) for v in (s.normaliser.center, s.normaliser.scale, s.normaliser.penalty)):
            raise SurrogateFormatError(f"{where}: non-finite target normalisation")
        return s


def make_surrogate(kind: str = "treelstm", seed: int = 0, ensemble: int = DEFAULT_ENSEMBLE, **sizes: Any) -> Surrogate:
    """Factory for the search loop: a fresh, seeded surrogate of this kind (`fit` it before trusting `score`)."""
    return Surrogate(kind, seed=seed, ensemble=ensemble, sizes=sizes or None)


def init_path(init: str | Path) -> Path | None:
    """The model folder an init setting names: `builtin` (the shipped model), `none` (None) or a folder path."""
    if str(init) == "none":
        return None
    return BUILTIN if str(init) == "builtin" else Path(init)


def load_init(init: str | Path, seed: int = 0, ensemble: int | None = None) -> Surrogate | None:
    """The saved model to start from (None for `none`), reseeded, cut to `ensemble` models when that is fewer."""
    path = init_path(init)
    if path is None:
        return None
    model = Surrogate.load(path)
    model.seed = seed
    if ensemble is not None:
        model.keep_members(ensemble)
    return model
