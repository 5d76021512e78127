"""A tracking-server outage longer than MLflow's HTTP retry budget loses nothing.

A real ``mlflow server`` on loopback is killed once the first cell or trial has a run, and restarted on
the same port over the same store after the client's retries (cut to one, a second apart) have long run
out. The driver holds its writes through the outage and sends them, in order, once the server answers:
every cell or trial ends FINISHED with each step's metrics exactly once (no duplicate (metric, step)), and the command says what
happened. It used to skip every later write and leave the parent RUNNING with 0 of 8 children.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from helpers import TINY_BASE
from mlflow_server import free_port, launch_mlflow_server, stop_server, wait_until_healthy
from test_reliability import LOST, RECOVERED, _children, _lost, _runs, _start, _wait_for

STEPS = 40
BASE = {**TINY_BASE, "engine": {**TINY_BASE["engine"], "steps": STEPS}}
OUTAGE_S = 20  # MLflow's client gives up after about 2 s with the budget below
SHORT_RETRY_BUDGET = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                      "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def _job_files(command: str, name: str, root: Path) -> tuple[list[str], int]:
    """The command line of a 4-cell ablation or a 4-trial search, and how many children it makes."""
    if command == "ablate":
        plan = {"name": name, "base": BASE, "variants": ["forward", "learned"], "adaptive_eta": [False],
                "baseline": False, "seeds": [0, 1], "concurrency": 2}
        (root / "plan.yaml").write_text(yaml.safe_dump(plan))
        return ["ablate", "plan.yaml", "--output", str(root / "report")], 4
    space = {"name": name, "base": BASE, "trials": 4, "concurrency": 2, "scheduler": {"type": "none"},
             "params": {"engine.lr": {"type": "loguniform", "low": 0.01, "high": 1.0}}}
    (root / "space.yaml").write_text(yaml.safe_dump(space))
    return ["search", "space.yaml", "--best-output", str(root / "best.yaml")], 4


class LoopbackServer:
    """A real ``mlflow server`` on a free loopback port over a store in ``root``; stopped and started again
    on the same port and store (the outage), stopped by pid at the end."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "server"
        self.dir.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.start()

    def start(self) -> None:
        self.proc = launch_mlflow_server(self.dir, self.port, self.dir / "server.log")
        assert wait_until_healthy(self.url, self.proc)

    def stop(self) -> None:
        stop_server(self.proc)


def _whole(url: str, name: str, expected: int) -> tuple[list, list[str]]:
    """The job's children, and what is wrong with them against one FINISHED parent and ``expected``
    FINISHED children, each with every step's ``forward_loss`` once (the final record once more at the
    last step) and its designs.csv (empty when nothing is)."""
    runs = _runs(url, name)
    children = _children(runs)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    problems = []
    if len(parents) != 1 or parents[0].info.status != "FINISHED":
        problems.append(f"parents: {[(p.info.run_id, p.info.status) for p in parents]}")
    if len(children) != expected or any(c.info.status != "FINISHED" for c in children):
        problems.append(f"children: {[(c.info.run_name, c.info.status) for c in children]}")
    client = MlflowClient(url)
    for child in children:
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "forward_loss"))
        if steps != list(range(1, STEPS + 1)) + [STEPS]:
            problems.append(f"{child.info.run_name} steps {steps}")
        if "designs.csv" not in {a.path for a in client.list_artifacts(child.info.run_id)}:
            problems.append(f"{child.info.run_name} has no designs.csv")
    return children, problems


@pytest.mark.fault
@pytest.mark.parametrize("command", ["ablate", "search"])
def test_an_outage_past_the_retry_budget_loses_nothing(tmp_path: Path, command: str, observed):
    name = f"outage_{command}"
    server = LoopbackServer(tmp_path)
    driver = None
    try:
        args, expected = _job_files(command, name, tmp_path)
        driver = _start(args + ["--tracking-uri", server.url, "--storage", str(tmp_path / "runs")], tmp_path,
                        env=SHORT_RETRY_BUDGET)
        _wait_for(lambda: len(_children(_runs(server.url, name))) >= 1, timeout=400)
        server.stop()  # the outage starts while the cells run and write
        down_at = time.monotonic()
        time.sleep(OUTAGE_S)
        assert driver.poll() is None, driver.communicate()[1][-3000:]  # the driver waits, it does not fail
        server.start()
        outage = time.monotonic() - down_at
        out, err = driver.communicate(timeout=600)
        children, problems = _whole(server.url, name, expected)
        observed.record(LOST, f"tracking outage ({command})", _lost(children, "trial_id", expected))
        assert driver.returncode == 0, (driver.returncode, out[-2000:], err[-3000:])
        assert outage > 10  # far past the client's retry budget
        assert "MLflow unreachable" in out and "writes held in order" in out and "answers again" in out
        assert "Traceback" not in err
        assert not problems, problems
        observed.record(RECOVERED, f"tracking outage of {OUTAGE_S}s past the retry budget ({command})")
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        server.stop()


@pytest.mark.fault
@pytest.mark.parametrize("command, stop", [("ablate", "SIGINT"), ("search", "SIGINT"), ("ablate", "SIGTERM")])
def test_stopped_during_an_outage_then_resumed_loses_nothing(tmp_path: Path, command: str, stop: str, observed):
    """Ctrl-C (SIGINT) or SIGTERM (what a batch scheduler sends) to the driver while the tracking server is
    down (Ctrl-C to a terminal's whole process group, Ray's processes included, is
    tests/test_reliability.py's case; once in seven runs here, that signal ended the driver at once with
    -2 and no output in this outage case, not yet explained, see README): the driver cannot send what it holds, so it says
    how many writes are not sent, where they are kept and the command that sends them; that command, once
    the server is back, leaves every cell FINISHED with each step once. The cell that finished during the
    outage (its rows, final record and close held in memory when the driver stopped) is the one that
    would be lost."""
    import os
    import signal

    from test_reliability import _wait_for_progress

    name = f"spool_{command}"
    server = LoopbackServer(tmp_path)
    driver = None
    try:
        args, expected = _job_files(command, name, tmp_path)
        args += ["--tracking-uri", server.url, "--storage", str(tmp_path / "runs")]
        driver = _start(args, tmp_path, env=SHORT_RETRY_BUDGET)
        _wait_for_progress(driver, r"\[bib-ray\] 1/4 ")  # one cell ended while the server was up
        server.stop()
        _wait_for_progress(driver, r"\[bib-ray\] 2/4 ")  # one more ended during the outage
        os.kill(driver.pid, getattr(signal, stop))
        out, err = driver.communicate(timeout=300)
        assert driver.returncode == {"SIGINT": 130, "SIGTERM": 143}[stop], (driver.returncode, out[-2000:], err[-3000:])
        assert "Traceback" not in err, err[-3000:]
        assert "while MLflow was unreachable" in err and "not sent" in err and "result.json" in err, err[-2000:]
        resume = [line.strip() for line in err.splitlines() if "--resume" in line]
        assert resume and resume[-1].startswith(f"bib-ray {command} "), err[-2000:]

        server.start()
        again = _start(args + ["--resume"], tmp_path, env=SHORT_RETRY_BUDGET)
        out, err = again.communicate(timeout=900)
        children, problems = _whole(server.url, name, expected)
        observed.record(LOST, f"{stop} during an outage, resumed ({command})", _lost(children, "trial_id", expected))
        assert again.returncode == 0, (again.returncode, out[-2000:], err[-3000:])
        assert not problems, problems
        observed.record(RECOVERED, f"{stop} during a tracking outage, then --resume ({command})")
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        server.stop()
