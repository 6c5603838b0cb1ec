"""The ranker contract, the registry of ranker kinds by name, and an ensemble of K rankers (mean and spread).

A ranker maps a `GraphBatch` of cells (in its graph form, "tree" or "dag") to one predicted, normalised
score per cell (lower = better). New kinds register with `@register` and are then selectable by name in
the API, the CLI and saved files.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from evonas.surrogate.graph import GraphBatch
from torch import nn

REGISTRY: dict[str, type[Ranker]] = {}


class Ranker(nn.Module):
    """Abstract ranker: `forward(batch) -> Tensor[batch_size]`; `sizes()` are the constructor kwargs to save."""

    kind: ClassVar[str] = ""
    form: ClassVar[str] = "tree"  # which graph form the ranker reads: "tree" or "dag"

    def forward(self, batch: GraphBatch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def sizes(self) -> dict[str, Any]:  # pragma: no cover - abstract
        """Constructor keyword arguments (JSON-safe) that rebuild an identically shaped model."""
        raise NotImplementedError


def register(cls: type[Ranker]) -> type[Ranker]:
    """Class decorator: make a ranker kind selectable by its `kind` name."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__} has no kind name")
    REGISTRY[cls.kind] = cls
    return cls


class Ensemble(nn.Module):
    """K independently initialised rankers of one kind; predicts their mean, and their spread on request."""

    def __init__(self, members: list[Ranker]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if len({m.form for m in members}) != 1:
            raise ValueError("ensemble members must read the same graph form")
        self.members = nn.ModuleList(members)

    @property
    def form(self) -> str:
        return self.members[0].form

    def forward(self, batch: GraphBatch) -> torch.Tensor:
        """Mean prediction of the members."""
        return self.all_members(batch).mean(0)

    def all_members(self, batch: GraphBatch) -> torch.Tensor:
        """Predictions of every member, shape [K, batch_size]."""
        return torch.stack([m(batch) for m in self.members])

    def mean_spread(self, batch: GraphBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation over the members (spread is 0 for a single member)."""
        preds = self.all_members(batch)
        spread = preds.std(0, unbiased=False) if len(self.members) > 1 else torch.zeros_like(preds[0])
        return preds.mean(0), spread
