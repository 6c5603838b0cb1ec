"""The search's screen made from a surrogate: score candidates, refit on the archive, persist per generation.

The core (`evonas.evolution`) never imports the surrogate; it takes any object with `score(cells)` (and
optionally `learn(records)`, `on_resume(records)`). This module is that object for the learned rankers.
"""

from __future__ import annotations

import contextlib
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from evonas import defaults
from evonas.errors import ConfigError
from evonas.evolution.config import ACQUISITIONS


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread for a fit or scoring in the search's process: the workers already use the cores, and
    oversubscribed threads spin (a fit took ~8x longer with 2 threads on a loaded 2-core machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class SurrogateScreen:
    """Adapts an `evonas.surrogate` ranker to the search's screen: score, refit after each generation, persist.

    With `init` (`builtin`, the model shipped with evonas, or a model folder) the screen starts from pretrained
    weights: it ranks before its first refit, and every refit fine-tunes them on the run's archive. After
    generation g the refitted model is saved as `RUN/surrogate/gen-<g>`, so a resumed run reloads the exact
    model the interrupted run would have used instead of refitting from scratch. `acquisition` ucb scores
    mean - ucb_k * spread of the ensemble (optimistic about cells the models disagree on; lower is better).
    """

    def __init__(self, kind: str, run_dir: Path, seed: int, ensemble: int = defaults.SURROGATE_ENSEMBLE,
                 init: str = "none", acquisition: str = "mean", ucb_k: float = 1.0,
                 warm_epochs: int | None = None, sizes: dict | None = None, epochs: int | None = None):
        from evonas.surrogate.api import Surrogate, load_init
        from evonas.surrogate.train import FitConfig

        if acquisition not in ACQUISITIONS:
            raise ConfigError(f"acquisition must be one of {', '.join(ACQUISITIONS)}, got {acquisition!r}")
        self.kind, self.seed, self.acquisition, self.ucb_k = kind, seed, acquisition, float(ucb_k)
        self.warm_epochs = warm_epochs
        self.folder = Path(run_dir) / "surrogate"
        loaded = load_init(init, seed=seed, ensemble=ensemble) if init != "none" else None
        if loaded is not None and loaded.kind != kind:
            if init != "builtin":
                raise ConfigError(f"surrogate_init {init}: a {loaded.kind} model, but the run's surrogate is {kind}")
            loaded = None  # the shipped model is a TreeLSTM ensemble; other kinds start cold
        self.init = init if loaded is not None else "none"
        fit = FitConfig() if epochs is None else FitConfig(epochs=epochs, min_epochs=min(epochs, FitConfig.min_epochs))
        self.model = loaded if loaded is not None else Surrogate(kind, seed, ensemble, sizes, fit)

    def score(self, cells: list[str]) -> list[float]:
        """Predicted validation loss (lower = better), or mean - k*spread with ucb; NaN for all before the first
        fit of a cold screen (random choice)."""
        if not self.model.fitted:
            return [math.nan] * len(cells)
        with one_thread():
            if self.acquisition == "ucb":
                mean, spread = self.model.score_with_spread(cells)
                return [m - self.ucb_k * s for m, s in zip(mean, spread, strict=True)]
            return self.model.score(cells)

    def learn(self, records: list[dict]) -> None:
        """Refit on the archive (warm start from the pretrained or last weights) and save the model for this
        generation. The fit sorts the records, so the order in which results arrived does not matter."""
        if not records:
            return
        with one_thread():
            self.model.fit(records, warm_start=self.model.fitted,
                           epochs=self.warm_epochs if self.model.fitted else None)
        gen = max(r.get("generation", 0) for r in records)
        self.model.save(self.folder / f"gen-{gen:04d}")
        for old in self.folder.glob("gen-*"):
            if old.name < f"gen-{gen - 1:04d}":
                shutil.rmtree(old, ignore_errors=True)

    def on_resume(self, records: list[dict]) -> None:
        """Reload the model saved after the last finished generation; when it is missing (killed between the
        archive commit and the save), refit from the one before, as the uninterrupted run did."""
        from evonas.surrogate.api import Surrogate

        gen = max((r.get("generation", 0) for r in records), default=-1)
        saved, before = self.folder / f"gen-{gen:04d}", self.folder / f"gen-{gen - 1:04d}"
        if saved.is_dir():
            self.model = Surrogate.load(saved)
            return
        if before.is_dir():
            self.model = Surrogate.load(before)
        self.learn(records)


def make_screen(kind: str, run_dir: Path, seed: int, ensemble: int = defaults.SURROGATE_ENSEMBLE,
                init: str = "none", acquisition: str = "mean", ucb_k: float = 1.0,
                warm_epochs: int | None = None) -> Any:
    """The surrogate screen named by the config, or None; evonas.surrogate is imported only when asked for."""
    if kind == "none":
        return None
    return SurrogateScreen(kind, run_dir, seed, ensemble, init, acquisition, ucb_k, warm_epochs)
