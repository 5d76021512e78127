"""SIGTERM (what Slurm and Kubernetes send to stop a job) is handled like Ctrl-C: open MLflow runs
KILLED, Ray's processes stopped, the --resume command printed, exit code 143 (128 + 15); then --resume
finishes the rest. It used to end in exit 134 with a Ray crash dump, the parent RUNNING, Ray workers
alive and no way back printed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from helpers import TINY_BASE
from test_reliability import _children, _runs, _start, _wait_for_progress

BASE = {**TINY_BASE, "engine": {**TINY_BASE["engine"], "steps": 120}}


def _session_processes(sid: int) -> list[int]:
    """Processes of the session the driver leads (it was started with start_new_session): the driver,
    and the Ray processes it started."""
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    return [int(pid) for pid, s in (line.split() for line in out.splitlines() if line.strip()) if int(s) == sid]


@pytest.mark.fault
@pytest.mark.parametrize("command", ["ablate", "search"])
def test_sigterm_stops_like_ctrl_c_then_resume_finishes(tmp_path: Path, command: str):
    name = f"sigterm_{command}"
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    if command == "ablate":
        plan = {"name": name, "base": BASE, "variants": ["forward", "learned"], "adaptive_eta": [False],
                "baseline": False, "seeds": [0, 1], "concurrency": 2}
        (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
        args = ["ablate", "plan.yaml", "--output", str(tmp_path / "report")]
    else:
        space = {"name": name, "base": BASE, "trials": 4, "concurrency": 2, "scheduler": {"type": "none"},
                 "report_every": 10, "params": {"engine.lr": {"type": "loguniform", "low": 0.01, "high": 1.0}}}
        (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
        args = ["search", "space.yaml", "--best-output", str(tmp_path / "best.yaml")]
    args += ["--tracking-uri", uri, "--storage", str(tmp_path / "runs")]
    driver = _start(args, tmp_path, env={"BIB_RAY_TEST_STEP_DELAY_S": "0.05"})  # 6 s+ per cell

    _wait_for_progress(driver)  # one cell or trial ended in Tune, the others still run
    ray_processes = len(_session_processes(driver.pid)) - 1
    assert ray_processes >= 2  # Ray's processes run in the driver's session: the check below can fail
    os.kill(driver.pid, signal.SIGTERM)  # to the driver only, as `kill PID` or Kubernetes does
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 143, (driver.returncode, err[-3000:])
    assert "terminated (SIGTERM)" in err and f"bib-ray {command} " in err and "--resume" in err
    assert "Traceback" not in err and "core dumped" not in err.lower()
    deadline = time.monotonic() + 30
    while _session_processes(driver.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _session_processes(driver.pid) == []  # no Ray worker left behind
    runs = _runs(uri, name)
    assert runs and not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags][0]
    assert parent.info.status == "KILLED"
    children = _children(runs)
    assert {c.info.status for c in children} == {"FINISHED", "KILLED"}, [c.info.status for c in children]

    resume = err.split("Resume with:", 1)[1].strip().splitlines()[0].split()
    assert resume[:3] == ["bib-ray", command, args[1]] and "--resume" in resume
    resumed = _start(resume[1:], tmp_path)  # the printed command, as the user pastes it
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    runs = _runs(uri, name)
    assert [r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags] == [parent.info.run_id]
    children = _children(runs)
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    assert [r for r in _runs(uri, name) if r.info.status == "RUNNING"] == []
