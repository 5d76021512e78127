"""The tracking modules' layering: plots take plain data, and no tracking module imports its way in a circle.

Why a test: issue 12 found plots.py and report.py importing each other (lazily, so nothing failed); a lazy
import inside a function comes back unnoticed, so every import statement, at any depth, is inspected.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import bib_ray.tracking

TRACKING = Path(bib_ray.tracking.__file__).parent
PACKAGE = "bib_ray.tracking"
PLAIN_DATA_MODULES = ("plots", "agreement_plots")  # draw from rows and arrays: no MLflow, no reports


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import``/``from ... import`` anywhere in the file names (relative ones resolved)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(PACKAGE.split(".")[:len(PACKAGE.split(".")) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from bib_ray.tracking import report`
    return names


def tracking_graph() -> dict[str, set[str]]:
    """Tracking module -> the tracking modules it imports."""
    modules = {p.stem for p in TRACKING.glob("*.py") if p.stem != "__init__"}
    graph = {}
    for name in modules:
        imported = imported_modules(TRACKING / f"{name}.py")
        graph[name] = {m for m in modules if f"{PACKAGE}.{m}" in imported}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a path of module names, or None."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_plot_modules_import_neither_mlflow_nor_the_reports():
    for name in PLAIN_DATA_MODULES:
        imported = imported_modules(TRACKING / f"{name}.py")
        bad = sorted(m for m in imported if m == "mlflow" or m.startswith("mlflow.")
                     or m.startswith(f"{PACKAGE}.report") or m.startswith(f"{PACKAGE}.agreement.")
                     or m == f"{PACKAGE}.agreement" or m.startswith(f"{PACKAGE}.store") or m.startswith(f"{PACKAGE}.runs"))
        assert not bad, f"{name}.py imports {bad}"


def test_no_import_cycle_among_tracking_modules():
    graph = tracking_graph()
    assert {"plots", "report", "agreement", "runs", "history", "importances"} <= set(graph)
    assert "plots" in graph["report"] and "runs" in graph["agreement"]  # the inspection finds real edges
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_plots_draw_with_mlflow_and_the_reports_blocked(tmp_path):
    """Imported in a fresh interpreter where MLflow and the reports cannot be imported, the plots still draw."""
    script = textwrap.dedent(f"""
        import sys
        for blocked in ("mlflow", "bib_ray.tracking.report", "bib_ray.tracking.agreement", "bib_ray.tracking.runs",
                        "bib_ray.tracking.store"):
            sys.modules[blocked] = None  # any import of it raises ImportError
        import numpy as np
        from bib_ray.tracking.agreement_plots import plot_agreement
        from bib_ray.tracking.plots import (TrajectoryPanel, plot_paired, plot_param_importances, plot_scores,
                                            plot_trajectories)
        out = {str(tmp_path)!r}
        line = {{"steps": np.array([1, 2, 3]), "mean": np.array([.1, .2, .3]), "min": np.array([0., .1, .2]),
                 "max": np.array([.2, .3, .4])}}
        plot_trajectories([TrajectoryPanel("tfbind8", "normalized_max", {{"fixed": line}})], out + "/t.png")
        plot_param_importances(["engine.lr", "engine.gamma"], [0.7, 0.3], out + "/i.png")
        rows = [{{"task": "t", "variant": "fixed", "lm_seed": 0, "seed": s, "metrics": {{"normalized_max": .1 * s,
                 "normalized_median": .05 * s}}}} for s in range(3)]
        summary = [{{"task": "t", "variant": "fixed", "score": "normalized", "max_metric": "normalized_max",
                    "median_metric": "normalized_median", "max_mean": .1, "max_ci_low": 0., "max_ci_high": .2,
                    "median_mean": .05, "median_ci_low": 0., "median_ci_high": .1}}]
        plot_scores(rows, summary, out + "/s.png")
        plot_paired([], out + "/p.png")
        plot_agreement([{{"task": "t", "criterion": "c", "direction": "max", "x": [1, 2], "y": [2, 1]}}], out + "/a.png")
        print("loaded:", sorted(m for m, mod in sys.modules.items() if mod is not None
                                and (m.startswith("mlflow") or m.startswith("bib_ray.tracking."))))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = proc.stdout.strip().removeprefix("loaded: ")
    assert loaded == "['bib_ray.tracking.agreement_plots', 'bib_ray.tracking.plots']", loaded
    for name in ("t", "i", "s", "p", "a"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
