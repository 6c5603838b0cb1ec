"""Matplotlib figures of a run and of the benchmarks, rendered off-screen (Agg) to PNG bytes.

Every function takes plain numbers (no archive access) so the report and the benchmarks share them and
tests can call them on hand-made data.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import MaxNLocator  # noqa: E402

Pair = tuple[float, float]


def to_png(fig) -> bytes:
    """Render a figure to PNG bytes and close it (no window, no global state left behind)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def save_png(data: bytes, path: str | Path) -> Path:
    """Write PNG bytes to a file (creating its folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _tau_axes(ax, title: str) -> None:
    """The frame of a Kendall-tau-per-generation panel: the full [-1, 1] range, labels, title, grid."""
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("generation")
    ax.set_ylabel("Kendall tau")
    ax.set_title(title)
    ax.grid(alpha=0.3)


def best_so_far_plot(curve: Sequence[float | None], seeds: dict[str, float | None], title: str = "") -> bytes:
    """Best validation loss against the number of trained cells, each seed cell's loss as a horizontal line."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    xs = [i + 1 for i, v in enumerate(curve) if _finite(v)]
    ys = [v for v in curve if _finite(v)]
    if xs:
        ax.step(xs, ys, where="post", color="#1f4e9c", lw=2, label="best so far (search)")
    cmap = plt.get_cmap("tab10")
    for i, (name, loss) in enumerate(sorted(seeds.items())):
        if _finite(loss):
            ax.axhline(loss, ls="--", lw=1.2, color=cmap((i + 1) % 10), label=f"seed {name}: {loss:.4f}")
        else:
            ax.plot([], [], ls=":", color=cmap((i + 1) % 10), label=f"seed {name}: no result")
    ax.set_xlabel("trained cells")
    ax.set_ylabel("validation loss")
    ax.set_title(title or "Best validation loss so far")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return to_png(fig)


def prediction_plot(pairs: dict[int, list[Pair]], taus: dict[int, float | None]) -> bytes:
    """Left: surrogate prediction against measured loss, coloured by generation. Right: Kendall tau per generation."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    cmap = plt.get_cmap("viridis")
    gens = sorted(pairs)
    for i, g in enumerate(gens):
        ps = [(p, m) for p, m in pairs[g] if _finite(p) and _finite(m)]
        if ps:
            ax1.scatter([m for _, m in ps], [p for p, _ in ps], s=18, color=cmap(i / max(1, len(gens) - 1)),
                        label=f"gen {g}")
    allv = [v for g in gens for pm in pairs[g] for v in pm if _finite(v)]
    if allv:
        lo, hi = min(allv), max(allv)
        ax1.plot([lo, hi], [lo, hi], color="grey", lw=1, ls=":")
        ax1.legend(fontsize=7, ncol=2)
    else:
        ax1.text(0.5, 0.5, "no per-cell predictions recorded", ha="center", va="center", transform=ax1.transAxes)
    ax1.set_xlabel("measured validation loss")
    ax1.set_ylabel("surrogate prediction")
    ax1.set_title("Prediction vs measurement")
    ax1.grid(alpha=0.3)
    tg = sorted(g for g, t in taus.items() if _finite(t))
    if tg:
        ax2.plot(tg, [taus[g] for g in tg], marker="o", color="#9c1f4e")
        ax2.axhline(0, color="grey", lw=1)
        ax2.set_xlim(min(tg) - 0.5, max(tg) + 0.5)
        if len(tg) <= 15:
            ax2.set_xticks(tg)
        else:
            ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        ax2.text(0.5, 0.5, "no Kendall tau recorded", ha="center", va="center", transform=ax2.transAxes)
    _tau_axes(ax2, "Screen quality per generation")
    fig.tight_layout()
    return to_png(fig)


def operator_plot(freq: dict[int, dict[str, float]]) -> bytes:
    """Share of each operator among all operator nodes of the cells trained in each generation (stacked)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    gens = sorted(freq)
    ops = sorted({op for g in gens for op in freq[g]})
    if gens and ops:
        ys = [[freq[g].get(op, 0.0) for g in gens] for op in ops]
        cmap = plt.get_cmap("tab20")
        ax.stackplot(gens, ys, labels=ops, colors=[cmap(i % 20) for i in range(len(ops))], alpha=0.9)
        ax.set_xlim(min(gens), max(gens) if len(gens) > 1 else min(gens) + 1)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_ylim(0, 1)
    ax.set_xlabel("generation")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("share of operator nodes")
    ax.set_title("Operator frequencies over generations")
    return to_png(fig)


def failures_plot(counts: Sequence[tuple[str, int]]) -> bytes:
    """Horizontal bars: number of failed or diverged evaluations per reason."""
    fig, ax = plt.subplots(figsize=(7.5, 0.6 + 0.4 * max(1, len(counts))))
    if counts:
        labels = [r if len(r) <= 60 else r[:57] + "..." for r, _ in counts][::-1]
        ax.barh(labels, [n for _, n in counts][::-1], color="#c0504d")
        ax.tick_params(axis="y", labelsize=8)
    else:
        ax.text(0.5, 0.5, "no failures", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("evaluations")
    ax.set_title("Failures by reason")
    return to_png(fig)


def curves_plot(curves: dict[str, list[list[float | None]]], title: str, budget: int) -> bytes:
    """Best-so-far curves per method: the mean over seeds as a line, min..max over seeds as a band."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    cmap = plt.get_cmap("tab10")
    for i, (label, runs) in enumerate(curves.items()):
        xs, mean, lo, hi = [], [], [], []
        for t in range(budget):
            vals = [r[t] for r in runs if t < len(r) and _finite(r[t])]
            if len(vals) == len(runs) and vals:  # only where every seed has a result
                xs.append(t + 1)
                mean.append(sum(vals) / len(vals))
                lo.append(min(vals))
                hi.append(max(vals))
        if xs:
            ax.plot(xs, mean, color=cmap(i), lw=2, label=f"{label} (n={len(runs)})")
            ax.fill_between(xs, lo, hi, color=cmap(i), alpha=0.18)
    ax.set_xlabel("trained cells")
    ax.set_ylabel("best validation loss so far")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return to_png(fig)


def rung_tau_plot(taus: dict[int, list[float | None]]) -> bytes:
    """Proxy health: Kendall tau between consecutive rungs (over the promoted cells) per generation."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    gens = sorted(taus)
    n = max((len(v) for v in taus.values()), default=0)
    for k in range(n):
        pts = [(g, taus[g][k]) for g in gens if k < len(taus[g]) and _finite(taus[g][k])]
        if pts:
            ax.plot([g for g, _ in pts], [t for _, t in pts], marker="o", label=f"rung {k} -> {k + 1}")
    if n:
        ax.legend(fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        ax.text(0.5, 0.5, "one rung: no rung-to-rung tau", ha="center", va="center", transform=ax.transAxes)
    ax.axhline(0, color="grey", lw=1)
    _tau_axes(ax, "Does a low rung rank cells like the next one?")
    fig.tight_layout()
    return to_png(fig)
