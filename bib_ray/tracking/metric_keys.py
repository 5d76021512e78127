"""The names bib-ray's metrics carry in MLflow: the design scores in chart sections of their own.

Why a translation at all: MLflow's UI (3.x; read from the bundle it serves) lays out a run's charts, and
the experiment's chart view, by metric name. A name with a ``/`` goes to a chart section named by the
part before the last ``/``; those sections come first, in alphabetical order, ahead of the "Model
metrics" section that holds every name without one, which is sorted alphabetically; each chart is
titled by the part after the last ``/``. Logged as ``normalized_max``, ``normalized_median``, ... the
oracle's scores sat among 30 step diagnostics (``aux_*``, ``backward_loss``, ``eta``, ...) and their
five titles truncated on a chart card to the same ``normalized_m...``. Logged as ``normalized/max``,
``normalized/median``, ... (and the proxy's ``proxy/max``, ...) a run's charts open on them, under
short titles that differ.

Only MLflow sees these keys: records, Tune, ``result.json``, plans (``primary_metric``) and reports keep
``normalized_max``. The translation is made here, in both directions, and used at the store's edge only
(:class:`bib_ray.tracking.store.Store` writes, the readers in ``tracking/`` read back).
"""

from __future__ import annotations

from typing import Mapping

# Families of metrics with a chart section each, in MLflow's order (sections sort by name).
SECTIONS: tuple[str, ...] = ("normalized", "proxy")


def mlflow_key(name: str) -> str:
    """The MLflow key of a bib-ray metric: ``normalized_max`` -> ``normalized/max``; others unchanged."""
    for section in SECTIONS:
        if name.startswith(section + "_") and len(name) > len(section) + 1:
            return f"{section}/{name[len(section) + 1:]}"
    return name


def metric_name(key: str) -> str:
    """The bib-ray name of an MLflow key (the inverse of :func:`mlflow_key`)."""
    for section in SECTIONS:
        if key.startswith(section + "/") and len(key) > len(section) + 1:
            return f"{section}_{key[len(section) + 1:]}"
    return key


def named_metrics(logged: Mapping[str, float]) -> dict[str, float]:
    """A run's ``data.metrics`` under bib-ray's names."""
    return {metric_name(key): value for key, value in logged.items()}
