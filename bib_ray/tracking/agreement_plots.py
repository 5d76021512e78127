"""Scatter plots of one offline-safe criterion against the oracle median, one point per trial.

Why a plot beside the correlation: a rank correlation hides where a criterion fails (a cluster of good
trials it cannot tell apart, one outlier trial it loves). Takes arrays, not MLflow runs, so it can be
reused on any rows; matplotlib's object API on an Agg canvas (no display, no global pyplot state).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

PANEL_W, PANEL_H, DPI = 4.6, 4.0, 100


def plot_agreement(points: dict[str, tuple[np.ndarray, np.ndarray]], criterion: str, direction: str,
                   stats: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """One panel per task: ``criterion`` (x) against the oracle median (y), one dot per trial; the title
    carries the Spearman correlation (oriented, see bib_ray.tracking.agreement) when given in ``stats``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = list(points) or ["(no trials)"]
    fig = Figure(figsize=(PANEL_W * len(tasks), PANEL_H), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(tasks), squeeze=False).ravel()
    for ax, task in zip(axes, tasks):
        x, y = points.get(task, (np.array([]), np.array([])))
        ax.scatter(x, y, s=22, color="tab:blue", edgecolor="black", linewidth=0.4)
        if len(x):
            best = int(np.argmax(y))
            ax.scatter([x[best]], [y[best]], s=80, facecolor="none", edgecolor="tab:red", label="oracle-best trial")
            ax.legend(fontsize="small", loc="lower right")
        rho = stats.get(task, {}).get("spearman_median", math.nan)
        title = f"{task}: Spearman {rho:.2f}" if math.isfinite(rho) else task
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel(criterion + (" (lower is better)" if direction == "min" else ""))
        ax.set_ylabel("oracle median (normalized)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{criterion} against the oracle, one point per trial")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
