#!/usr/bin/env python
"""Screenshot (or dump the rendered page of) an experiment's runs table in a real MLflow UI.

Why: the README shows what a researcher sees after an ablation, and the slow browser test checks that
the address bib-ray prints (bib_ray.tracking.ui_links.runs_table_url) really opens the runs table with
the child runs listed, not MLflow 3's GenAI overview. Both need the real UI rendered by a real browser:
this script starts ``mlflow server`` on a free loopback port against a tracking store, loads the
runs-table address (or, with ``--run NAME``, that run's metric charts) in headless Chromium (the OS
package: ``apt-get install chromium``), writes a PNG
and/or the rendered DOM, and stops the browser and the server by process id.

    python scripts/mlflow_screenshot.py --tracking-uri sqlite:////tmp/x/mlruns.db --experiment my_plan \
        --screenshot docs/mlflow_runs.png
    python scripts/mlflow_screenshot.py --tracking-uri sqlite:////tmp/x/mlruns.db --experiment my_plan \
        --dump-dom /tmp/page.html

An http(s) tracking URI is a server already: the page is loaded from it and nothing is started.

MLflow's runs table shows no metric columns until a user picks them. ``--columns max_score,median_score``
picks them the way the UI's own "share view" does: it writes the view (sort by run name, those metric
columns) to the experiment tag ``mlflow.sharedViewState.<key>`` and opens the
page with ``viewStateShareKey=<key>``. That writes to the store: use it on a copy of the database.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qsl, urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from bib_ray.tracking.metric_keys import mlflow_key  # noqa: E402
from bib_ray.tracking.ui_links import is_server_uri, runs_table_url  # noqa: E402

SERVER_START_S = 90.0
BROWSER_TIMEOUT_S = 120.0
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # where the UI's "share view" keeps a view, by key
SHARED_VIEW_KEY = "bib_ray_screenshot"
METRIC_COLUMN_WIDTH = 170  # wide enough for a metric's full name
RUN_NAME_COLUMN, RUN_NAME_WIDTH = "attributes.`Run Name`", 260  # wide enough for task/variant/lmN/seedN
SEARCH_SETTINGS = ("searchFilter", "orderByKey", "orderByAsc", "startTime", "lifecycleFilter",
                   "modelVersionFilter", "datasetsFilter")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The path of an installed Chromium (or Chrome), or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A port on loopback ``host`` that nobody listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _answers(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"{address}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM to the process group this script started (its own session), SIGKILL what lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


@contextlib.contextmanager
def serving_ui(tracking_uri: str, log_path: Path, host: str = "127.0.0.1",
               start_s: float = SERVER_START_S) -> Iterator[str]:
    """Yield the address of a UI for ``tracking_uri``: the server itself for http(s), else a fresh
    ``mlflow server`` on loopback ``host`` and a free port (stopped by pid when the block ends)."""
    if not host.startswith("127."):
        raise ValueError(f"host {host!r} is not a loopback address (127.x.y.z)")
    if is_server_uri(tracking_uri):
        yield tracking_uri.rstrip("/")
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job runner: the UI needs none
    port = free_port(host)
    address = f"http://{host}:{port}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
           "--host", host, "--port", str(port), "--workers", "1",
           # the one Host header and Origin the browser sends (the defaults know only localhost/127.0.0.1)
           "--allowed-hosts", f"{host}:{port}", "--cors-allowed-origins", address]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + start_s
        while time.monotonic() < deadline and proc.poll() is None and not _answers(address):
            time.sleep(0.25)
        if proc.poll() is not None or not _answers(address):
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"mlflow server on {address} did not answer /health in {start_s:.0f} s:\n{tail}")
        yield address
    finally:
        stop_group(proc)


def render(url: str, screenshot: Path | None = None, dom: Path | None = None, window: str = "1600,900",
           budget_ms: int = 20000, chromium: str | None = None, timeout_s: float = BROWSER_TIMEOUT_S) -> None:
    """Load ``url`` in headless Chromium; write a PNG to ``screenshot`` and/or the rendered DOM to ``dom``.

    ``--virtual-time-budget`` lets the page run that many milliseconds of (fast-forwarded) time, with
    network fetches holding the clock, so MLflow's runs table has loaded and drawn before the capture.
    A throwaway profile keeps one run's UI settings out of the next.
    """
    chromium = chromium or find_chromium()
    if chromium is None:
        raise RuntimeError("no Chromium found; install the OS package: apt-get install chromium")
    for target, flag in ((screenshot, "--screenshot"), (dom, "--dump-dom")):
        if target is None:
            continue
        with tempfile.TemporaryDirectory(prefix="bib_ray_chromium_") as profile:
            cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--hide-scrollbars", "--no-first-run", "--mute-audio", f"--user-data-dir={profile}",
                   f"--window-size={window}", f"--virtual-time-budget={budget_ms}"]
            cmd += [f"--screenshot={target}"] if flag == "--screenshot" else ["--dump-dom"]
            cmd.append(url)
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            out = open(target, "wb") if flag == "--dump-dom" else subprocess.DEVNULL
            try:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, start_new_session=True)
                try:
                    _, err = proc.communicate(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    raise RuntimeError(f"Chromium did not finish {url} in {timeout_s:.0f} s") from None
                finally:
                    stop_group(proc, grace_s=5)
            finally:
                if out is not subprocess.DEVNULL:
                    out.close()
            if proc.returncode != 0 or not Path(target).is_file() or Path(target).stat().st_size == 0:
                raise RuntimeError(f"Chromium failed on {url} (exit {proc.returncode}):\n"
                                   f"{err.decode(errors='replace')[-2000:]}")


def share_view(tracking_uri: str, exp_id: str, metrics: list[str], key: str = SHARED_VIEW_KEY) -> None:
    """Store a view of the runs table that shows ``metrics`` as columns, sorted by run name like
    runs_table_url's, as the experiment's shared view ``key``."""
    from mlflow.tracking import MlflowClient

    columns = [f"metrics.`{mlflow_key(name)}`" for name in metrics]  # bib-ray's names, MLflow's keys
    state = {"orderByKey": "tags.`mlflow.runName`", "orderByAsc": True,
             "selectedColumns": columns, "columnOrder": [RUN_NAME_COLUMN, *columns],  # widths apply to ordered columns only
             "columnWidths": {column: METRIC_COLUMN_WIDTH for column in columns} | {RUN_NAME_COLUMN: RUN_NAME_WIDTH}}
    MlflowClient(tracking_uri=tracking_uri).set_experiment_tag(exp_id, SHARED_VIEW_TAG + key, json.dumps(state))


def with_shared_view(url: str, key: str = SHARED_VIEW_KEY) -> str:
    """``url`` opening shared view ``key``. The UI ignores a shared view when the address also
    carries search settings (sort, filter), so those go; the shared view holds the same sort."""
    base, _, fragment = url.partition("#")
    route, _, query = fragment.partition("?")
    kept = [(k, v) for k, v in parse_qsl(query) if k not in SEARCH_SETTINGS]
    return f"{base}#{route}?{urlencode(kept + [('viewStateShareKey', key)])}"


def experiment_id(tracking_uri: str, name: str) -> str:
    """The id of experiment ``name`` in the store; a clear error when it is not there."""
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(name)
    if experiment is None:
        raise SystemExit(f"mlflow_screenshot: no experiment {name!r} in {tracking_uri}")
    return experiment.experiment_id


def run_id(tracking_uri: str, exp_id: str, name: str) -> str:
    """The id of the run named ``name`` (a cell, ``tfbind8/learned/lm0/seed0``) in the experiment."""
    from mlflow.tracking import MlflowClient

    found = MlflowClient(tracking_uri=tracking_uri).search_runs(
        [exp_id], f"attributes.run_name = '{name}'", max_results=1)
    if not found:
        raise SystemExit(f"mlflow_screenshot: no run named {name!r} in experiment {exp_id}")
    return found[0].info.run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", required=True, help="sqlite:///..., a folder, or http(s)://server")
    parser.add_argument("--experiment", required=True, help="experiment name (the plan's or search's name)")
    parser.add_argument("--screenshot", type=Path, help="write a PNG here")
    parser.add_argument("--dump-dom", type=Path, help="write the rendered HTML here")
    parser.add_argument("--window-size", default="1600,900", help="browser window WIDTH,HEIGHT")
    parser.add_argument("--budget-ms", type=int, default=20000, help="virtual time the page gets to render")
    parser.add_argument("--host", default="127.0.0.1",
                        help="loopback address for the server; MLflow's assistant panel opens by itself "
                             "on 127.0.0.1/localhost, so 127.0.0.2 gives a screenshot without it")
    parser.add_argument("--query", default="", help="extra UI query parameters, e.g. compareRunsMode=CHART")
    parser.add_argument("--columns", default="",
                        help="comma-separated metric names to show as columns (writes a shared-view tag "
                             "to the experiment: use a copy of the store)")
    parser.add_argument("--run", default="",
                        help="a run's name: open that run's metric charts instead of the runs table")
    args = parser.parse_args(argv)
    if args.screenshot is None and args.dump_dom is None:
        parser.error("give --screenshot and/or --dump-dom")
    exp_id = experiment_id(args.tracking_uri, args.experiment)
    columns = [name.strip() for name in args.columns.split(",") if name.strip()]
    if columns:
        share_view(args.tracking_uri, exp_id, columns)
    with tempfile.TemporaryDirectory(prefix="bib_ray_mlflow_ui_") as work:
        with serving_ui(args.tracking_uri, Path(work) / "server.log", host=args.host) as address:
            url = runs_table_url(args.tracking_uri, exp_id, ui_address=address)
            if args.run:
                url = f"{address}/#/experiments/{exp_id}/runs/{run_id(args.tracking_uri, exp_id, args.run)}/model-metrics"
            elif columns:
                url = with_shared_view(url)
            if args.query:
                url += "&" + args.query.lstrip("&")
            print(f"loading {url}", flush=True)
            render(url, screenshot=args.screenshot, dom=args.dump_dom, window=args.window_size,
                   budget_ms=args.budget_ms)
    for path in (args.screenshot, args.dump_dom):
        if path is not None:
            print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
