"""Driver-side Tune callback: each trial becomes one nested MLflow child run under a parent run.

Why a driver callback (not logging inside trials): one process writes to the store, so a SQLite file
on the head node works for a whole cluster; and the callback can find a trial's run again by its
``trial_id`` tag after a resume or a retry, so a trial never gets two runs and a retried step is never
logged twice. (Ray's MLflowLoggerCallback creates a new run per start, which duplicates runs on
resume, and cannot nest them or tag them per trial.)
"""

from __future__ import annotations

import csv
import io
import time
from typing import Any

from ray.tune import Callback

from bib_ray.distributed.trainable import trial_spec
from bib_ray.tracking.store import Store, flatten, retrying

FLUSH_SECONDS = 2.0
FINAL_ONLY_METRIC = "design_seconds"  # present in a trial's final record only
SKIP_METRICS = {"step", "final", "seeds", "done", "training_iteration", "time_this_iter_s", "time_total_s",
                "timestamp", "worker_pid", "pid", "iterations_since_restore", "time_since_restore",
                "lm_loads_in_worker", "seed"}


def designs_csv(rows: list[dict]) -> str:
    """The designs table of a final result as CSV text."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


class MLflowTrialCallback(Callback):
    """Logs params, per-step metrics, final metrics, designs and status of every trial."""

    def __init__(self, store: Store, parent_id: str, tags: dict[str, Any]) -> None:
        self.store = store
        self.parent_id = parent_id
        self.tags = tags
        self.runs: dict[str, str] = {}
        self.last_step: dict[str, int] = {}
        self.finished: set[str] = set()
        self.failed: set[str] = set()
        self.pending: dict[str, list[tuple[int, dict]]] = {}
        self.tagged_node: set[str] = set()
        self.flushed_at = time.monotonic()

    def __getstate__(self) -> dict:
        """Tune pickles its run config (callbacks included): keep the store's address, not its client."""
        state = dict(self.__dict__)
        state["store"] = (self.store.uri, self.store.experiment)
        state["pending"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        uri, experiment = state["store"]
        self.__dict__.update(state)
        self.store = Store(uri, experiment)

    # --- run lookup --------------------------------------------------------------------------------
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
                    "seed": ",".join(str(s) for s in trial.config.get("seeds") or [spec.engine.seed])}
            if cell:
                tags["cell"] = cell
                tags["cell_key"] = trial.config["cell"].get("key", "")
            run_id = self.store.create_run(cell or f"trial-{trial_id}", tags, self.parent_id)
            params = flatten(spec.model_dump(mode="json"))
            params["seeds"] = tags["seed"]
            self.store.log_params(run_id, params)
            self.last_step[trial_id] = 0
        self.runs[trial_id] = run_id
        return run_id

    # --- Tune hooks ---------------------------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._run_for(trial)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        run_id = self._run_for(trial)
        trial_id = trial.trial_id
        if result.get("final"):
            self._finish(trial, run_id, result)
            return
        if "node" in result and trial_id not in self.tagged_node:
            self.store.set_tags(run_id, {"node": result["node"]})
            self.tagged_node.add(trial_id)
        for row in result.get("history") or []:
            step = int(row["step"])
            if step <= self.last_step.get(trial_id, 0):
                continue  # a retried attempt replays steps already logged: same seed, same numbers
            metrics = {k: v for k, v in row.items() if k not in SKIP_METRICS}
            self.pending.setdefault(trial_id, []).append((step, metrics))
            self.last_step[trial_id] = step
        if time.monotonic() - self.flushed_at > FLUSH_SECONDS:
            self.flush()

    def flush(self, trial_id: str | None = None) -> None:
        """Write buffered per-step metrics (one batched call per trial instead of one per step)."""
        ids = [trial_id] if trial_id is not None else list(self.pending)
        for tid in ids:
            rows = self.pending.pop(tid, [])
            if rows:
                self.store.log_metric_rows(self.runs[tid], rows)
        if trial_id is None:
            self.flushed_at = time.monotonic()

    def close_from_result(self, trial, run_id: str, result: dict) -> None:
        """Close a run whose trial finished while no driver was listening (used on resume)."""
        self.runs[trial.trial_id] = run_id
        self._finish(trial, run_id, result)

    def _finish(self, trial, run_id: str, result: dict) -> None:
        self.flush(trial.trial_id)
        if result.get("failed_reason"):
            self.store.set_tags(run_id, {"failed_reason": result["failed_reason"]})
            self.store.set_status(run_id, "FAILED")
            self.failed.add(trial.trial_id)
            return
        # The final record's metrics (seed means) under the same names, at the last iteration: MLflow's
        # latest value of each metric is then exactly Tune's last result.
        final = {k: v for k, v in result.items() if k not in SKIP_METRICS and k not in ("designs_table", "history")}
        final_step = int(result.get("step") or self.last_step.get(trial.trial_id, 0) + 1)
        logged = retrying(lambda: self.store.client.get_run(run_id)).data.metrics
        if FINAL_ONLY_METRIC not in logged:  # a driver killed mid-close may have logged it already
            self.store.log_metrics(run_id, final, final_step)
        self.store.set_tags(run_id, {"lm_loads_in_worker": result.get("lm_loads_in_worker"),
                                     "worker_pid": result.get("worker_pid"), "node": result.get("node", "")})
        if result.get("designs_table"):
            self.store.log_text(run_id, designs_csv(result["designs_table"]), "designs.csv")
        self.store.set_status(run_id, "FINISHED")
        self.finished.add(trial.trial_id)
        shown = {k: result[k] for k in ("normalized_max", "normalized_median", "offline_proxy_mean") if k in result}
        print(f"[bib-ray] trial {trial.trial_id} finished: " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items()),
              flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        run_id = self._run_for(trial)
        self.flush(trial.trial_id)
        if trial.trial_id not in self.finished and trial.trial_id not in self.failed:
            self.store.set_tags(run_id, {"stopped": "early stopping (scheduler)"})
            self.store.set_status(run_id, "FINISHED")
            self.finished.add(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        run_id = self._run_for(trial)
        self.flush(trial.trial_id)
        reason = "worker failed"
        error_file = getattr(trial, "error_file", None) or ""
        try:
            text = open(error_file).read().strip().splitlines() if error_file else []
            reason = text[-1][:500] if text else reason
        except OSError:
            pass
        self.store.set_tags(run_id, {"failed_reason": reason})
        self.store.set_status(run_id, "FAILED")
        self.failed.add(trial.trial_id)

    def on_experiment_end(self, trials: list, **info) -> None:
        self.flush()

    def open_run_ids(self) -> list[str]:
        """Child runs this callback opened and did not close."""
        return [run for tid, run in self.runs.items() if tid not in self.finished and tid not in self.failed]
