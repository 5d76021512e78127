"""Thin, retrying access to an MLflow tracking store.

Why not ``mlflow.start_run``: fluent runs are process-global state, while a search driver keeps one
parent and many children open at once. The client API takes run ids explicitly. Writes retry on
SQLite's "database is locked", so several processes can log to one SQLite file without losing a
metric; past a handful of writers, use an MLflow tracking server (``--tracking-uri http://...``).

Outages: a thread that must lose nothing (the driver's MLflow writer) runs its store calls inside
:func:`riding_out_outages`; there a call that finds the store unreachable (connection refused, MLflow's
HTTP retries spent, a 502/503) waits and tries again, for as long as the outage lasts, instead of
failing. The call that failed is the one retried, so nothing is written twice and later writes keep
their order behind it. Other threads (the CLI's reads, a report) fail as before, in one line.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from bib_ray.errors import BibInputError, first_line
from bib_ray.tracking.metric_keys import mlflow_key
from bib_ray.redact import mask_secrets, remember

T = TypeVar("T")
DEFAULT_URI = "sqlite:///mlruns.db"
MAX_PARAM_LENGTH = 6000


def resolve_tracking_uri(flag: str | None) -> str:
    """``--tracking-uri``, else $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db in the working folder."""
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.is_absolute():
            uri = "sqlite:///" + str(Path.cwd() / db)
            db = Path.cwd() / db
        if not db.parent.is_dir():
            raise BibInputError("tracking-uri", f"folder {str(db.parent)!r} of the SQLite store does not exist",
                                "create it or give another --tracking-uri")
    return uri


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a SQLite store go beside the database (``<db folder>/mlartifacts``), not into
    ./mlruns of whatever folder the command ran in; servers choose their own location (None)."""
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts"
        return folder.as_uri()
    return None


OUTAGE_POLL_SECONDS = 5.0
OUTAGE_WORDS = ("max retries exceeded", "connection refused", "failed to establish a new connection",
                "connection aborted", "connection reset", "remote end closed", "remotedisconnected",
                "service unavailable", "bad gateway", "503 error", "502 error", "name or service not known",
                "unable to open database file")
_RIDE_OUT = threading.local()


def is_outage(err: BaseException) -> bool:
    """Whether an error says the store cannot be reached (as opposed to refusing what was asked)."""
    text = f"{type(err).__name__}: {err}".lower()
    return any(word in text for word in OUTAGE_WORDS)


@contextlib.contextmanager
def riding_out_outages(notice: Callable[[str, float, bool], None]) -> Iterator[None]:
    """In this thread, store calls wait through an outage of any length (see the module text).

    ``notice(first_error_line, seconds_down, down)`` is called once when an outage starts (``down`` True,
    0 s), then every minute it lasts, and once when the store answers again (``down`` False)."""
    _RIDE_OUT.notice = notice
    try:
        yield
    finally:
        _RIDE_OUT.notice = None


def retrying(call: Callable[[], T], attempts: int = 30) -> T:
    """Run an MLflow call, retrying transient store errors (SQLite locks, busy servers); inside
    :func:`riding_out_outages`, also waiting through an unreachable store."""
    delay = 0.05
    attempt = 0
    notice = getattr(_RIDE_OUT, "notice", None)
    down_since: float | None = None  # when this call first found the store unreachable
    told = 0.0
    while True:
        try:
            result = call()
        except Exception as err:  # noqa: BLE001 - MLflow wraps SQLAlchemy errors in several types
            if notice is not None and is_outage(err):
                now = time.monotonic()
                down_since = down_since if down_since is not None else now
                if now == down_since or now - told >= 60:
                    notice(first_line(err)[:200], now - down_since, True)
                    told = now
                time.sleep(OUTAGE_POLL_SECONDS)
                continue
            text = str(err).lower()
            transient = "locked" in text or "busy" in text or "timeout" in text or "temporarily" in text
            attempt += 1
            if not transient or attempt >= attempts:
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)
            continue
        if down_since is not None:
            notice("", time.monotonic() - down_since, False)
        return result


class Store:
    """One MLflow tracking URI, one experiment."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        from mlflow.tracking import MlflowClient

        os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
        for name in ("mlflow.store.db.utils", "alembic", "mlflow.store.tracking.sqlalchemy_store"):
            logging.getLogger(name).setLevel(logging.WARNING)  # schema set-up chatter on a new store
        if remember(tracking_uri) != tracking_uri:  # MLflow's "View run ... at <uri>" lines would show it
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        existing = retrying(lambda: self.client.get_experiment_by_name(experiment))
        if existing is None:
            location = default_artifact_location(tracking_uri)
            try:
                self.experiment_id = retrying(lambda: self.client.create_experiment(experiment, location))
            except Exception:  # noqa: BLE001 - created meanwhile by another process
                self.experiment_id = retrying(lambda: self.client.get_experiment_by_name(experiment)).experiment_id
        else:
            if existing.lifecycle_stage == "deleted":
                retrying(lambda: self.client.restore_experiment(existing.experiment_id))
            self.experiment_id = existing.experiment_id
        self.experiment = experiment
        self._last_stamp_ms = 0

    # runs ---------------------------------------------------------------------------------------
    def create_run(self, name: str, tags: dict[str, str], parent_id: str | None = None) -> str:
        """A new run (child of ``parent_id`` when given) and its id."""
        tags = {k: mask_secrets(str(v)) for k, v in tags.items()}
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        run = retrying(lambda: self.client.create_run(self.experiment_id, tags=tags, run_name=name))
        return run.info.run_id

    def find_runs(self, filter_string: str, max_results: int = 5000) -> list:
        """Runs of this experiment matching an MLflow filter string."""
        return retrying(lambda: self.client.search_runs([self.experiment_id], filter_string,
                                                        max_results=max_results))

    def children(self, parent_id: str) -> list:
        """Child runs of a parent."""
        return self.find_runs(f"tags.mlflow.parentRunId = '{parent_id}'")

    def set_status(self, run_id: str, status: str) -> None:
        """FINISHED, FAILED, KILLED or RUNNING."""
        if status == "RUNNING":
            retrying(lambda: self.client.update_run(run_id, status="RUNNING"))
        else:
            retrying(lambda: self.client.set_terminated(run_id, status=status))

    # logging ------------------------------------------------------------------------------------
    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Params (stringified, long values cut); existing equal params are fine on resume."""
        from mlflow.entities import Param

        existing = retrying(lambda: self.client.get_run(run_id)).data.params
        todo = [Param(k, mask_secrets(str(v))[:MAX_PARAM_LENGTH]) for k, v in params.items() if k not in existing]
        for start in range(0, len(todo), 100):
            chunk = todo[start:start + 100]
            retrying(lambda: self.client.log_batch(run_id, params=chunk))

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int) -> int:
        """Finite numeric metrics at ``step``; returns how many were logged."""
        return self.log_metric_rows(run_id, [(step, metrics)])

    def log_metric_rows(self, run_id: str, rows: list[tuple[int, dict[str, Any]]]) -> int:
        """Many steps' metrics in as few batched writes as MLflow allows (1000 per call), under their MLflow
        keys (:mod:`bib_ray.tracking.metric_keys`: ``normalized_max`` is ``normalized/max`` there).

        Each call's timestamp is later than the previous call's: MLflow's latest value of a metric is the
        one with the highest (step, timestamp), so a value logged after another at the same step (a
        trial's final record at its last step) must never share its millisecond."""
        from mlflow.entities import Metric

        now = self._last_stamp_ms = max(int(time.time() * 1000), self._last_stamp_ms + 1)
        batch = [Metric(mlflow_key(k), float(v), now, step) for step, metrics in rows for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        for start in range(0, len(batch), 1000):
            chunk = batch[start:start + 1000]
            retrying(lambda: self.client.log_batch(run_id, metrics=chunk))
        return len(batch)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        """Tags (stringified)."""
        from mlflow.entities import RunTag

        batch = [RunTag(k, mask_secrets(str(v))) for k, v in tags.items()]  # a URI in a tag loses its password
        retrying(lambda: self.client.log_batch(run_id, tags=batch))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """A text artifact."""
        retrying(lambda: self.client.log_text(run_id, text, artifact_file))

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        """A file artifact."""
        retrying(lambda: self.client.log_artifact(run_id, str(path), artifact_path))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict to dotted keys (``engine.lr``), the param names every run uses."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out

