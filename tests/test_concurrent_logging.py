"""8 processes logging to one SQLite store at once lose no metric (writes retry on locks)."""

from __future__ import annotations

import multiprocessing as mp

from bib_ray.tracking.store import Store

WRITERS, STEPS, METRICS = 8, 40, 5


def _writer(uri: str, index: int, queue) -> None:
    store = Store(uri, "concurrency")
    run_id = store.create_run(f"writer-{index}", {"writer": index})
    for step in range(STEPS):
        store.log_metrics(run_id, {f"m{k}": index * 1000 + step + k / 10 for k in range(METRICS)}, step)
    store.set_status(run_id, "FINISHED")
    queue.put(run_id)


def test_eight_writers_lose_nothing(tmp_path, observed):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    Store(uri, "concurrency")  # create the schema once, as the driver does before workers start
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(uri, i, queue)) for i in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    exit_codes = [p.exitcode for p in procs]
    run_ids = [queue.get(timeout=10) for code in exit_codes if code == 0]
    store = Store(uri, "concurrency")
    found = {}  # (run, metric) -> the steps MLflow holds
    for run_id in run_ids:
        for k in range(METRICS):
            found[(run_id, k)] = sorted(m.step for m in store.client.get_metric_history(run_id, f"m{k}"))
    logged = WRITERS * STEPS * METRICS
    kept = sum(len(set(steps)) for steps in found.values())
    observed.record("metric rows lost by 8 concurrent SQLite writers", f"of {logged}", logged - kept)
    assert exit_codes == [0] * WRITERS, exit_codes
    for (run_id, k), steps in found.items():
        assert steps == list(range(STEPS)), (run_id, k)
    for run_id in run_ids:
        assert store.client.get_run(run_id).info.status == "FINISHED"
    assert kept == logged
