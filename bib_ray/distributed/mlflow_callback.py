"""Driver-side Tune callback: each trial becomes one nested MLflow child run under a parent run.

Why a driver callback (not logging inside trials): one process writes to the store, so a SQLite file
on the head node works for a whole cluster; and the callback can find a trial's run again by its
``trial_id`` tag after a resume or a retry, so a trial never gets two runs and a retried step is never
logged twice. (Ray's MLflowLoggerCallback creates a new run per start, which duplicates runs on
resume, and cannot nest them or tag them per trial.)

Why a writer thread: every ``tune.report`` of a trial waits until Tune's event loop has handled the
result, callbacks included. Store writes (SQLite commits, or REST calls to a tracking server) made
there would stall every running trial; the callback only queues them, in order, for one thread.
"""

from __future__ import annotations

import csv
import io
import queue
import sys
import threading
import time
from typing import Any, Callable

from ray.tune import Callback

from bib_ray.distributed.trainable import trial_spec
from bib_ray.tracking.store import Store, flatten, retrying

FLUSH_SECONDS = 2.0
FINAL_ONLY_METRIC = "design_seconds"  # present in a trial's final record only
SKIP_METRICS = {"step", "final", "seeds", "done", "training_iteration", "time_this_iter_s", "time_total_s",
                "timestamp", "worker_pid", "pid", "iterations_since_restore", "time_since_restore",
                "lm_loads_in_worker", "seed", "trial_started_at", "trial_ended_at", "lm_seed"}


def designs_csv(rows: list[dict]) -> str:
    """The designs table of a final result as CSV text."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


class StoreWriter:
    """One daemon thread that runs store writes in the order they were queued.

    A write that fails (after the store's own retries) is kept and raised by the next :meth:`drain`,
    so an error is never lost, only reported where the driver can act on it.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[Callable[[], None]] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="bib-ray-mlflow-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if self._error is None:
                    job()
            except BaseException as err:  # noqa: BLE001 - handed to the driver by drain()
                self._error = err
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                print(f"[bib-ray] MLflow write failed ({first}); later writes are skipped and the command "
                      "stops with this error once Tune ends", file=sys.stderr, flush=True)
            finally:
                self._queue.task_done()

    def submit(self, job: Callable[[], None]) -> None:
        """Queue a write; returns at once."""
        self._queue.put(job)

    def drain(self, raise_error: bool = True) -> None:
        """Wait until every queued write is done; raise the first write that failed (or keep it for
        the next drain that may raise)."""
        self._queue.join()
        if raise_error and self._error is not None:
            err, self._error = self._error, None
            raise err


class MLflowTrialCallback(Callback):
    """Logs params, per-step metrics, final metrics, designs and status of every trial.

    Tune's hooks only keep the books (which trials finished, failed, or wait for a flush) and queue the
    store writes; run ids and the last logged step per trial live in the writer thread, which alone
    reads and writes them.
    """

    def __init__(self, store: Store, parent_id: str, tags: dict[str, Any]) -> None:
        self.store = store
        self.parent_id = parent_id
        self.tags = tags
        self.writer = StoreWriter()
        self.runs: dict[str, str] = {}  # writer thread only
        self.last_step: dict[str, int] = {}  # writer thread only
        self.finished: set[str] = set()
        self.failed: set[str] = set()
        self.pending: dict[str, tuple[Any, list[tuple[int, dict]]]] = {}  # trial id -> (trial, step rows)
        self.tagged_node: set[str] = set()
        self.flushed_at = time.monotonic()

    def __getstate__(self) -> dict:
        """Tune pickles its run config (callbacks included): keep the store's address, not its client."""
        state = dict(self.__dict__)
        state["store"] = (self.store.uri, self.store.experiment)
        state["pending"] = {}
        # The writer thread may be adding entries: copy them (one C-level copy under the GIL).
        state["runs"], state["last_step"] = dict(self.runs), dict(self.last_step)
        state.pop("writer", None)
        return state

    def __setstate__(self, state: dict) -> None:
        uri, experiment = state["store"]
        self.__dict__.update(state)
        self.store = Store(uri, experiment)
        self.writer = StoreWriter()

    # --- run lookup (writer thread) -----------------------------------------------------------------
    def _run_for(self, trial) -> str:
        trial_id = trial.trial_id
        if trial_id in self.runs:
            return self.runs[trial_id]
        found = self.store.find_runs(f"tags.mlflow.parentRunId = '{self.parent_id}' and tags.trial_id = '{trial_id}'")
        if found:
            run_id = found[0].info.run_id
            history = self.store.client.get_metric_history(run_id, "forward_loss")
            self.last_step[trial_id] = max((m.step for m in history), default=0)
            if found[0].info.status != "FINISHED":
                self.store.set_status(run_id, "RUNNING")
        else:
            spec = trial_spec(trial.config)
            cell = (trial.config.get("cell") or {}).get("name", "")
            tags = {**self.tags, "trial_id": trial_id, "task": spec.task.name, "variant": spec.engine.variant,
                    "adaptive_eta": str(spec.engine.adaptive_eta).lower(),
                    "seed": ",".join(str(s) for s in trial.config.get("seeds") or [spec.engine.seed]),
                    "lm_seed": "none" if spec.lm else ",".join(
                        str(s) for s in trial.config.get("lm_seeds") or [spec.lm_pretrain.seed])}
            if cell:
                tags["cell"] = cell
                tags["cell_key"] = trial.config["cell"].get("key", "")
                tags["task_label"] = trial.config["cell"].get("task_label") or spec.task.name
            run_id = self.store.create_run(cell or f"trial-{trial_id}", tags, self.parent_id)
            params = flatten(spec.model_dump(mode="json"))
            params["seeds"] = tags["seed"]
            self.store.log_params(run_id, params)
            self.last_step[trial_id] = 0
        self.runs[trial_id] = run_id
        return run_id

    def _write_rows(self, trial, rows: list[tuple[int, dict]]) -> None:
        run_id = self._run_for(trial)
        last = self.last_step.get(trial.trial_id, 0)
        # A retried attempt replays steps already logged (same seed, same numbers): skip them.
        fresh = [(step, metrics) for step, metrics in rows if step > last]
        if fresh:
            self.store.log_metric_rows(run_id, fresh)
            self.last_step[trial.trial_id] = fresh[-1][0]

    # --- Tune hooks (Tune's event loop: book-keeping and queueing only) -----------------------------
    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self.writer.submit(lambda: self._run_for(trial))

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        trial_id = trial.trial_id
        if result.get("final"):
            self._finish(trial, result)
            return
        if "node" in result and trial_id not in self.tagged_node:
            node = result["node"]
            self.writer.submit(lambda: self.store.set_tags(self._run_for(trial), {"node": node}))
            self.tagged_node.add(trial_id)
        for row in result.get("history") or []:
            metrics = {k: v for k, v in row.items() if k not in SKIP_METRICS}
            self.pending.setdefault(trial_id, (trial, []))[1].append((int(row["step"]), metrics))
        if time.monotonic() - self.flushed_at > FLUSH_SECONDS:
            self._queue_pending()

    def _queue_pending(self, trial=None) -> None:
        """Queue the buffered per-step metrics (one batched write per trial instead of one per step)."""
        ids = [trial.trial_id] if trial is not None else list(self.pending)
        for tid in ids:
            owner, rows = self.pending.pop(tid, (trial, []))
            if rows:
                self.writer.submit(lambda owner=owner, rows=rows: self._write_rows(owner, rows))
        if trial is None:
            self.flushed_at = time.monotonic()

    def flush(self) -> None:
        """Write everything buffered or queued, and wait for it (the store is then up to date)."""
        self._queue_pending()
        self.writer.drain()

    def close_from_result(self, trial, run_id: str, result: dict) -> None:
        """Close a run whose trial finished while no driver was listening (used on resume)."""
        def adopt() -> None:
            self.runs[trial.trial_id] = run_id
        self.writer.submit(adopt)
        self._finish(trial, result)

    def _finish(self, trial, result: dict) -> None:
        self._queue_pending(trial)
        if result.get("failed_reason"):
            reason = result["failed_reason"]
            self.failed.add(trial.trial_id)
            self.writer.submit(lambda: self._close_failed(trial, reason))
            return
        self.finished.add(trial.trial_id)
        result = dict(result)
        self.writer.submit(lambda: self._close_finished(trial, result))
        shown = {k: result[k] for k in ("normalized_max", "normalized_median", "offline_proxy_mean") if k in result}
        print(f"[bib-ray] trial {trial.trial_id} finished: " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items()),
              flush=True)

    def _close_failed(self, trial, reason: str) -> None:
        run_id = self._run_for(trial)
        self.store.set_tags(run_id, {"failed_reason": reason})
        self.store.set_status(run_id, "FAILED")

    def _close_finished(self, trial, result: dict) -> None:
        run_id = self._run_for(trial)
        # The final record's metrics (seed means) under the same names, at the last iteration: MLflow's
        # latest value of each metric is then exactly Tune's last result.
        final = {k: v for k, v in result.items()
                 if k not in SKIP_METRICS and k not in ("designs_table", "history", "provenance")}
        final_step = int(result.get("step") or self.last_step.get(trial.trial_id, 0) + 1)
        logged = retrying(lambda: self.store.client.get_run(run_id)).data.metrics
        if FINAL_ONLY_METRIC not in logged:  # a driver killed mid-close may have logged it already
            self.store.log_metrics(run_id, final, final_step)
        self.store.set_tags(run_id, {"lm_loads_in_worker": result.get("lm_loads_in_worker"),
                                     "worker_pid": result.get("worker_pid"), "node": result.get("node", ""),
                                     **(result.get("provenance") or {})})
        if result.get("designs_table"):
            self.store.log_text(run_id, designs_csv(result["designs_table"]), "designs.csv")
        self.store.set_status(run_id, "FINISHED")

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._queue_pending(trial)
        if trial.trial_id not in self.finished and trial.trial_id not in self.failed:
            self.finished.add(trial.trial_id)

            def close_stopped() -> None:
                run_id = self._run_for(trial)
                self.store.set_tags(run_id, {"stopped": "early stopping (scheduler)"})
                self.store.set_status(run_id, "FINISHED")
            self.writer.submit(close_stopped)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._queue_pending(trial)
        reason = "worker failed"
        error_file = getattr(trial, "error_file", None) or ""
        try:
            text = open(error_file).read().strip().splitlines() if error_file else []
            reason = text[-1][:500] if text else reason
        except OSError:
            pass
        self.failed.add(trial.trial_id)
        self.writer.submit(lambda: self._close_failed(trial, reason))

    def on_experiment_end(self, trials: list, **info) -> None:
        # Wait for the writes, but raise a failed one in the driver (execute's flush), not inside Tune.
        self._queue_pending()
        self.writer.drain(raise_error=False)

    def open_run_ids(self) -> list[str]:
        """Child runs this callback opened and did not close (after the queued writes are done)."""
        self.flush()
        return [run for tid, run in self.runs.items() if tid not in self.finished and tid not in self.failed]
