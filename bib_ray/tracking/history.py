"""A metric's per-step values from its MLflow history, apart from the final record logged beside them.

Why this needs care: a trial logs one record per design step, and at the end a final record (means over
seeds) under the same metric names. Today the final record sits at step T+1, a step no design step has;
in the trial protocol of issue 12 it sits at the last step T, logged after that step's own record. A
trajectory must show the design steps only, in both layouts: an extra point at T+1, or the seed mean in
place of step T's value, would misdraw the curve.

The rule, for both: order a metric's entries by (step, timestamp) and keep the first entry of each step
(a retried step keeps what was logged first). The final record is recognised by ``design_seconds``,
which only it carries: at a step where ``design_seconds`` was logged, entries logged before it are that
step's own record; when the only entry there was logged with the final record, the step exists only in
the final record (today's T+1) and is left out.
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol

import numpy as np

from bib_ray.tracking.metric_keys import mlflow_key
from bib_ray.tracking.store import retrying

FINAL_METRIC = "design_seconds"  # logged with a trial's final record only


class MetricEntry(Protocol):
    """What MLflow's ``get_metric_history`` returns per entry (``mlflow.entities.Metric``) and tests build."""

    step: int
    timestamp: int
    value: float


def per_step_values(history: Iterable[MetricEntry], final_history: Iterable[MetricEntry] = ()
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Steps (ascending) and the first value logged at each, final-record-only steps left out.

    ``final_history`` is the history of :data:`FINAL_METRIC` (the final record's steps and times). Ties in
    timestamp keep the order ``history`` came in.
    """
    final_at: dict[int, int] = {}
    for entry in final_history:
        step = int(entry.step)
        final_at[step] = min(int(entry.timestamp), final_at.get(step, int(entry.timestamp)))
    by_step: dict[int, list[tuple[int, int, float]]] = {}
    for order, entry in enumerate(history):
        by_step.setdefault(int(entry.step), []).append((int(entry.timestamp), order, float(entry.value)))
    kept: dict[int, float] = {}
    for step, entries in by_step.items():
        entries.sort()
        if step in final_at:
            own = [e for e in entries if e[0] < final_at[step]]
            if own:
                entries = own
            elif len(entries) < 2:
                continue  # the final record alone: not a design step
        kept[step] = entries[0][2]
    steps = sorted(kept)
    return np.array(steps, dtype=int), np.array([kept[s] for s in steps], dtype=float)


def metric_per_step(client: Any, run_id: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`per_step_values` of a run's metric (bib-ray's name), read from MLflow (``client``: a client or
    a Store)."""
    client = getattr(client, "client", client)
    history = retrying(lambda: client.get_metric_history(run_id, mlflow_key(metric)))
    final_history = retrying(lambda: client.get_metric_history(run_id, FINAL_METRIC))
    return per_step_values(history, final_history)


def seed_band(series: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """``steps`` and the ``mean``, ``min`` and ``max`` over seeds at each step, from (steps, values) per seed.

    A step some seed lacks (a shorter run) is summarised over the seeds that have it.
    """
    per_step: dict[int, list[float]] = {}
    for steps, values in series:
        for step, value in zip(steps, values):
            per_step.setdefault(int(step), []).append(float(value))
    steps = np.array(sorted(per_step), dtype=int)
    return {"steps": steps,
            "mean": np.array([np.mean(per_step[s]) for s in steps], dtype=float),
            "min": np.array([np.min(per_step[s]) for s in steps], dtype=float),
            "max": np.array([np.max(per_step[s]) for s in steps], dtype=float)}
