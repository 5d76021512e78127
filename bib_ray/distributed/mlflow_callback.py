"""Driver-side Tune callback: each trial becomes one nested MLflow child run under a parent run.

Why a driver callback (not logging inside trials): one process writes to the store, so a SQLite file
on the head node works for a whole cluster; and the callback can find a trial's run again by its
``trial_id`` tag after a resume or a retry, so a trial never gets two runs and a retried step is never
logged twice. (Ray's MLflowLoggerCallback creates a new run per start, which duplicates runs on
resume, and cannot nest them or tag them per trial.)

Why a writer thread: every ``tune.report`` of a trial waits until Tune's event loop has handled the
result, callbacks included. Store writes (SQLite commits, or REST calls to a tracking server) made
there would stall every running trial; the callback only queues them, in order, for one thread.

How it survives a driver crash, by Tune's own conventions: Tune pickles its run config (this callback
included) once, when the experiment starts, and ``Tuner.restore`` unpickles it. So the callback holds
only plain data until Tune calls :meth:`setup`, which opens the store and starts the writer; its book-
keeping (which MLflow run belongs to which trial, the last step logged) goes into Tune's experiment
checkpoints through :meth:`get_state` and comes back through :meth:`set_state`.
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

from bib_ray.errors import first_line
from bib_ray.redact import mask_secrets, unmask
from bib_ray.tracking.store import OUTAGE_POLL_SECONDS, Store, flatten, retrying, riding_out_outages
from bib_ray.tracking.ui_links import run_url
from bib_ray.trial_records import HEADLINE_METRICS, CellConfig, FinalRecord, StepReport, TrialPlan, record_of

FLUSH_SECONDS = 2.0
FINAL_ONLY_METRIC = "design_seconds"  # logged by a trial's final record only


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

    A tracking outage of any length loses nothing while the driver lives: the thread's store calls ride
    it out (:func:`~bib_ray.tracking.store.riding_out_outages`), the write that found the store down is
    retried until it answers and the writes queued behind it wait their turn, in order; the command
    says so once when the outage starts, every minute it lasts, and when it ends. A write the store
    refuses (not an outage) is kept and raised by the next :meth:`drain`, so an error is never lost, only
    reported where the driver can act on it.

    A driver stopped while the store is down (Ctrl-C, SIGTERM, or an end-of-run wait given up) cannot send
    what it holds; nothing is lost then either: every trial's records are in Tune's ``result.json`` under
    the experiment folder, and ``--resume`` sends what MLflow lacks
    (:meth:`MLflowTrialCallback.replay`). :attr:`down` tells the driver not to wait.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[Callable[[], None]] = queue.Queue()
        self._error: BaseException | None = None
        self.down = False  # the store did not answer the write now being retried (writer thread sets it)
        self._thread = threading.Thread(target=self._loop, name="bib-ray-mlflow-writer", daemon=True)
        self._thread.start()

    def _outage_notice(self, error: str, seconds_down: float, down: bool) -> None:
        from bib_ray.progress import current

        held = self._queue.qsize() + 1  # the write being retried, and those queued behind it
        self.down = down
        if down:
            current().line(f"MLflow unreachable ({error}); {held} writes held in order and retried every "
                           f"{OUTAGE_POLL_SECONDS:.0f}s until it answers (nothing is lost: stopped before "
                           "then, the command says how to send them)")
        else:
            current().line(f"MLflow answers again after {seconds_down:.0f}s; sending the {held} held writes")

    def _loop(self) -> None:
        with riding_out_outages(self._outage_notice):
            self._run_jobs()

    def _run_jobs(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if self._error is None:
                    job()
            except BaseException as err:  # noqa: BLE001 - handed to the driver by drain()
                self._error = err
                first = first_line(err)
                print(f"[bib-ray] MLflow write failed ({first}); later writes are skipped and the command "
                      "stops with this error once Tune ends", file=sys.stderr, flush=True)
            finally:
                self._queue.task_done()

    def submit(self, job: Callable[[], None]) -> None:
        """Queue a write; returns at once."""
        self._queue.put(job)

    def held(self) -> int:
        """Writes queued or being retried, not yet done."""
        return self._queue.unfinished_tasks

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
    writes them (Tune's checkpoint thread reads copies through :meth:`get_state`).
    """

    _active: dict[str, "MLflowTrialCallback"] = {}  # parent run id -> the callback Tune set up last

    def __init__(self, tracking_uri: str, experiment: str, parent_id: str, tags: dict[str, Any],
                 plan: TrialPlan, total: int | None = None, optuna_study: str | None = None) -> None:
        self.optuna_study = optuna_study  # a search's study in Optuna's storage: its trials and the runs link
        self.total = total  # cells or trials the job runs: the N of each progress line's k/N
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.parent_id = parent_id
        self.tags = tags
        self.plan = plan
        self.runs: dict[str, str] = {}  # trial id -> run id (written by the writer thread only)
        self.last_step: dict[str, int] = {}  # trial id -> last step logged by this process (writer thread only)
        self.finished: set[str] = set()
        self.failed: set[str] = set()
        self.stopped: set[str] = set()  # ended by the scheduler (ASHA) before their last step
        self.tagged_node: set[str] = set()
        self.closed_before: set[str] = set()  # runs already FINISHED when this process found them (writer)
        self.store: Store | None = None  # opened by setup()
        self.writer: StoreWriter | None = None
        self.pending: dict[str, tuple[Any, list[tuple[int, dict]]]] = {}  # trial id -> (trial, step rows)
        self.flushed_at = time.monotonic()
        self.rows_queued = 0  # metric rows (one step of one trial) handed to the writer
        self.rows_done = 0  # of those, written or found logged already (writer thread)

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles the callback into the experiment folder (``tuner.pkl``): the tracking URI goes
        there masked; the driver that restores it was given the real one again (``--resume``). The
        process-bound parts (the store, the writer thread) are left out: a restored copy opens its own."""
        return {**self.__dict__, "tracking_uri": mask_secrets(self.tracking_uri), "store": None, "writer": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({**state, "tracking_uri": unmask(state["tracking_uri"])})

    # --- Tune's lifecycle: set-up and checkpointed state -------------------------------------------
    def setup(self, store: Store | None = None, **info) -> None:
        """Open the store and start the writer (Tune calls this as the experiment starts or resumes;
        the driver may call it first with its own open ``store``)."""
        if self.writer is not None:
            return
        self.store = store or Store(self.tracking_uri, self.experiment)
        self.writer = StoreWriter()
        MLflowTrialCallback._active[self.parent_id] = self

    def get_state(self) -> dict[str, Any]:
        """The book-keeping Tune saves with each experiment checkpoint: which run is whose, and which
        trials ended (copies: the writer thread may be adding). The last step logged is not kept: a
        checkpoint can lag the store, so a resumed trial reads it from MLflow."""
        return {"runs": dict(self.runs), "finished": set(self.finished), "failed": set(self.failed),
                "stopped": set(self.stopped)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Tune hands back the saved book-keeping on ``Tuner.restore``."""
        self.runs.update(state.get("runs", {}))
        self.finished |= set(state.get("finished", ()))
        self.failed |= set(state.get("failed", ()))
        self.stopped |= set(state.get("stopped", ()))

    @classmethod
    def active(cls, parent_id: str) -> "MLflowTrialCallback | None":
        """The callback Tune set up for this parent run in this process (after ``Tuner.restore`` it is
        Tune's unpickled copy, which the driver has no other handle on)."""
        return cls._active.get(parent_id)

    # --- run lookup (writer thread) -----------------------------------------------------------------
    def _run_for(self, trial) -> str:
        trial_id = trial.trial_id
        if trial_id in self.last_step:  # already touched by this process
            return self.runs[trial_id]
        run_id = self.runs.get(trial_id)  # known from Tune's checkpoint (set_state)
        if run_id is None:
            found = self.store.find_runs(f"tags.mlflow.parentRunId = '{self.parent_id}' and tags.trial_id = '{trial_id}'")
            run_id = found[0].info.run_id if found else None
        if run_id is not None:  # a resumed or retried trial: go on after the last step MLflow holds
            history = retrying(lambda: self.store.client.get_metric_history(run_id, "forward_loss"))
            self.last_step[trial_id] = max((m.step for m in history), default=0)
            if retrying(lambda: self.store.client.get_run(run_id)).info.status == "FINISHED":
                # Closed by an earlier driver (a cell that finished just before an interrupt, which Tune's
                # last checkpoint still held as running, so the resumed Tune runs it again): left alone.
                self.closed_before.add(trial_id)
            else:
                self.store.set_status(run_id, "RUNNING")
        else:
            spec = self.plan.spec_for(trial.config)
            cell = CellConfig.from_config(trial.config)
            tags = {**self.tags, "trial_id": trial_id, "task": spec.task.name, "variant": spec.engine.variant,
                    "adaptive_eta": str(spec.engine.adaptive_eta).lower(),
                    "seed": ",".join(str(s) for s in self.plan.seeds_of(spec)),
                    "lm_seed": "none" if spec.lm else ",".join(str(s) for s in self.plan.lm_seeds_of(spec))}
            if cell:
                tags.update(cell=cell.name, cell_key=cell.key, task_label=cell.task_label or spec.task.name)
            searcher = self._optuna_searcher()
            number = searcher.optuna_number(trial_id) if searcher is not None else None
            if number is not None:
                tags["optuna.trial_number"] = str(number)
            run_id = self.store.create_run(cell.name if cell else f"trial-{trial_id}", tags, self.parent_id)
            if number is not None:
                searcher.link_run(trial_id, run_id, run_url(self.tracking_uri, self.store.experiment_id, run_id))
            params = flatten(spec.model_dump(mode="json"))
            params["seeds"] = tags["seed"]
            self.store.log_params(run_id, params)
            self.last_step[trial_id] = 0
        self.runs[trial_id] = run_id
        return run_id

    def _optuna_searcher(self):
        """The driver's Optuna searcher of this search (None for an ablation or an in-memory study)."""
        if not self.optuna_study:
            return None
        from bib_ray.distributed.optuna_searcher import BibOptunaSearch

        return BibOptunaSearch.active(self.optuna_study)

    def _write_rows(self, trial, rows: list[tuple[int, dict]]) -> None:
        run_id = self._run_for(trial)
        last = self.last_step.get(trial.trial_id, 0)
        # A retried attempt (or a --resume replay) brings steps already logged (same seed, same numbers):
        # skip them, and any step met twice in these rows.
        fresh = []
        for step, metrics in rows:
            if step > last:
                fresh.append((step, metrics))
                last = step
        if fresh:
            self.store.log_metric_rows(run_id, fresh)
            self.last_step[trial.trial_id] = fresh[-1][0]
        self.rows_done += len(rows)

    # --- Tune hooks (Tune's event loop: book-keeping and queueing only) -----------------------------
    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self.writer.submit(lambda: self._run_for(trial))

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        record = record_of(result)
        if isinstance(record, FinalRecord):
            self._finish(trial, record)
            return
        if not isinstance(record, StepReport):
            return
        trial_id = trial.trial_id
        if trial_id not in self.tagged_node:
            node = record.worker.node
            self.writer.submit(lambda: self.store.set_tags(self._run_for(trial), {"node": node}))
            self.tagged_node.add(trial_id)
        rows = self.pending.setdefault(trial_id, (trial, []))[1]
        rows.extend((row.step, row.metrics) for row in record.rows)
        if time.monotonic() - self.flushed_at > FLUSH_SECONDS:
            self._queue_pending()

    def _queue_pending(self, trial=None) -> None:
        """Queue the buffered per-step metrics (one batched write per trial instead of one per step)."""
        ids = [trial.trial_id] if trial is not None else list(self.pending)
        for tid in ids:
            owner, rows = self.pending.pop(tid, (trial, []))
            if rows:
                self.rows_queued += len(rows)
                self.writer.submit(lambda owner=owner, rows=rows: self._write_rows(owner, rows))
        if trial is None:
            self.flushed_at = time.monotonic()

    def flush(self) -> None:
        """Write everything buffered or queued, and wait for it (the store is then up to date)."""
        self._queue_pending()
        self.writer.drain()

    def store_down(self) -> bool:
        """Whether the writer is waiting out an outage now."""
        return self.writer is not None and self.writer.down

    def unsent(self) -> tuple[int, int]:
        """(writes, metric rows) not yet in the store: queued, being retried, or buffered."""
        buffered = sum(len(rows) for _, rows in self.pending.values())
        writes = (self.writer.held() if self.writer is not None else 0) + sum(1 for _, r in self.pending.values() if r)
        return writes, self.rows_queued - self.rows_done + buffered

    def replay(self, trial, results: list[dict]) -> None:
        """Send what MLflow lacks of a trial, from the results Tune kept on disk (its ``result.json``).

        Why: a driver stopped while the store was down held writes that never reached it: step rows, a
        run never created, a final record, a failure. Tune's JSON logger wrote every result it received
        to the trial's folder first, so on ``--resume`` each trial's records are replayed here: its run
        is found by the ``trial_id`` tag or created as a live driver would have, steps MLflow holds are
        skipped (:meth:`_write_rows`), and a trial Tune had ended is closed as it ended. A trial Tune
        will run again gets only the steps it had reported; the rerun adds the rest."""
        records = [record_of(result) for result in results]
        final = next((r for r in reversed(records) if isinstance(r, FinalRecord)), None)
        rows = self.pending.setdefault(trial.trial_id, (trial, []))[1]
        for record in records:
            if isinstance(record, StepReport):
                rows.extend((row.step, row.metrics) for row in record.rows)
        if trial.status == "TERMINATED" and final is not None:
            self._finish(trial, final)
        elif trial.status == "ERROR":
            self._queue_pending(trial)
            self.failed.add(trial.trial_id)
            self.writer.submit(lambda: self._close_failed(trial, "worker failed (closed on --resume)"))
        else:
            self._queue_pending(trial)

    def _finish(self, trial, record: FinalRecord) -> None:
        if record.rows:  # the last steps travel with the final record
            self.pending.setdefault(trial.trial_id, (trial, []))[1].extend((r.step, r.metrics) for r in record.rows)
        self._queue_pending(trial)
        if record.failed:
            self.failed.add(trial.trial_id)
            self.writer.submit(lambda: self._close_failed(trial, record.failed_reason))
            self._report(trial, "failed")
            return
        self.finished.add(trial.trial_id)
        self.writer.submit(lambda: self._close_finished(trial, record))
        shown = {k: record.metrics[k] for k in HEADLINE_METRICS[:2] + ("offline_proxy_mean",) if k in record.metrics}
        self._report(trial, "finished", shown)

    def _report(self, trial, outcome: str, metrics: dict[str, float] | None = None) -> None:
        """One progress line through the reporter the CLI installed (bib_ray.progress): the cell's name
        (or the trial's id), k/N over every trial that ended, elapsed and estimated time left."""
        from bib_ray.progress import current

        cell = CellConfig.from_config(trial.config)
        name = cell.name if cell else f"trial {trial.trial_id}"
        ended = len(self.finished) + len(self.failed)  # stopped trials are in finished too
        current().ended(name, outcome, ended, self.total, metrics)

    def _run_to_close(self, trial) -> str | None:
        """The trial's run, to be closed by this process; None for a run an earlier driver closed
        FINISHED (its end time, tags and status are left as they were)."""
        run_id = self._run_for(trial)
        return None if trial.trial_id in self.closed_before else run_id

    def _close_failed(self, trial, reason: str) -> None:
        run_id = self._run_to_close(trial)
        if run_id is None:
            return
        self.store.set_tags(run_id, {"failed_reason": reason})
        self.store.set_status(run_id, "FAILED")

    def _close_finished(self, trial, record: FinalRecord) -> None:
        run_id = self._run_to_close(trial)
        if run_id is None:
            return
        # The final record's metrics (means over replicates) under the same names, at the trial's last
        # step and after its step rows: MLflow's latest value of each metric is then the final one.
        timing = record.timing
        final = {**record.metrics, "replicates": record.replicates}
        if timing is not None:
            final.update(design_seconds=timing.design_seconds, setup_seconds=timing.setup_seconds,
                         run_seconds=timing.run_seconds, trial_seconds=timing.trial_seconds)
        step = record.step or self.last_step.get(trial.trial_id, 0)
        logged = retrying(lambda: self.store.client.get_run(run_id)).data.metrics
        if FINAL_ONLY_METRIC not in logged:  # a driver killed mid-close may have logged it already
            self.store.log_metrics(run_id, final, step)
        self.store.set_tags(run_id, {"lm_loads_in_worker": record.worker.lm_loads, "worker_pid": record.worker.pid,
                                     "node": record.worker.node, **record.provenance})
        if "alphabet" in record.provenance:  # the letters designs are made of (inferred for user data)
            self.store.log_params(run_id, {"task.alphabet": record.provenance["alphabet"]})
        if record.designs:
            self.store.log_text(run_id, designs_csv(record.designs), "designs.csv")
        self.store.set_status(run_id, "FINISHED")

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._queue_pending(trial)
        if trial.trial_id not in self.finished and trial.trial_id not in self.failed:
            self.finished.add(trial.trial_id)
            self.stopped.add(trial.trial_id)
            self._report(trial, "stopped early")

            def close_stopped() -> None:
                run_id = self._run_to_close(trial)
                if run_id is None:
                    return
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
        self._report(trial, "failed")

    def on_experiment_end(self, trials: list, **info) -> None:
        # Wait for the writes, but raise a failed one in the driver (its flush), not inside Tune; during an
        # outage the driver does the waiting (where Ctrl-C can end it), so Tune's stop is not held up.
        self._queue_pending()
        if not self.store_down():
            self.writer.drain(raise_error=False)

    def open_run_ids(self) -> list[str]:
        """Child runs this callback opened and did not close (after the queued writes are done; at once,
        without waiting, while the store is down)."""
        if not self.store_down():
            self.flush()
        return [run for tid, run in self.runs.items() if tid not in self.finished and tid not in self.failed]
