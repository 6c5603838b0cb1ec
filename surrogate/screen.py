"""The search's screen made from a surrogate: score candidates, refit on the archive, persist per generation.

The core (`evonas.evolution`) never imports the surrogate; it takes any object with `score(cells)` (and
optionally `learn(records)`, `on_resume(records)`). This module is that object for the learned rankers.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from evonas import defaults


class SurrogateScreen:
    """Adapts an `evonas.surrogate` ranker to the search's screen: score, refit after each generation, persist.

    After generation g the refitted model is saved as `RUN/surrogate/gen-<g>`, so a resumed run reloads the
    exact model the interrupted run would have used instead of refitting from scratch.
    """

    def __init__(self, kind: str, run_dir: Path, seed: int, ensemble: int = defaults.SURROGATE_ENSEMBLE):
        from evonas.surrogate.api import make_surrogate

        self.kind, self.seed = kind, seed
        self.folder = Path(run_dir) / "surrogate"
        self.model = make_surrogate(kind, seed=seed, ensemble=ensemble)

    def score(self, cells: list[str]) -> list[float]:
        """Predicted validation loss (lower = better); NaN for all before the first fit (random choice)."""
        if not self.model.fitted:
            return [math.nan] * len(cells)
        return self.model.score(cells)

    def learn(self, records: list[dict]) -> None:
        """Refit on the archive (warm start after the first fit) and save the model for this generation."""
        if not records:
            return
        self.model.fit(records, warm_start=self.model.fitted)
        gen = max(r.get("generation", 0) for r in records)
        self.model.save(self.folder / f"gen-{gen:04d}")
        for old in self.folder.glob("gen-*"):
            if old.name < f"gen-{gen - 1:04d}":
                shutil.rmtree(old, ignore_errors=True)

    def on_resume(self, records: list[dict]) -> None:
        """Reload the model saved after the last finished generation (refit when it is missing)."""
        from evonas.surrogate.api import Surrogate

        gen = max((r.get("generation", 0) for r in records), default=-1)
        saved = self.folder / f"gen-{gen:04d}"
        if saved.is_dir():
            self.model = Surrogate.load(saved)
        else:
            self.learn(records)


def make_screen(kind: str, run_dir: Path, seed: int, ensemble: int = defaults.SURROGATE_ENSEMBLE) -> Any:
    """The surrogate screen named by the config, or None; evonas.surrogate is imported only when asked for."""
    if kind == "none":
        return None
    return SurrogateScreen(kind, run_dir, seed, ensemble)
