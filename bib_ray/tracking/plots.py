"""Report plots: final scores per variant (every seed shown), paired differences, score trajectories over
steps, and a search's parameter importances.

Why plain data in, PNG out: every function here takes rows (dicts), small dataclasses and numpy arrays
that the reports gathered from MLflow, so a plot can be drawn, tested and reused without a tracking store,
and this module imports neither MLflow nor the reports (a test checks it). Why matplotlib's object API
with the Agg canvas (not ``pyplot``): no display is needed or touched, no global backend is switched under
a notebook or a Ray worker, and figures are freed when they go out of scope instead of piling up in
pyplot's registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

PANEL_W, PANEL_H, DPI = 5.0, 4.2, 110
MAX_COLUMNS = 3


def _figure(panels: int, height: float = PANEL_H, columns: int = MAX_COLUMNS):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = max(1, min(panels, columns))
    nrows = max(1, math.ceil(panels / ncols))
    fig = Figure(figsize=(PANEL_W * ncols, height * nrows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:max(panels, 1)]


def _by_task(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["task"], []).append(row)
    return {task: groups[task] for task in sorted(groups)}


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


LM_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def plot_scores(rows: list[dict[str, Any]], summary: list[dict[str, Any]], path: str | Path) -> Path:
    """One row of panels per task (max, median): every replicate as a point, one marker per LM seed,
    and each variant's mean with its 95% interval (from ``summary``).

    ``rows`` are the finished cells (``task, variant, lm_seed, metrics``); ``summary`` the report's entries,
    one per (task, variant) in table order, each naming its score source (``score``) and the metric behind
    each column (``max_metric``, ``median_metric``): the panels follow that order and those metrics.

    Why points and intervals, not bars: with a handful of replicates the values themselves show the spread
    and which LM a outlying replicate came from; the interval is the one the table prints. The legend
    sits outside the axes, so it never covers data. Tasks without an oracle plot proxy scores, and their
    axis says so.
    """
    tasks = _by_task(rows)
    columns = ("max", "median")
    fig, axes = _figure(max(1, len(tasks) * len(columns)), columns=len(columns))
    lm_seeds = sorted({r["lm_seed"] for r in rows}, key=lambda s: (s is None, str(s)))
    markers = {seed: LM_MARKERS[i % len(LM_MARKERS)] for i, seed in enumerate(lm_seeds)}
    by_key = {(e["task"], e["variant"]): e for e in summary}
    for t, (task, task_rows) in enumerate(tasks.items()):
        entries = [e for e in summary if e["task"] == task]
        source = entries[0]["score"] if entries else "proxy"
        labels = [e["variant"] for e in entries]
        x = np.arange(len(labels))
        for c, column in enumerate(columns):
            ax = axes[t * len(columns) + c]
            metric = entries[0][f"{column}_metric"] if entries else column
            for i, label in enumerate(labels):
                mine = [r for r in task_rows if r["variant"] == label and metric in r["metrics"]]
                for j, seed in enumerate(lm_seeds):
                    values = [r["metrics"][metric] for r in mine if r["lm_seed"] == seed]
                    if not values:
                        continue
                    offset = (j - (len(lm_seeds) - 1) / 2) * 0.12
                    ax.scatter(np.full(len(values), x[i] + offset), values, s=16, marker=markers[seed],
                               facecolors="none", edgecolors="0.35", linewidths=0.8, zorder=2,
                               label=("LM " + ("given" if seed is None else f"seed {seed}")) if i == 0 else None)
                entry = by_key.get((task, label))
                if entry is not None and not math.isnan(entry[f"{column}_mean"]):
                    low, high = entry[f"{column}_ci_low"], entry[f"{column}_ci_high"]
                    mean = entry[f"{column}_mean"]
                    if not math.isnan(low):
                        ax.errorbar(x[i], mean, yerr=[[mean - low], [high - mean]], fmt="none", ecolor="tab:red",
                                    elinewidth=2, capsize=4, zorder=3, label="95% interval" if i == 0 else None)
                    ax.scatter([x[i]], [mean], color="tab:red", marker="_", s=200, zorder=4,
                               label="mean" if i == 0 else None)
            ax.set_xticks(x, labels, rotation=30, ha="right")
            ax.set_title(f"{task}: {column}")
            ax.set_ylabel("normalized score" if source == "normalized" else "proxy score (no oracle)")
            ax.grid(axis="y", alpha=0.3)
    if not tasks:
        axes[0].text(0.5, 0.5, "no finished cells", ha="center", va="center")
    else:
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncols=min(6, len(names)), fontsize="small")
    fig.suptitle("Final design scores per variant: each replicate, mean and 95% interval")
    return _save(fig, path)


def plot_paired(paired_rows: list[dict[str, Any]], path: str | Path, column: str = "median") -> Path:
    """Paired differences to the reference per task: each variant's mean difference with its 95% interval,
    a line at 0; one panel per task, so a ranking can be compared across tasks at a glance."""
    tasks = _by_task(paired_rows)
    fig, axes = _figure(len(tasks))
    for ax, (task, task_rows) in zip(axes, tasks.items()):
        labels = [r["variant"] for r in task_rows]
        y = np.arange(len(labels))
        diffs = np.array([r[f"{column}_diff"] for r in task_rows])
        low = np.array([r[f"{column}_ci_low"] for r in task_rows])
        high = np.array([r[f"{column}_ci_high"] for r in task_rows])
        colors = ["tab:green" if r[f"{column}_excludes_zero"] and r[f"{column}_diff"] > 0 else
                  "tab:red" if r[f"{column}_excludes_zero"] else "0.4" for r in task_rows]
        for i in range(len(labels)):
            if not (math.isnan(low[i]) or math.isnan(high[i])):
                ax.errorbar(diffs[i], y[i], xerr=[[diffs[i] - low[i]], [high[i] - diffs[i]]], fmt="none",
                            ecolor=colors[i], elinewidth=2, capsize=3)
        ax.scatter(diffs, y, c=colors, zorder=3)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(y, labels)
        ax.set_title(task)
        ax.set_xlabel(f"Δ {column} vs {task_rows[0]['reference']} (95% interval)")
        ax.grid(axis="x", alpha=0.3)
    if not tasks:
        axes[0].text(0.5, 0.5, "no paired differences", ha="center", va="center")
    fig.suptitle(f"Paired differences of the {column} (green/red: interval excludes 0)")
    return _save(fig, path)


@dataclass(frozen=True)
class TrajectoryPanel:
    """One task's trajectories: per variant label (in legend order), a dict of arrays ``steps`` and the
    ``mean``, ``min`` and ``max`` over seeds at each step; ``metric`` names the y axis, ``proxy`` says the
    task has no oracle."""

    task: str
    metric: str
    lines: dict[str, dict[str, np.ndarray]]
    proxy: bool = False


def plot_trajectories(panels: Sequence[TrajectoryPanel], path: str | Path) -> Path:
    """One panel per task: the best design score against design step per variant.

    The line is the mean over seeds, the shaded band the min-max over seeds. A variant keeps its colour
    across panels.
    """
    from matplotlib.ticker import MaxNLocator

    fig, axes = _figure(len(panels))
    colors: dict[str, str] = {}
    for ax, panel in zip(axes, panels):
        for label, data in panel.lines.items():
            if not np.asarray(data["steps"]).size:
                continue
            color = colors.setdefault(label, f"C{len(colors) % 10}")
            ax.plot(data["steps"], data["mean"], color=color, label=label)
            ax.fill_between(data["steps"], data["min"], data["max"], color=color, alpha=0.2, linewidth=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(panel.task)
        ax.set_xlabel("design step")
        ax.set_ylabel(panel.metric + (" (no oracle)" if panel.proxy else ""))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    if not panels:
        axes[0].text(0.5, 0.5, "no finished cells", ha="center", va="center")
    fig.suptitle("Best design score per step\n(mean over seeds, band: min to max)")
    return _save(fig, path)


def plot_param_importances(names: Sequence[str], values: Sequence[float], path: str | Path,
                           title: str = "Parameter importances") -> Path:
    """A horizontal bar per parameter, the most important on top, its value printed beside the bar.

    ``names`` and ``values`` are in any order; they are drawn sorted by value.
    """
    order = sorted(range(len(names)), key=lambda i: (-float(values[i]), str(names[i])))
    labels = [str(names[i]) for i in order][::-1]  # barh draws bottom-up: the largest last = on top
    widths = np.array([float(values[i]) for i in order][::-1], dtype=float)
    fig, axes = _figure(1, height=max(2.0, 0.45 * len(labels) + 1.2), columns=1)
    ax = axes[0]
    fig.set_figwidth(PANEL_W * 1.4)
    if labels:
        y = np.arange(len(labels))
        ax.barh(y, widths, color="tab:blue")
        ax.set_yticks(y, labels)
        for yi, width in zip(y, widths):
            ax.text(width, yi, f" {width:.3f}", va="center", fontsize="small")
        ax.set_xlim(0, max(1e-12, float(widths.max())) * 1.18)
    else:
        ax.text(0.5, 0.5, "no parameters", ha="center", va="center")
    ax.set_xlabel("importance (main effect on the objective's variance, normalised to sum to 1)")
    ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)
