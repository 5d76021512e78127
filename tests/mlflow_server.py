"""A real MLflow tracking server on loopback, for tests that must go through HTTP like a cluster does.

Use the fixture from any test module::

    from mlflow_server import mlflow_server  # noqa: F401  (pytest finds it by name)

    def test_x(mlflow_server):  # the URI, e.g. http://127.0.0.1:41234
        ...

The server keeps runs in SQLite and *proxies* artifacts (``--serve-artifacts --artifacts-destination``),
so new experiments get ``mlflow-artifacts:/`` locations and every artifact upload and download goes over
HTTP, as it must for a client on another machine. (With ``--default-artifact-root <folder>`` instead, a
client writes straight into that folder and the test would not exercise the server's artifact path.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

START_TIMEOUT_S = 60.0


def free_port() -> int:
    """A port nobody listens on now (the OS picks it for a socket bound to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's whole process group (uvicorn and its workers), SIGKILL if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything left in the group
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def launch_mlflow_server(workdir: Path, port: int, log_path: Path) -> subprocess.Popen:
    """Start ``mlflow server`` on ``port`` over ``workdir``'s SQLite store and artifact folder, in its own
    process group; the same ``workdir`` and ``port`` again restart the same server (an outage ending)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    # No background job runner (8 extra processes); the tracking API does not need it.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", f"sqlite:///{workdir / 'mlruns.db'}",
           "--serve-artifacts", "--artifacts-destination", str(workdir / "artifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_until_healthy(url: str, proc: subprocess.Popen, timeout_s: float = START_TIMEOUT_S) -> bool:
    """True once the server answers ``/health``; False if it exits or ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None and not _healthy(url):
        time.sleep(0.25)
    return proc.poll() is None and _healthy(url)


stop_server = _stop


@contextlib.contextmanager
def running_mlflow_server(workdir: Path, timeout_s: float = START_TIMEOUT_S) -> Iterator[str]:
    """Start ``mlflow server`` (SQLite backend, proxied artifacts, 1 worker) and yield its URI; stop it after."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    last_log = ""
    for attempt in range(3):  # the free port can be taken between our check and the server's bind
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = workdir / f"server-{attempt}.log"
        proc = launch_mlflow_server(workdir, port, log_path)
        try:
            if wait_until_healthy(url, proc, timeout_s):
                yield url
                return
            last_log = log_path.read_text(errors="replace")[-3000:]
            if proc.poll() is None:
                raise RuntimeError(f"mlflow server did not answer {url}/health in {timeout_s:.0f} s:\n{last_log}")
        finally:
            _stop(proc)
        if "address already in use" not in last_log.lower():
            break
    raise RuntimeError(f"mlflow server exited at start:\n{last_log}")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """The URI of a fresh MLflow server for this test module (stopped when the module's tests end)."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as url:
        yield url
