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


def test_eight_writers_lose_nothing(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    Store(uri, "concurrency")  # create the schema once, as the driver does before workers start
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(uri, i, queue)) for i in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    run_ids = [queue.get(timeout=10) for _ in range(WRITERS)]
    store = Store(uri, "concurrency")
    total = 0
    for run_id in run_ids:
        for k in range(METRICS):
            history = store.client.get_metric_history(run_id, f"m{k}")
            assert sorted(m.step for m in history) == list(range(STEPS))
            total += len(history)
        assert store.client.get_run(run_id).info.status == "FINISHED"
    assert total == WRITERS * STEPS * METRICS
    with capsys.disabled():
        print(f"\nconcurrent SQLite logging: {WRITERS} writers, {total} metrics logged, {total} found, 0 lost")
