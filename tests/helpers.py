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


ERROR_PREFIX = "bib-ray: error:"
ERROR_WORDS = ("error", "traceback", "exception")


def error_line_problems(code: int | None, err: list[str], needle: str) -> list[str]:
    """What is wrong with an in-process command's ending, against exit code 2 and one ``bib-ray: error:``
    line on stderr naming ``needle`` (empty when nothing is): the caller records it, then asserts it."""
    problems = []
    if code != 2:
        problems.append(f"exit code {code}, not 2")
    if len(err) != 1 or not err[0].startswith(ERROR_PREFIX):
        problems.append(f"stderr is not one error line: {err}")
    elif "Traceback" in err[0] or needle not in err[0]:
        problems.append(f"error line lacks {needle!r} or holds a traceback: {err[0]}")
    return problems


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str, store: Path | None = None,
                          store_must_exist: bool = False) -> None:
    """Exit code 2, exactly one error line on stderr (``bib-ray: error: ...``, the last line), naming
    the problem, no traceback; and no MLflow run left RUNNING in the SQLite ``store``.

    Library notices that start Ray print before the error (Ray's token-authentication banner, for
    one); they are allowed when no error word appears in them, so the one error line is the only
    line that reports a problem. ``store_must_exist`` makes the RUNNING check mandatory: the case
    failed after its store was opened, so the file must be there to be checked.
    """
    from observed import OBSERVED

    err = proc.stderr.strip()
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(ERROR_PREFIX)]
    others = [line for line in lines[:-1] if any(word in line.lower() for word in ERROR_WORDS)]
    problems = []
    if proc.returncode != 2:
        problems.append(f"exit code {proc.returncode}, not 2: {proc.stdout[-2000:]} {err[-2000:]}")
    if not lines or len(errors) != 1 or lines[-1] != errors[0] or others:
        problems.append(f"stderr is not one error line, last: {lines}")
    else:
        problems += [f"{needle!r} not in {errors[0]!r}" for needle in needles if needle not in errors[0]]
    if store_must_exist and (store is None or not store.exists()):
        problems.append(f"store {store} was never created")
    if store is not None and store.exists():
        try:
            assert_no_run_running(store)
        except AssertionError as running:
            problems.append(f"a run left RUNNING: {running}")
    OBSERVED.record_case("bad-input cases", str(proc.args[3]) if len(proc.args) > 3 else "?", problems)
    assert not problems, problems


def assert_no_run_running(db: Path) -> int:
    """No run RUNNING in any experiment of the SQLite store ``db``; returns how many runs it holds."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    running = [(r.info.run_name, r.info.run_id) for r in runs if r.info.status == "RUNNING"]
    assert not running, running
    return len(runs)


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
