"""Per-step values of a metric apart from the final record, in today's layout (final at step T+1) and in
issue 12's (final at the last step T, logged after that step's own record).

Why: a trajectory that takes the final record (seed means) for step T, or draws T+1 as a design step,
looks plausible and is wrong; only known numbers catch it.
"""

from __future__ import annotations

import random
import time
from types import SimpleNamespace

import numpy as np
import pytest

from bib_ray.tracking.history import FINAL_METRIC, per_step_values, seed_band
from bib_ray.tracking.report import build_report, collect_cells, trajectory_data, trajectory_panels

from ablation_fixtures import (STEPS, assert_trajectories_are_the_steps, cell_values, local_store,
                               make_synthetic_ablation, parse_label)

FINAL_SHIFT = 0.001  # final record = the last step's values + this, as make_synthetic_ablation logs it


def entry(step: int, timestamp: int, value: float) -> SimpleNamespace:
    return SimpleNamespace(step=step, timestamp=timestamp, value=value)


def test_today_final_at_t_plus_1_is_left_out():
    history = [entry(s, 100 + s, float(s)) for s in range(1, 6)] + [entry(6, 200, 99.0)]
    steps, values = per_step_values(history, [entry(6, 200, 1.5)])
    assert steps.tolist() == [1, 2, 3, 4, 5] and values.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_new_final_at_last_step_keeps_that_steps_own_value():
    history = [entry(s, 100 + s, float(s)) for s in range(1, 6)] + [entry(5, 200, 99.0)]
    random.Random(0).shuffle(history)  # the order MLflow returns is not relied on
    steps, values = per_step_values(history, [entry(5, 200, 1.5)])
    assert steps.tolist() == [1, 2, 3, 4, 5] and values.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_final_in_the_same_millisecond_keeps_the_first_entry_returned():
    history = [entry(1, 100, 1.0), entry(2, 200, 2.0), entry(2, 200, 99.0)]
    steps, values = per_step_values(history, [entry(2, 200, 1.5)])
    assert steps.tolist() == [1, 2] and values.tolist() == [1.0, 2.0]


def test_a_retried_step_keeps_its_first_value_and_no_final_keeps_every_step():
    history = [entry(1, 100, 1.0), entry(2, 300, 2.5), entry(2, 200, 2.0), entry(3, 400, 3.0)]
    steps, values = per_step_values(history)  # no final record: a trial stopped early
    assert steps.tolist() == [1, 2, 3] and values.tolist() == [1.0, 2.0, 3.0]
    single = per_step_values([entry(1, 100, 0.7)])
    assert single[0].tolist() == [1] and single[1].tolist() == [0.7]


def test_seed_band_summarises_the_seeds_each_step_has():
    band = seed_band([(np.array([1, 2]), np.array([1.0, 3.0])), (np.array([1]), np.array([2.0]))])
    assert band["steps"].tolist() == [1, 2]
    assert band["mean"].tolist() == [1.5, 3.0] and band["min"].tolist() == [1.0, 3.0]
    assert band["max"].tolist() == [2.0, 3.0]


# --- on MLflow stores, one per layout -------------------------------------------------------------------------
VARIANTS = ("fixed", "learned")
SEEDS = (0, 1)


def make_ablation_final_at_last_step(store, name: str) -> str:
    """As make_synthetic_ablation, but each cell's final record is logged at step T, after step T's record."""
    parent = store.create_run(name, {"bib_ray.kind": "ablation", "bib_ray.name": name})
    for v, label in enumerate(VARIANTS):
        variant, eta = parse_label(label)
        for seed in SEEDS:
            cell = f"tfbind8-{label}-s{seed}"
            run = store.create_run(cell, {"task": "tfbind8", "variant": variant, "adaptive_eta": str(eta).lower(),
                                          "seed": str(seed), "cell": cell, "cell_key": cell}, parent)
            store.log_metric_rows(run, [(step, cell_values(0, v, seed, step)) for step in range(1, STEPS + 1)])
            time.sleep(0.005)  # the final record is a later write
            final = {k: val + FINAL_SHIFT for k, val in cell_values(0, v, seed, STEPS).items()}
            store.log_metrics(run, {**final, FINAL_METRIC: 1.5}, STEPS)
            store.set_status(run, "FINISHED")
    store.set_status(parent, "FINISHED")
    return parent


@pytest.fixture(scope="module", params=["final_at_t_plus_1", "final_at_last_step"])
def layout(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    store = local_store(f"sqlite:///{root / 'mlruns.db'}", request.param, root / "artifacts")
    if request.param == "final_at_t_plus_1":
        parent = make_synthetic_ablation(store, request.param, list(VARIANTS), list(SEEDS), failed=False)
    else:
        parent = make_ablation_final_at_last_step(store, request.param)
    return store, parent, root


def test_trajectories_are_the_design_steps_in_both_layouts(layout):
    store, parent, _ = layout
    rows = collect_cells(store, parent)
    data = trajectory_data(store, rows, "normalized_max")
    assert list(data) == list(VARIANTS)
    assert_trajectories_are_the_steps(data, VARIANTS, SEEDS)
    (panel,) = trajectory_panels(store, rows)
    assert panel.task == "tfbind8" and panel.metric == "normalized_max" and not panel.proxy
    np.testing.assert_array_equal(panel.lines["learned"]["mean"], data["learned"]["mean"])


def test_the_table_reads_the_final_record_in_both_layouts(layout):
    store, parent, root = layout
    report = build_report(store, parent, root / "report")
    for entry in report.summary:
        v = VARIANTS.index(entry["variant"])
        finals = [cell_values(0, v, s, STEPS)["normalized_max"] + FINAL_SHIFT for s in SEEDS]
        assert entry["max_mean"] == pytest.approx(np.mean(finals), rel=1e-12)
    assert report.trajectory_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
