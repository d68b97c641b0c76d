"""The coverage reports' figures, as PNG bytes (matplotlib's object API, no pyplot state: safe in workers/threads)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

_COVERAGE_CMAP = "RdYlGn"  # red = gap, green = covered


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _shorten(text: str, width: int = 28) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def coverage_heatmap(
    fractions: Sequence[Sequence[float | None]], counts: Sequence[Sequence[str]], rows: Sequence[str], cols: Sequence[str],
    *, title: str, xlabel: str,
) -> bytes:
    """Category × value grid of coverage fractions, each cell annotated with `covered/total`."""
    data = np.array([[np.nan if v is None else v for v in row] for row in fractions], dtype=float).reshape(len(rows), len(cols))
    fig = Figure(figsize=(max(5.0, 1.0 + 0.75 * len(cols)), max(2.5, 1.0 + 0.45 * len(rows))))
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(data), cmap=_COVERAGE_CMAP, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(cols)), [_shorten(c, 14) for c in cols], rotation=45 if len(cols) > 6 else 0, ha="right" if len(cols) > 6 else "center")
    ax.set_yticks(range(len(rows)), [_shorten(r) for r in rows])
    for i in range(len(rows)):
        for j in range(len(cols)):
            dark = not np.isnan(data[i, j]) and (data[i, j] < 0.15 or data[i, j] > 0.85)
            ax.text(j, i, counts[i][j], ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of features covered")
    return _png(fig)


def category_bars(categories: Sequence[str], covered: Sequence[int], totals: Sequence[int], *, title: str) -> bytes:
    """Per category, stacked bars of covered vs uncovered (gap) features."""
    y = np.arange(len(categories))
    cov = np.array(covered, dtype=float)
    gaps = np.array(totals, dtype=float) - cov
    fig = Figure(figsize=(7.0, max(2.2, 0.9 + 0.4 * len(categories))))
    ax = fig.subplots()
    ax.barh(y, cov, color="#3a9d5d", label="covered")
    ax.barh(y, gaps, left=cov, color="#d9534f", label="gap")
    for i, (c, t) in enumerate(zip(covered, totals)):
        ax.text(t, i, f" {c}/{t}", va="center", fontsize=8)
    ax.set_yticks(y, [_shorten(c) for c in categories])
    ax.invert_yaxis()
    ax.set_xlabel("inventory features")
    ax.set_xlim(0, max(1, max(totals, default=1)) * 1.15)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return _png(fig)


def overlap_heatmap(matrix: Sequence[Sequence[float | None]], names: Sequence[str]) -> bytes:
    """The asymmetric overlap matrix: row i, column j = share of dataset i's footprint found in dataset j."""
    data = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float).reshape(len(names), len(names))
    size = max(4.0, 1.2 + 0.8 * len(names))
    fig = Figure(figsize=(size + 1.2, size))
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=0.0, vmax=1.0)
    short = [_shorten(n, 16) for n in names]
    ax.set_xticks(range(len(names)), short, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), short)
    for i in range(len(names)):
        for j in range(len(names)):
            value = data[i, j]
            label = "–" if np.isnan(value) else f"{value:.2f}"
            ax.text(j, i, label, ha="center", va="center", fontsize=9, color="white" if not np.isnan(value) and value < 0.6 else "black")
    ax.set_xlabel("j (reference footprint)")
    ax.set_ylabel("i (dataset)")
    ax.set_title("overlap M[i][j] = |F(i) ∩ F(j)| / |F(i)|")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _png(fig)


def coverage_curves(curves: dict[str, np.ndarray], redundancy: dict[str, float | None]) -> bytes:
    """Normalised feature-coverage curves c(n)/|F(D)| against n/N, one per dataset, with each one's redundancy R."""
    fig = Figure(figsize=(7.0, 4.6))
    ax = fig.subplots()
    for name, curve in curves.items():
        n = curve.size - 1
        if n < 1 or curve[-1] <= 0:
            continue
        x = np.arange(n + 1) / n
        r = redundancy.get(name)
        ax.plot(x, curve / curve[-1], label=f"{_shorten(name, 24)} (R={r:.3f})" if r is not None else name)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1, label="linear (no redundancy)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("fraction of documents n/N")
    ax.set_ylabel("fraction of footprint c(n)/|F(D)|")
    ax.set_title("feature-coverage curves over random subsets")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)
