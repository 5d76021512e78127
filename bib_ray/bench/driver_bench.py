"""``bib-ray bench driver``: how many trials an hour the driver can take from many workers.

Why: a lab runs 64 GPU workers; the driver (Tune's event loop, bib-ray's MLflow callback and its one
writer thread, the Optuna storage) serves them all. This bench measures that driver on this machine:
local Ray with ``--workers`` logical CPUs (64 by default: many more than the machine's cores, which is
fine because the trials sleep), synthetic trials that emit exactly the records a real trial does
(:class:`~bib_ray.trial_records.StepReport` rows of 100 steps x 6 replicates with a real trial's metric
names, a :class:`~bib_ray.trial_records.FinalRecord` with a 128-row designs table) with a short sleep in
place of BIB, through the real search job (:func:`bib_ray.distributed.search.build_job`, Optuna TPE on an
SQLite storage, :func:`bib_ray.distributed.tune_job.execute`, the MLflow callback, an SQLite store).

Then the same synthetic trials with Tune and Optuna but no bib-ray callback and no Optuna storage, on the
same Ray, as the reference. Printed, one ``key=value`` a line: ``driver_trials_per_hour``,
``bare_tune_trials_per_hour``, ``ratio_to_bare``, ``rows_expected``, ``rows_logged``, ``rows_lost`` (metric
values, one per (trial, metric, step), read back from MLflow), ``max_writer_lag_s`` (how long a write
queued behind the others waited, probed once a second) with its maximum over the first and the second
half of the run (a lag that grows with the number of trials shows there), and ``driver_peak_rss_mib``.
Goals on a 2-core machine (issue 23): ``driver_trials_per_hour >= 5000``, ``ratio_to_bare >= 0.8``,
``rows_lost = 0``, a writer lag that does not grow.
"""

from __future__ import annotations

import os
import resource
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bib_ray.progress import ProgressReporter, install
from bib_ray.trial_records import FinalRecord, StepReport, StepRow, TrialTiming, WorkerInfo

# The per-step metrics of a real learned-variant trial (engine, proxy and design statistics).
STEP_METRICS = ("forward_loss", "backward_loss", "gamma", "eta", "proxy_max", "proxy_median", "proxy_mean",
                "normalized_max", "normalized_median", "normalized_mean", "offline_proxy_max",
                "offline_proxy_mean", "mean_edit_distance", "unique_designs", "offline_nearest_distance",
                "offline_pairwise_mean", "offline_pairwise_max", "offline_conservative_mean",
                "aux_oracle_gap", "step_seconds")
DESIGN_COLUMNS = ("sequence", "proxy_prediction", "oracle_score", "normalized_score", "edit_distance")


def synthetic_trial(config: dict[str, Any], plan: Any = None, steps: int = 100, replicates: int = 6,
                    designs: int = 128, sleep_s: float = 0.5) -> None:
    """A trial's records with a sleep in place of BIB: one step report per replicate (as a trial without
    a scheduler reports), then the final record; the sleep is spread over the replicates."""
    from ray import tune

    started, t0 = time.time(), time.perf_counter()
    worker = WorkerInfo(pid=os.getpid(), node="bench", lm_loads=1)
    score = sum(float(v) for v in config.values() if isinstance(v, (int, float)))
    step = 0
    for replicate in range(replicates):
        time.sleep(sleep_s / replicates)
        rows = []
        for _ in range(steps):
            step += 1
            rows.append(StepRow(step=step, seed=replicate % 2, lm_seed=replicate // 2,
                                metrics={name: score + 1e-3 * step + i for i, name in enumerate(STEP_METRICS)}))
        tune.report(StepReport(rows=tuple(rows), worker=worker).to_result())
    table = [{"sequence": "ACGTACGT", "proxy_prediction": 0.1 * i, "oracle_score": 0.2 * i,
              "normalized_score": 0.01 * i, "edit_distance": i % 8} for i in range(designs)]
    slept = time.perf_counter() - t0
    metrics = {name: score + i for i, name in enumerate(STEP_METRICS)}
    timing = TrialTiming(started_at=started, ended_at=time.time(), setup_seconds=0.0, design_seconds=slept,
                         run_seconds=slept, trial_seconds=slept)
    tune.report(FinalRecord(step=step, metrics=metrics, replicates=replicates, worker=worker, timing=timing,
                            designs=table).to_result())


def bare_trial(config: dict[str, Any], steps: int, replicates: int, designs: int, sleep_s: float) -> None:
    """The reference's trial: the same records, no plan."""
    synthetic_trial(config, None, steps, replicates, designs, sleep_s)


class SparseProgress(ProgressReporter):
    """The driver's progress lines, one per tenth of the trials (2000 lines would bury the figures)."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self._every = max(1, total // 10)

    def ended(self, name: str, outcome: str, k: int, total: int | None, metrics: Any = None) -> None:
        if k % self._every == 0 or outcome != "finished":
            super().ended(name, outcome, k, total, None)
        else:
            self.counts[outcome] = self.counts.get(outcome, 0) + 1


class WriterLagProbe:
    """Once a second, a no-op write queued behind the others: how long it waited is the writer's lag."""

    def __init__(self, parent_id_of: Any) -> None:
        self._parent_id_of = parent_id_of
        self.lags: list[tuple[float, float]] = []  # (queued at, waited seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-writer-probe", daemon=True)

    def start(self) -> "WriterLagProbe":
        self._thread.start()
        return self

    def _loop(self) -> None:
        from bib_ray.distributed.mlflow_callback import MLflowTrialCallback

        while not self._stop.wait(1.0):
            parent = self._parent_id_of()
            callback = MLflowTrialCallback.active(parent) if parent else None
            if callback is None or callback.writer is None:
                continue
            queued = time.monotonic()
            done = threading.Event()
            callback.writer.submit(done.set)
            while not done.wait(1.0) and not self._stop.is_set():
                pass
            self.lags.append((queued, time.monotonic() - queued))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _space(trials: int, workers: int) -> Any:
    from bib_ray.distributed.space import parse_search_space

    return parse_search_space({
        "name": "bench_driver", "base": {"task": "tfbind8"}, "trials": trials, "concurrency": workers,
        "scheduler": {"type": "none"}, "seeds": [0, 1], "lm_seeds": [0, 1, 2],
        "params": {"engine.lr": {"type": "loguniform", "low": 0.01, "high": 1.0},
                   "engine.beta_scale": {"type": "loguniform", "low": 0.1, "high": 10.0}}}, "bench driver")


def _rows_logged(store: Any, parent_id: str) -> int:
    """Metric values MLflow holds for the parent's children, one per (run, metric, step): read back through
    the client's metric histories (the final record's values at the last step not counted)."""
    from bib_ray.tracking.metric_keys import mlflow_key

    count = 0
    for run in store.children(parent_id):
        for name in STEP_METRICS:
            steps = {m.step for m in store.client.get_metric_history(run.info.run_id, mlflow_key(name))}
            count += len(steps)
    return count


def run_driver_bench(workers: int, trials: int, steps: int, replicates: int, designs: int,
                     sleep_s: float) -> dict[str, float]:
    """Both runs on one local Ray of ``workers`` logical CPUs; the figures as a dict."""
    import ray

    from bib_ray.distributed.optuna_study import open_storage
    from bib_ray.distributed.search import build_job
    from bib_ray.distributed.tune_job import execute
    from bib_ray.tracking.store import Store

    space = _space(trials, workers)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bib_ray_bench_driver_") as tmp:
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            store = Store(f"sqlite:///{tmp}/mlruns.db", space.name)
            study = open_storage(f"sqlite:///{tmp}/optuna.db")
            job = build_job(space, store, "bench", "", study)
            def trial(config: dict[str, Any], plan: Any = None) -> None:  # the job binds plan=
                synthetic_trial(config, plan, steps, replicates, designs, sleep_s)

            job = replace(job, trainable=trial, resources={"cpu": 1, "gpu": 0})
            install(SparseProgress(trials))
            parent: dict[str, str] = {}
            probe = WriterLagProbe(lambda: parent.get("id") or _open_parent(store)).start()
            started = time.monotonic()
            outcome = execute(job, Path(tmp) / "runs", resume=False)
            driver_s = time.monotonic() - started
            probe.stop()
            parent["id"] = outcome.parent_id
            ended = sum(1 for r in outcome.results if not r.error)
            figures["driver_trials"] = ended
            figures["driver_trials_per_hour"] = 3600 * ended / driver_s
            figures["rows_expected"] = trials * steps * replicates * len(STEP_METRICS)
            figures["rows_logged"] = _rows_logged(store, outcome.parent_id)
            figures["rows_lost"] = figures["rows_expected"] - figures["rows_logged"]
            lags = probe.lags
            half = started + driver_s / 2
            figures["max_writer_lag_s"] = max((lag for _, lag in lags), default=0.0)
            figures["max_writer_lag_first_half_s"] = max((lag for at, lag in lags if at < half), default=0.0)
            figures["max_writer_lag_second_half_s"] = max((lag for at, lag in lags if at >= half), default=0.0)
            figures["driver_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            figures["bare_tune_trials_per_hour"] = _bare_rate(space, trials, workers, steps, replicates,
                                                              designs, sleep_s, Path(tmp) / "bare")
            figures["ratio_to_bare"] = figures["driver_trials_per_hour"] / figures["bare_tune_trials_per_hour"]
        finally:
            ray.shutdown()
    return figures


def _open_parent(store: Any) -> str | None:
    """The bench's parent run while the job runs (the only run without a parent in its experiment)."""
    runs = store.find_runs("attributes.status = 'RUNNING'")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parents[0].info.run_id if parents else None


def _bare_rate(space: Any, trials: int, workers: int, steps: int, replicates: int, designs: int,
               sleep_s: float, storage: Path) -> float:
    """Trials per hour of the same trials with Tune and Optuna only (in-memory study, JSON logger)."""
    from optuna.samplers import TPESampler
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    searcher = ConcurrencyLimiter(OptunaSearch(metric=space.result_key, mode=space.mode,
                                               sampler=TPESampler(seed=space.sampler_seed)),
                                  max_concurrent=workers)
    trainable = tune.with_resources(tune.with_parameters(bare_trial, steps=steps, replicates=replicates,
                                                         designs=designs, sleep_s=sleep_s), {"cpu": 1})
    tuner = tune.Tuner(trainable, param_space=space.tune_space(),
                       tune_config=tune.TuneConfig(search_alg=searcher, num_samples=trials, reuse_actors=True),
                       run_config=tune.RunConfig(name="bare", storage_path=str(storage), verbose=0,
                                                 callbacks=[JsonLoggerCallback()]))
    started = time.monotonic()
    results = tuner.fit()
    return 3600 * sum(1 for r in results if not r.error) / (time.monotonic() - started)


def main(workers: int = 64, trials: int = 2000, steps: int = 100, replicates: int = 6, designs: int = 128,
         sleep_s: float = 0.5) -> int:
    """Print the figures; returns the exit code."""
    import torch

    from bib_ray.errors import BibInputError

    for flag, value in (("--workers", workers), ("--trials", trials), ("--steps", steps),
                        ("--replicates", replicates), ("--designs", designs)):
        if value < 1:
            raise BibInputError(flag, f"must be at least 1, not {value}", f"give {flag} 1 or more")
    if sleep_s < 0:
        raise BibInputError("--sleep", f"must not be negative, not {sleep_s}", "give --sleep 0 or more")

    print(f"bench driver: {workers} workers (logical CPUs on local Ray), {trials} trials of {steps} steps x "
          f"{replicates} replicates x {len(STEP_METRICS)} metrics, {designs} designs, {sleep_s}s sleep per trial; "
          f"CPU {os.cpu_count()} cores, kernels {torch.backends.cpu.get_cpu_capability()}", flush=True)
    figures = run_driver_bench(workers, trials, steps, replicates, designs, sleep_s)
    for key in ("driver_trials_per_hour", "bare_tune_trials_per_hour", "ratio_to_bare", "rows_expected",
                "rows_logged", "rows_lost", "max_writer_lag_s", "max_writer_lag_first_half_s",
                "max_writer_lag_second_half_s", "driver_peak_rss_mib"):
        value = figures[key]
        print(f"{key}={value:.0f}" if key.startswith("rows") else f"{key}={value:.3f}")
    return 0
