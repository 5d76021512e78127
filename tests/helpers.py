"""Helpers shared by the Ray/MLflow tests: tiny specs and CLI runs in a subprocess."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

TINY_BASE = {
    "task": "tfbind8",
    "lm_pretrain": {"hidden": 16, "layers": 1, "heads": 2, "intermediate": 32, "steps": 20, "batch_size": 32},
    "engine": {"designs": 16, "steps": 6, "aux_hidden": 8, "aux_epochs": 20},
}


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``bib-ray ARGS`` in a fresh interpreter, as a user runs it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "bib_ray.cli", *args], cwd=cwd, env=full_env, text=True,
                          capture_output=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2, one line on stderr naming the problem, no traceback."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], err[-2000:])
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("bib-ray: error:") or "usage:" in line]
    assert lines, err
    last = err.splitlines()[-1]
    assert last.startswith("bib-ray: error:") or "error:" in last, err
    for needle in needles:
        assert needle in last, (needle, last)


@contextlib.contextmanager
def ray_session_with_cache(root: Path):
    """For module-scoped Ray tests: a cache folder of their own, and Ray shut down afterwards."""
    import ray

    old = os.environ.get("BIB_RAY_CACHE")
    os.environ["BIB_RAY_CACHE"] = str(root / "cache")
    try:
        yield root
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("BIB_RAY_CACHE", None)
        else:
            os.environ["BIB_RAY_CACHE"] = old


def assert_no_running_runs(uri: str) -> None:
    """No MLflow run in the store at ``uri`` is left RUNNING (a store that was never created has none)."""
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return
    client = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    running = [r.info.run_id for r in client.search_runs(ids, "attributes.status = 'RUNNING'")] if ids else []
    assert not running, running
