"""Scatter plots of each offline-safe criterion against the oracle median, one point per trial.

Why a plot beside the correlation: a rank correlation hides where a criterion fails (a cluster of good
trials it cannot tell apart, one outlier trial it loves). One figure, one panel per (task, criterion), so
the report saves one image (matplotlib's savefig dominates its cost). Takes arrays, not MLflow runs;
matplotlib's object API on an Agg canvas (no display, no global pyplot state).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

PANEL_W, PANEL_H, DPI, COLUMNS = 3.6, 3.2, 90, 4


def plot_agreement(panels: list[dict[str, Any]], path: str | Path) -> Path:
    """One scatter panel per entry of ``panels`` (keys ``task, criterion, direction, x, y`` and optional
    ``spearman``): the criterion (x) against the oracle median (y), the oracle-best trial circled."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    count = max(1, len(panels))
    ncols = min(COLUMNS, count)
    nrows = math.ceil(count / ncols)
    fig = Figure(figsize=(PANEL_W * ncols, PANEL_H * nrows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes, panels):
        x, y = np.asarray(panel["x"], dtype=float), np.asarray(panel["y"], dtype=float)
        ax.scatter(x, y, s=16, color="tab:blue", edgecolor="black", linewidth=0.3)
        if len(x):
            best = int(np.argmax(y))
            ax.scatter([x[best]], [y[best]], s=70, facecolor="none", edgecolor="tab:red")
        rho = panel.get("spearman", math.nan)
        ax.set_title(f"{panel['task']}: rho {rho:.2f}" if math.isfinite(rho) else panel["task"], fontsize="small")
        ax.set_xlabel(panel["criterion"] + (" (min)" if panel["direction"] == "min" else ""), fontsize="small")
        ax.set_ylabel("oracle median", fontsize="small")
        ax.tick_params(labelsize="x-small")
        ax.grid(alpha=0.3)
    fig.suptitle("Each criterion against the oracle median, one point per trial (red: the oracle-best trial)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
