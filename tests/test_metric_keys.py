"""The scores carry sectioned keys in MLflow (``normalized/max``) and bib-ray's names everywhere else.

The browser test (tests/test_mlflow_ui_browser.py, slow) checks what MLflow's UI makes of those keys;
these check the translation and that the store and its readers apply it, in both directions.
"""

from __future__ import annotations

import pytest

from bib_ray.tracking.history import metric_per_step
from bib_ray.tracking.metric_keys import metric_name, mlflow_key, named_metrics
from bib_ray.tracking.runs import collect_cells
from bib_ray.tracking.store import Store
from bib_ray.trial_records import HEADLINE_METRICS, SPREAD_METRICS


@pytest.mark.parametrize("name, key", [
    ("normalized_max", "normalized/max"), ("normalized_median_std", "normalized/median_std"),
    ("proxy_median", "proxy/median"), ("proxy_heldout_spearman", "proxy/heldout_spearman"),
    ("offline_proxy_mean", "offline_proxy_mean"), ("forward_loss", "forward_loss"),
    ("best.normalized_max", "best.normalized_max"), ("normalized", "normalized"), ("normalized_", "normalized_"),
])
def test_keys_translate_both_ways(name, key):
    assert mlflow_key(name) == key
    assert metric_name(key) == name


def test_every_score_has_a_short_distinct_chart_title():
    scores = [m for m in HEADLINE_METRICS + tuple(f"{m}_std" for m in SPREAD_METRICS) if m.startswith("normalized_")]
    titles = [mlflow_key(m).split("/")[-1] for m in scores]
    assert len(scores) == 5 and len(set(titles)) == 5 and max(map(len, titles)) <= 10, titles


def test_store_writes_sectioned_keys_and_readers_give_back_bib_ray_names(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'mlruns.db'}", "keys")
    parent = store.create_run("plan", {"bib_ray.kind": "ablation"})
    child = store.create_run("tfbind8/fixed/lm0/seed0", {"task": "tfbind8", "variant": "fixed", "seed": "0",
                                                          "cell": "tfbind8/fixed/lm0/seed0"}, parent_id=parent)
    for step in (1, 2):
        store.log_metrics(child, {"normalized_max": 0.5 + step, "proxy_mean": 0.1 * step, "forward_loss": 1.0}, step)
    store.log_metrics(child, {"normalized_max": 9.0, "design_seconds": 1.0}, 2)  # the final record, after step 2's
    store.set_status(child, "FINISHED")

    logged = store.client.get_run(child).data.metrics
    assert set(logged) == {"normalized/max", "proxy/mean", "forward_loss", "design_seconds"}
    assert named_metrics(logged)["normalized_max"] == 9.0

    [cell] = collect_cells(store, parent)
    assert cell["metrics"]["normalized_max"] == 9.0 and cell["metrics"]["proxy_mean"] == 0.2
    steps, values = metric_per_step(store, child, "normalized_max")
    assert steps.tolist() == [1, 2] and values.tolist() == [1.5, 2.5]


def test_runs_logged_before_the_sections_read_the_same(tmp_path):
    """A store written by an older bib-ray holds ``normalized_max``: readers take it as it is."""
    store = Store(f"sqlite:///{tmp_path / 'mlruns.db'}", "old")
    parent = store.create_run("plan", {"bib_ray.kind": "ablation"})
    child = store.create_run("c", {"task": "tfbind8", "variant": "fixed", "seed": "0", "cell": "c"}, parent_id=parent)
    from mlflow.entities import Metric

    store.client.log_batch(child, metrics=[Metric("normalized_max", 0.7, 1, 1)])
    store.set_status(child, "FINISHED")
    assert collect_cells(store, parent)[0]["metrics"]["normalized_max"] == 0.7
