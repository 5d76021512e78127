"""The trial protocol: every record survives the trip through Tune's result dict, the plan rebuilds a
trial's run from its config, the callback pickles as Tune pickles it and keeps its books through
Tune's get_state/set_state, and a trial's final record is MLflow's latest value at its last step."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest

from bib_ray.distributed.mlflow_callback import MLflowTrialCallback
from bib_ray.spec import RunSpec
from bib_ray.tracking.store import Store
from bib_ray.trial_records import (CellConfig, FinalRecord, StepReport, StepRow, TrialPlan, TrialTiming, WorkerInfo,
                                   final_of, record_of)

from helpers import TINY_BASE
from bib_ray.tracking.metric_keys import named_metrics

WORKER = WorkerInfo(pid=4242, node="host/abc", lm_loads=2)
TIMING = TrialTiming(started_at=100.0, ended_at=103.5, setup_seconds=0.2, design_seconds=2.5, run_seconds=3.0,
                     trial_seconds=3.4)
RECORDS = [
    StepReport(rows=(StepRow(step=1, seed=0, lm_seed=0, metrics={"forward_loss": 0.5, "normalized_max": 0.7}),
                     StepRow(step=2, seed=0, lm_seed=None, metrics={"forward_loss": 0.4, "normalized_max": 0.8})),
               worker=WORKER),
    FinalRecord(step=12, metrics={"normalized_max": 0.91, "normalized_max_std": 0.01}, replicates=4, worker=WORKER,
                timing=TIMING, provenance={"lm_fingerprint": "ab,cd", "torch_version": "2.13.0"},
                designs=[{"start": "ACGT", "design": "ACGA", "oracle_score": 0.3, "proxy_prediction": 0.2}],
                rows=(StepRow(step=12, seed=1, lm_seed=1, metrics={"forward_loss": 0.2}),)),
    FinalRecord(step=3, metrics={}, replicates=0, worker=WORKER, failed_reason="non-finite loss at step 3"),
]


@pytest.mark.parametrize("record", RECORDS, ids=["step", "final", "failed"])
def test_every_record_round_trips_through_a_tune_result(record):
    result = record.to_result()
    result.update(trial_id="t1", training_iteration=7, time_total_s=1.0)  # what Tune adds
    assert record_of(result) == record
    assert pickle.loads(pickle.dumps(result)) == result  # plain data: Tune may pickle or JSON it


def test_metrics_sit_where_schedulers_and_searchers_read_them():
    step, final, failed = (r.to_result() for r in RECORDS)
    assert step["normalized_max"] == 0.8 and step["step"] == 2  # the last row: ASHA's clock and metric
    assert final["normalized_max"] == 0.91 and final["step"] == 12
    assert final_of(step) is None and final_of(final) == RECORDS[1] and final_of(failed).failed
    assert record_of({"trial_id": "x"}) is None and record_of(None) is None


def test_plan_builds_a_trials_run_from_sampled_params_or_a_cell():
    base = RunSpec.model_validate(TINY_BASE)
    plan = TrialPlan(base=base, seeds=(3, 4), lm_seeds=(0, 1))
    sampled = plan.spec_for({"engine.lr": 0.02})
    assert sampled.engine.lr == 0.02 and sampled.engine.designs == base.engine.designs
    cell = CellConfig(name="tfbind8/fixed/seed1", key="k", updates={"engine.variant": "fixed", "engine.seed": 1})
    from_cell = plan.spec_for({CellConfig.CONFIG_KEY: cell.as_dict()})
    assert from_cell.engine.variant == "fixed" and from_cell.engine.seed == 1
    assert CellConfig.from_config({CellConfig.CONFIG_KEY: cell.as_dict()}) == cell
    assert plan.seeds_of(sampled) == [3, 4] and plan.lm_seeds_of(sampled) == [0, 1]
    assert TrialPlan(base=base).seeds_of(from_cell) == [1]  # an ablation cell: its own seed
    assert plan.lm_seeds_of(base.with_updates({"lm": "some/hub-model"})) == [None]  # one explicit LM


def test_callback_pickles_before_setup_and_keeps_its_books_through_get_and_set_state(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/mlruns.db", "books")
    parent = store.create_run("parent", {})
    plan = TrialPlan(base=RunSpec.model_validate(TINY_BASE), seeds=(0,))
    callback = MLflowTrialCallback(store.uri, store.experiment, parent, {"bib_ray.kind": "search"}, plan)
    restored = pickle.loads(pickle.dumps(callback))  # what Tune does with its run config, before setup()
    restored.setup()
    assert MLflowTrialCallback.active(parent) is restored
    trial = SimpleNamespace(trial_id="t1", config={"engine.lr": 0.05})
    restored.on_trial_start(0, [], trial)
    restored.on_trial_result(0, [], trial, RECORDS[0].to_result())
    restored.flush()
    state = restored.get_state()
    (child,) = store.children(parent)
    assert state["runs"] == {"t1": child.info.run_id} and child.data.params["engine.lr"] == "0.05"
    # A resumed driver: a fresh callback gets the state back and continues the same run after the
    # last step MLflow holds (a replayed step is not logged twice).
    again = MLflowTrialCallback(store.uri, store.experiment, parent, {}, plan)
    again.set_state(pickle.loads(pickle.dumps(state)))
    again.setup()
    again.on_trial_result(0, [], trial, StepReport(rows=RECORDS[0].rows + (
        StepRow(step=3, seed=0, lm_seed=0, metrics={"forward_loss": 0.3}),), worker=WORKER).to_result())
    again.on_trial_result(0, [], trial, RECORDS[1].to_result())
    again.flush()
    assert len(store.children(parent)) == 1
    history = store.client.get_metric_history(child.info.run_id, "forward_loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 12]  # 12: the row the final record carried
    assert store.client.get_run(child.info.run_id).info.status == "FINISHED"


def test_final_record_is_the_latest_value_at_the_last_step(tmp_path, monkeypatch):
    """Logged at the same step as the last step row, the final (seed-mean) value must be what MLflow
    shows as the metric's value, even when both writes fall in the same millisecond."""
    import bib_ray.tracking.store as store_module

    monkeypatch.setattr(store_module.time, "time", lambda: 1000.0)  # a frozen clock: same millisecond
    store = Store(f"sqlite:///{tmp_path}/mlruns.db", "latest")
    run = store.create_run("r", {})
    store.log_metric_rows(run, [(6, {"normalized_max": 0.95})])  # the last step's own value (higher)
    store.log_metrics(run, {"normalized_max": 0.90}, 6)  # the final record: the mean over replicates
    assert named_metrics(store.client.get_run(run).data.metrics)["normalized_max"] == 0.90


@pytest.mark.parametrize("each_report", [False, True])
def test_replicates_run_without_ray_and_report_in_batches(tmp_path, monkeypatch, each_report):
    """The trial's work is a plain function: reports every ``report_every`` steps and at each replicate's
    end, global steps counting on across replicates, the last steps carried by the final record of
    means; the costly criteria only at each replicate's last step unless the search is steered by one."""
    from bib_ray.trial_run import run_replicates

    monkeypatch.setenv("BIB_RAY_CACHE", str(tmp_path / "cache"))
    spec = RunSpec.model_validate(TINY_BASE)  # 6 steps
    records = []
    final = run_replicates(spec, seeds=[0, 1], lm_seeds=[0], report_every=4, emit=records.append,
                           criteria_each_report=each_report)
    steps = [r.to_result()["step"] for r in records]
    assert steps == [4, 6, 8, 12] and records[-1] == final and final.replicates == 2
    assert [row.step for row in final.rows] == [9, 10, 11, 12]
    rows = [row for r in records for row in r.rows]
    assert [row.step for row in rows] == list(range(1, 13)) and {row.seed for row in rows} == {0, 1}
    ends = {6: rows[5], 12: rows[11]}
    assert final.metrics["normalized_max"] == pytest.approx(
        (ends[6].metrics["normalized_max"] + ends[12].metrics["normalized_max"]) / 2, rel=1e-12)
    assert all("offline_conservative_mean" in row.metrics for row in ends.values())
    at_report = rows[3].metrics  # step 4: a report step inside the first replicate
    assert ("offline_conservative_mean" in at_report) == each_report


def test_without_a_step_cadence_a_trial_reports_at_replicate_ends(tmp_path, monkeypatch):
    """No scheduler needs rungs: one report per replicate but the last, whose steps ride on the final
    record (each report is a round trip the trial waits on). The clock stands still, so no report is
    due by time whatever the machine's load."""
    from bib_ray.trial_run import run_replicates

    monkeypatch.setenv("BIB_RAY_CACHE", str(tmp_path / "cache"))
    records = []
    final = run_replicates(RunSpec.model_validate(TINY_BASE), seeds=[0, 1], lm_seeds=[0], report_every=None,
                           emit=records.append, clock=lambda: 100.0)
    assert [type(r).__name__ for r in records] == ["StepReport", "FinalRecord"]
    assert [row.step for row in records[0].rows] == list(range(1, 7))
    assert [row.step for row in final.rows] == list(range(7, 13))


def test_without_a_step_cadence_a_report_is_due_every_report_seconds(tmp_path, monkeypatch):
    """The time cadence, on a clock the test drives from the steps themselves: set-up takes 9 s, each step
    4 s. Counted from the first step (t = 9), a report falls due at step 4 (12 s >= REPORT_SECONDS) and the
    count restarts there; counted from before set-up (t = 0), it would fall due at step 2 already."""
    from bib_ray.trial_run import REPORT_SECONDS, run_replicates

    monkeypatch.setenv("BIB_RAY_CACHE", str(tmp_path / "cache"))
    now = {"t": 0.0}

    def step_begins(global_step: int) -> None:
        now["t"] = 9.0 + 4.0 * (global_step - 1)

    records = []
    final = run_replicates(RunSpec.model_validate(TINY_BASE), seeds=[0], lm_seeds=[0], report_every=None,
                           emit=records.append, on_iteration=step_begins, clock=lambda: now["t"])
    assert REPORT_SECONDS == 10.0
    assert [[row.step for row in r.rows] for r in records[:-1]] == [[1, 2, 3, 4]]
    assert [row.step for row in final.rows] == [5, 6]
