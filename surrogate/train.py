"""Fitting rankers on (cell, score) pairs: target normalisation, failure penalty, regression + pairwise ranking
loss, early stopping on a held-out split, fully seeded."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from evonas.surrogate.graph import CellGraph, batch_graphs
from evonas.surrogate.model import Ranker

CLIP = 4.0  # normalised success targets are clipped to [-CLIP, CLIP]; failures sit above the worst success


@dataclass
class Normaliser:
    """score -> (score - center) / scale, clipped; failures map to `penalty` (worse than every success)."""

    center: float = 0.0
    scale: float = 1.0
    penalty: float = CLIP + 1.0

    @classmethod
    def fit(cls, scores: Sequence[float | None]) -> Normaliser:
        """Median and robust spread (IQR / 1.349, else std, else 1) of the successful scores of one dataset."""
        ok = np.array([s for s in scores if s is not None], dtype=np.float64)
        if len(ok) == 0:
            return cls()
        center = float(np.median(ok))
        q75, q25 = np.percentile(ok, [75, 25])
        scale = float((q75 - q25) / 1.349)
        if not scale > 1e-12:
            scale = float(ok.std()) if ok.std() > 1e-12 else 1.0
        z = np.clip((ok - center) / scale, -CLIP, CLIP)
        return cls(center, scale, float(z.max()) + 1.0)

    def targets(self, scores: Sequence[float | None]) -> np.ndarray:
        """Normalised training targets (failures -> penalty)."""
        return np.array([self.penalty if s is None else float(np.clip((s - self.center) / self.scale, -CLIP, CLIP))
                         for s in scores], dtype=np.float32)

    def denormalise(self, z: np.ndarray) -> np.ndarray:
        """Back to the score scale of the training data."""
        return z * self.scale + self.center

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FitConfig:
    """Optimisation settings of one fit."""

    epochs: int = 150
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    rank_weight: float = 1.0  # weight of the pairwise logistic ranking term next to the MSE
    valid_fraction: float = 0.15  # held out for early stopping (none below 20 records)
    patience: int = 25  # epochs without improvement of the held-out loss before stopping
    min_epochs: int = 20  # the best held-out epoch is chosen among epochs >= min_epochs (small held-out parts
    # are noisy: a barely trained model can look best there)
    seed: int = 0


@dataclass
class FitReport:
    """What a fit did: epochs run, best held-out ranking loss and its epoch, seconds, per-epoch seconds."""

    epochs: int = 0
    best_epoch: int = 0
    best_valid_loss: float | None = None
    seconds: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)
    train_size: int = 0
    valid_size: int = 0


def group_targets(scores: Sequence[float | None], groups: Sequence[str]) -> tuple[np.ndarray, Normaliser]:
    """Normalised targets with one Normaliser per group (datasets on different scales rank within themselves),
    and the normaliser to read predictions with: the group's own for one group, else the identity on z units."""
    names = sorted(set(groups))
    norms = {g: Normaliser.fit([s for s, h in zip(scores, groups, strict=True) if h == g]) for g in names}
    out = np.zeros(len(scores), dtype=np.float32)
    for g, norm in norms.items():
        idx = [i for i, h in enumerate(groups) if h == g]
        out[idx] = norm.targets([scores[i] for i in idx])
    if len(names) == 1:
        return out, norms[names[0]]
    return out, Normaliser(0.0, 1.0, max(n.penalty for n in norms.values()))


def ranking_loss(pred: torch.Tensor, target: torch.Tensor, group: torch.Tensor | None = None) -> torch.Tensor:
    """Mean logistic loss over all pairs with different targets: softplus(pred_better - pred_worse); with
    `group` (an integer per cell) only pairs within one group count."""
    diff_t = target[:, None] - target[None, :]
    mask = diff_t < -1e-6  # i better (lower) than j
    if group is not None:
        mask = mask & (group[:, None] == group[None, :])
    if not bool(mask.any()):
        return pred.sum() * 0.0
    diff_p = pred[:, None] - pred[None, :]
    return F.softplus(diff_p[mask]).mean()


def loss_fn(pred: torch.Tensor, target: torch.Tensor, rank_weight: float,
            group: torch.Tensor | None = None) -> torch.Tensor:
    """Regression (MSE) plus weighted pairwise ranking term (within groups)."""
    return F.mse_loss(pred, target) + rank_weight * ranking_loss(pred, target, group)


def split(n: int, valid_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train / held-out index split (no held-out part for tiny datasets)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_valid = int(round(n * valid_fraction)) if n >= 20 else 0
    return perm[n_valid:], perm[:n_valid]


def _predict(model: torch.nn.Module, graphs: Sequence[CellGraph], form: str, batch_size: int = 2048) -> torch.Tensor:
    outs = [model(batch_graphs(graphs[i:i + batch_size], form)) for i in range(0, len(graphs), batch_size)]
    return torch.cat(outs) if outs else torch.zeros(0)


def fit_model(model: Ranker | torch.nn.Module, graphs: Sequence[CellGraph], targets: np.ndarray,
              config: FitConfig, groups: Sequence[int] | None = None) -> FitReport:
    """Train `model` in place on precomputed graphs and normalised targets (ranked within `groups`, an integer
    per cell, when given); restores the best held-out state."""
    form = model.form
    t0 = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    tr, va = split(len(graphs), config.valid_fraction, config.seed)
    y = torch.from_numpy(np.asarray(targets, dtype=np.float32))
    grp = None if groups is None or len(set(groups)) < 2 else torch.as_tensor(list(groups), dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    report = FitReport(train_size=len(tr), valid_size=len(va))
    best_loss, best_state, stale = math.inf, None, 0
    va_graphs = [graphs[i] for i in va]
    for epoch in range(config.epochs):
        te = time.perf_counter()
        model.train()
        order = tr[rng.permutation(len(tr))]
        for i in range(0, len(order), config.batch_size):
            idx = order[i:i + config.batch_size]
            if len(idx) < 2 and len(order) > 1:
                continue
            pred = model(batch_graphs([graphs[j] for j in idx], form))
            loss = loss_fn(pred, y[idx], config.rank_weight, None if grp is None else grp[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
        report.epochs = epoch + 1
        if len(va):
            model.eval()
            with torch.no_grad():
                # ranking loss only: the goal is the order, and a near-constant prediction can win on MSE
                vloss = float(ranking_loss(_predict(model, va_graphs, form), y[va], None if grp is None else grp[va]))
            if epoch + 1 < min(config.min_epochs, config.epochs):
                pass
            elif vloss < best_loss - 1e-5:
                best_loss, best_state, stale = vloss, copy.deepcopy(model.state_dict()), 0
                report.best_epoch, report.best_valid_loss = epoch + 1, vloss
            else:
                stale += 1
        report.epoch_seconds.append(time.perf_counter() - te)
        if len(va) and stale >= config.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    if not len(va):
        report.best_epoch = report.epochs
    model.eval()
    report.seconds = time.perf_counter() - t0
    return report
