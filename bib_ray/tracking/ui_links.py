"""Where a researcher finds an experiment's runs in the MLflow UI, and how to open it.

Why: MLflow 3's UI opens an experiment on its GenAI overview (an empty "Traces 0" page), so a
search's or an ablation's runs sit behind an unmarked switch. What MLflow 3.17's UI does with the
address ``#/experiments/<id>...`` (checked in headless Chromium against a real ``mlflow ui``; the
slow test tests/test_mlflow_ui_browser.py keeps checking it):

- no tab: the GenAI overview; ``/runs`` alone: the runs, but inside the GenAI navigation;
- ``/runs?workflowType=machine_learning``: the model-training view's runs table, where child runs
  sit folded under their parent while the table is sorted by creation time (the default);
- sorted by anything else the table lists every run flat, so ``orderByKey`` = run name
  (ascending) shows each cell or trial at once, in name order (task/variant/LM/seed for a plan).
  Without the ``/runs`` tab the UI redirects and drops the sort.

The UI routes inside the URL fragment, so the query string sits after the ``#``. A tracking URI
that is itself an MLflow server serves the UI too; a local store (SQLite, a folder) needs
``mlflow ui`` started on it, which listens on 127.0.0.1:5000 by default.

The hint for a local store names a port that is free on this machine now (the first from 5000 up that
a socket can bind on 127.0.0.1): on a shared machine 5000 is often some other user's ``mlflow ui``,
and the printed address would then open their store, not this one.
"""

from __future__ import annotations

import shlex
import socket
from urllib.parse import urlencode

from bib_ray.redact import mask_secrets

DEFAULT_UI_ADDRESS = "http://127.0.0.1:5000"
DEFAULT_UI_PORT = 5000
PORT_TRIES = 100
RUNS_TAB = "runs"
RUNS_TABLE_QUERY = {"workflowType": "machine_learning",  # the model-training view, not GenAI
                    "orderByKey": "tags.`mlflow.runName`",  # any sort but creation time: children unfolded
                    "orderByAsc": "true"}


def is_server_uri(tracking_uri: str) -> bool:
    """True when the tracking URI is an MLflow server (http or https), which serves its own UI."""
    return tracking_uri.lower().startswith(("http://", "https://"))


def runs_table_url(tracking_uri: str, experiment_id: str, ui_address: str = DEFAULT_UI_ADDRESS) -> str:
    """The address of the experiment's runs table in the UI's model-training view, every run
    (parent and children) listed, sorted by name.

    On the server itself when ``tracking_uri`` is http(s); else on ``ui_address``, where
    ``mlflow ui`` on the local store listens.
    """
    base = tracking_uri if is_server_uri(tracking_uri) else ui_address
    query = urlencode(RUNS_TABLE_QUERY)
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/{RUNS_TAB}?{query}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str, ui_address: str = DEFAULT_UI_ADDRESS) -> str:
    """The address of one run's page in the UI (on the server when ``tracking_uri`` is http(s), else on
    ``ui_address``, where ``mlflow ui`` serves a local store by default); secrets masked."""
    base = tracking_uri if is_server_uri(tracking_uri) else ui_address
    return mask_secrets(f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}")


def ui_command(tracking_uri: str, port: int = DEFAULT_UI_PORT) -> str:
    """The shell command that serves a local store's UI (``mlflow ui`` binds 127.0.0.1 unless told otherwise)."""
    return f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri)} --port {port}"


def free_port(start: int = DEFAULT_UI_PORT, host: str = "127.0.0.1", tries: int = PORT_TRIES) -> int:
    """The first port from ``start`` up that a socket can bind on ``host`` now (one that serves, or is
    held, cannot be bound); ``start`` itself when none of ``tries`` ports is free."""
    for port in range(start, start + tries):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    return start


def ui_hint(tracking_uri: str, experiment_id: str) -> str:
    """What the CLI prints after a search or ablation so the user can open its runs: for a local
    store, the ``mlflow ui`` command on a port free now and then the runs-table address on it; for a
    server, the address."""
    if is_server_uri(tracking_uri):
        return f"MLflow runs table: {runs_table_url(tracking_uri, experiment_id)}"
    port = free_port()
    url = runs_table_url(tracking_uri, experiment_id, ui_address=f"http://127.0.0.1:{port}")
    return f"browse the runs: {ui_command(tracking_uri, port)}\nthen open: {url}"
