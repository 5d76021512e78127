"""The driver-side MLflow callback queues its writes: Tune's event loop (which every trial's report
waits on) never waits on the store, writes land in order, and a failed write is raised, not lost."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from bib_ray.distributed.mlflow_callback import MLflowTrialCallback, StoreWriter
from bib_ray.spec import RunSpec
from bib_ray.tracking.store import Store
from bib_ray.trial_records import FinalRecord, StepReport, StepRow, TrialPlan, TrialTiming, WorkerInfo
from bib_ray.tracking.metric_keys import named_metrics


PLAN = TrialPlan(base=RunSpec().with_updates({"engine.steps": 4}), seeds=(0,))
WORKER = WorkerInfo(pid=1, node="here", lm_loads=1)


def _trial(trial_id: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config={})


def _step_result(steps: range) -> dict:
    rows = tuple(StepRow(step=s, seed=0, lm_seed=0, metrics={"forward_loss": 1.0 / s, "gamma": 0.5}) for s in steps)
    return StepReport(rows=rows, worker=WORKER).to_result()


def _callback(store: Store, parent: str) -> MLflowTrialCallback:
    callback = MLflowTrialCallback(store.uri, store.experiment, parent, {"bib_ray.kind": "search"}, PLAN)
    callback.setup(store=store)
    return callback


def test_writer_keeps_order_and_raises_the_first_failure():
    writer = StoreWriter()
    seen: list[int] = []
    for i in range(50):
        writer.submit(lambda i=i: seen.append(i))
    writer.drain()
    assert seen == list(range(50))

    def boom() -> None:
        raise ValueError("store is gone")

    writer.submit(boom)
    writer.submit(lambda: seen.append(99))  # skipped: the store already failed
    writer.drain(raise_error=False)  # inside Tune (experiment end): wait, keep the error
    with pytest.raises(ValueError, match="store is gone"):
        writer.drain()  # in the driver: raised
    assert 99 not in seen
    writer.drain()  # raised once, then cleared


def test_hooks_return_while_the_store_is_blocked_and_every_step_lands_once(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/mlruns.db", "callback")
    parent = store.create_run("parent", {})
    gate = threading.Event()
    real_create = store.create_run

    def gated_create(*args, **kwargs):
        gate.wait()
        return real_create(*args, **kwargs)

    store.create_run = gated_create
    callback = _callback(store, parent)
    trial = _trial("t1")
    finished = threading.Event()

    def drive() -> None:  # what Tune's event loop does for one trial
        callback.on_trial_start(0, [], trial)
        callback.on_trial_result(0, [], trial, _step_result(range(1, 3)))
        callback.on_trial_result(0, [], trial, _step_result(range(1, 5)))  # a retry replays steps 1-2
        timing = TrialTiming(started_at=0.0, ended_at=1.0, setup_seconds=0.1, design_seconds=0.1, run_seconds=0.5,
                             trial_seconds=1.0)
        callback.on_trial_result(0, [], trial, FinalRecord(step=4, metrics={"normalized_max": 0.9}, replicates=1,
                                                           worker=WORKER, timing=timing,
                                                           designs=[{"seq": "ACGT"}]).to_result())
        callback.on_trial_complete(0, [], trial)
        finished.set()

    loop = threading.Thread(target=drive, daemon=True)
    loop.start()
    assert finished.wait(30), "a Tune hook waited on the store"
    assert store.children(parent) == []  # nothing written yet: the store is still blocked
    gate.set()
    callback.flush()
    (child,) = store.children(parent)
    assert child.info.status == "FINISHED"
    assert child.data.tags["node"] == "here"
    history = store.client.get_metric_history(child.info.run_id, "forward_loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    assert named_metrics(child.data.metrics)["normalized_max"] == 0.9
    assert callback.open_run_ids() == []
