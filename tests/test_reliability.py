"""Crashes and interrupts: SIGKILL of the driver then --resume, a worker dying mid-trial, NaN
losses, Ctrl-C. MLflow must end with one FINISHED child per trial and nothing left RUNNING.

The fault tests (all but the NaN one) start Ray and a driver subprocess twice: marked ``fault``, left
out of the default run and run by CI's second step (``python -m pytest -q -m fault``, .ci/run). They
are as small as a kill mid-run allows: four trials or cells of 40 steps, two at a time, so the kill
lands while one has finished and others have not. "runs lost" is counted from the store after the
resume, before any assertion on it, so a lost run shows in the closing summary as well as failing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from helpers import TINY_BASE

STEPS, TRIALS = 40, 4
SLOW_BASE = {**TINY_BASE, "engine": {**TINY_BASE["engine"], "steps": STEPS}}
SPACE = {"name": "reliable_search", "base": SLOW_BASE, "trials": TRIALS, "concurrency": 2,
         "params": {"engine.lr": {"type": "loguniform", "low": 0.01, "high": 1.0}},
         "scheduler": {"type": "none"}, "report_every": 10}
ASHA_SPACE = {**SPACE, "scheduler": {"type": "asha", "grace_period": 10, "reduction_factor": 2}}  # as shipped
RECOVERED = "crash and interrupt recoveries"
LOST = "runs lost after recovering (expected runs not FINISHED)"


# Each design step sleeps this long (a test-only hook): a tiny cell then lasts seconds, not a fraction of
# one, so "some cells finished, some half-run" is still true when the interrupt lands, even on a quiet,
# fast machine (without it all four cells could end while Tune handled the signal: a run with nothing left).
STEP_DELAY = {"BIB_RAY_TEST_STEP_DELAY_S": "0.1"}


def _start(args: list[str], root: Path, env: dict | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "BIB_RAY_CACHE": str(root / "cache"), **STEP_DELAY, **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "bib_ray.cli", *args], cwd=root, env=full_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _wait_for_progress(proc: subprocess.Popen, pattern: str = r"\[bib-ray\] 1/\d+ ", timeout: float = 400.0) -> None:
    """Read the driver's stdout until a progress line matches: the driver's own, real-time account of Tune
    (MLflow's statuses are written by a thread that may lag it by seconds, so a child still RUNNING in
    MLflow can be a cell Tune has long finished)."""
    import queue
    import re
    import threading

    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.time()))
        except queue.Empty:
            break
        if not line:
            raise AssertionError(f"the driver ended before a line matched {pattern!r}")
        if re.match(pattern, line):
            return
        threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    raise AssertionError(f"no progress line matched {pattern!r} in {timeout:.0f} s")


def _runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def _wait_for(predicate, timeout: float = 240.0) -> None:
    start = time.time()
    while time.time() - start < timeout:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - the store may be mid-creation
            pass
        time.sleep(0.5)
    raise AssertionError("condition not reached in time")


def _children(runs: list) -> list:
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def _lost(children: list, key: str, expected: int) -> int:
    """How many of the ``expected`` trials or cells (told apart by the tag ``key``) have no FINISHED child."""
    return expected - len({c.data.tags.get(key) for c in children if c.info.status == "FINISHED"})


def _search_args(root: Path, uri: str) -> list[str]:
    return ["search", "space.yaml", "--tracking-uri", uri, "--storage", str(root / "runs"),
            "--best-output", str(root / "best.yaml")]


@pytest.mark.fault
def test_sigkill_then_resume_finishes_remaining_trials(tmp_path, observed):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    driver = _start(_search_args(tmp_path, uri), tmp_path)
    _wait_for(lambda: any(r.info.status == "FINISHED" for r in _children(_runs(uri, "reliable_search"))))
    os.kill(driver.pid, signal.SIGKILL)  # the driver, by its own pid
    driver.wait(timeout=60)
    before = _children(_runs(uri, "reliable_search"))
    finished_before = {r.data.tags["trial_id"] for r in before if r.info.status == "FINISHED"}
    assert 1 <= len(finished_before) < TRIALS
    resumed = _start(_search_args(tmp_path, uri) + ["--resume"], tmp_path)
    out, err = resumed.communicate(timeout=600)
    runs = _runs(uri, "reliable_search")
    children = _children(runs)
    observed.record(LOST, "search", _lost(children, "trial_id", TRIALS))
    assert resumed.returncode == 0, err[-3000:]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_ids = [c.data.tags["trial_id"] for c in children]
    assert len(children) == TRIALS and len(set(trial_ids)) == TRIALS  # exactly one live child per trial
    assert all(c.info.status == "FINISHED" for c in children)
    assert finished_before <= set(trial_ids)  # finished trials were kept, not re-sampled
    for child in children:  # each step logged once, none missing
        steps = [m.step for m in MlflowClient(uri).get_metric_history(child.info.run_id, "forward_loss")]
        assert sorted(steps) == list(range(1, STEPS + 1)) + [STEPS]  # the final record at the last step
    # Optuna kept its history in its own storage (beside the MLflow store): the resumed search continued
    # the same study, which holds every trial, those finished before the kill included.
    import optuna

    study = optuna.load_study(study_name="reliable_search", storage=f"sqlite:///{tmp_path}/optuna.db")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == TRIALS and not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    lrs = {round(float(c.data.params["engine.lr"]), 12) for c in children}
    assert {round(t.params["engine.lr"], 12) for t in complete} == lrs
    observed.record(RECOVERED, "driver SIGKILL + resume (search)")


def _steps(uri: str, run_id: str, metric: str = "forward_loss") -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, metric))


@pytest.mark.fault
def test_ablation_sigkill_then_resume(tmp_path, observed):
    plan = {"name": "reliable_plan", "base": SLOW_BASE, "variants": ["forward", "learned"],
            "adaptive_eta": [False], "baseline": False, "seeds": [0, 1], "concurrency": 2}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    args = ["ablate", "plan.yaml", "--tracking-uri", uri, "--storage", str(tmp_path / "runs"),
            "--output", str(tmp_path / "report")]
    driver = _start(args, tmp_path)
    _wait_for(lambda: any(r.info.status == "FINISHED" for r in _children(_runs(uri, "reliable_plan"))))
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=60)
    before = _children(_runs(uri, "reliable_plan"))
    finished_before = {c.data.tags["cell"]: c for c in before if c.info.status == "FINISHED"}
    # The kill landed mid-run: some cells had finished, not all four.
    assert 1 <= len(finished_before) < TRIALS, sorted(finished_before)
    history_before = {cell: _steps(uri, c.info.run_id) for cell, c in finished_before.items()}
    resumed = _start(args + ["--resume"], tmp_path)
    out, err = resumed.communicate(timeout=600)
    runs = _runs(uri, "reliable_plan")
    children = _children(runs)
    observed.record(LOST, "ablate", _lost(children, "cell", TRIALS))
    assert resumed.returncode == 0, err[-3000:]
    cells = sorted(c.data.tags["cell"] for c in children)
    assert cells == sorted(f"tfbind8/{v}/lm0/seed{s}" for v in ("forward", "learned") for s in (0, 1))
    assert all(c.info.status == "FINISHED" for c in children)
    by_cell = {c.data.tags["cell"]: c for c in children}
    for cell, old in finished_before.items():  # cells finished before the kill were left alone
        assert by_cell[cell].info.run_id == old.info.run_id
        assert by_cell[cell].info.end_time == old.info.end_time
        assert _steps(uri, old.info.run_id) == history_before[cell]
    for child in children:  # each step once, none missing, in the resumed cells too
        assert _steps(uri, child.info.run_id) == list(range(1, STEPS + 1)) + [STEPS]  # and the final record
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert "| tfbind8 | learned | 2 |" in out or "| tfbind8 | learned | 1x2 |" in out, out[-2000:]
    observed.record(RECOVERED, "driver SIGKILL + resume (ablate)")


@pytest.mark.fault
def test_worker_crash_is_retried(tmp_path, observed):
    space = {**SPACE, "name": "crashy_search", "trials": 2, "max_failures": 2,
             "base": {**SLOW_BASE, "engine": {**SLOW_BASE["engine"], "steps": 20}}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    marks = tmp_path / "crash_marks"
    proc = _start(_search_args(tmp_path, uri), tmp_path,
                  {"BIB_RAY_TEST_CRASH_AT_STEP": "8", "BIB_RAY_TEST_CRASH_DIR": str(marks)})
    out, err = proc.communicate(timeout=600)
    children = _children(_runs(uri, "crashy_search"))
    observed.record(LOST, "worker deaths", _lost(children, "trial_id", 2))
    assert proc.returncode == 0, err[-3000:]
    crashed = list(marks.glob("crashed-*"))
    assert len(crashed) == 2  # each trial's first worker died at step 8
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    for child in children:
        steps = [m.step for m in MlflowClient(uri).get_metric_history(child.info.run_id, "forward_loss")]
        assert sorted(steps) == list(range(1, 21)) + [20]  # no step twice after the retry; the final at 20
    observed.record(RECOVERED, "worker death retried", len(crashed))


def test_nan_losses_fail_one_cell_and_the_rest_goes_on(tmp_path):
    plan = {"name": "nan_plan", "base": TINY_BASE, "variants": ["forward", "learned"], "adaptive_eta": [False],
            "baseline": False, "seeds": [0],
            "overrides": [{"match": {"variant": "learned"}, "set": {"engine.target": 1e200}}]}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    proc = _start(["ablate", "plan.yaml", "--tracking-uri", uri, "--storage", str(tmp_path / "runs"),
                   "--output", str(tmp_path / "report")], tmp_path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    children = {c.data.tags["variant"]: c for c in _children(_runs(uri, "nan_plan"))}
    assert children["forward"].info.status == "FINISHED"
    assert children["learned"].info.status == "FAILED"
    reason = children["learned"].data.tags["failed_reason"]
    assert "NaN or infinite" in reason and "\n" not in reason
    assert "Token authentication" not in err  # Ray's opt-out notice: nothing a user can act on
    assert f"--backend-store-uri {uri}" in out and "/runs?workflowType=machine_learning" in out  # the runs table
    assert "| tfbind8 | forward | 1 |" in out and "learned" not in out.split("|---")[1]


def _check_whole(uri: str, child, steps: int) -> list[int]:
    """A FINISHED child ran to its end: every step once and the final record at the last step; or ASHA
    stopped it at a rung (tagged), with every step up to there once. Returns its logged steps."""
    logged = _steps(uri, child.info.run_id)
    if "stopped" in child.data.tags:
        assert logged == list(range(1, len(logged) + 1)) and len(logged) % 10 == 0, logged
        assert "design_seconds" not in child.data.metrics
    else:
        assert logged == list(range(1, steps + 1)) + [steps], (child.data.tags.get("cell"), logged)
        assert "design_seconds" in child.data.metrics
    return logged


@pytest.mark.fault
@pytest.mark.parametrize("command", ["search", "ablate"])
def test_ctrl_c_to_the_process_group_then_resume(tmp_path, command, observed):
    """Ctrl-C as a terminal sends it (SIGINT to the driver's whole process group, Ray's processes
    included) while some trials are done and some half-run; then ``--resume``. The search runs ASHA
    as shipped, so resume restores the scheduler too."""
    name = f"interrupted_{command}"
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    if command == "search":
        (tmp_path / "space.yaml").write_text(yaml.safe_dump({**ASHA_SPACE, "name": name}))
        args = _search_args(tmp_path, uri)
    else:
        plan = {"name": name, "base": SLOW_BASE, "variants": ["forward", "learned"], "adaptive_eta": [False],
                "baseline": False, "seeds": [0, 1]}
        (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
        args = ["ablate", "plan.yaml", "--tracking-uri", uri, "--storage", str(tmp_path / "runs"),
                "--output", str(tmp_path / "report")]
    expected = TRIALS
    driver = _start(args, tmp_path)

    _wait_for_progress(driver)  # one trial or cell ended in Tune, the others still run
    os.killpg(driver.pid, signal.SIGINT)  # the driver leads its own session: its group is the terminal's
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 130, (driver.returncode, err[-3000:])
    assert f"bib-ray {command} " in err and "--resume" in err and "Traceback" not in err
    runs = _runs(uri, name)
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags][0]
    assert parent.info.status == "KILLED"
    children = _children(runs)
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert finished and len(finished) < expected
    for child in finished:  # a half-run child is never marked FINISHED
        _check_whole(uri, child, STEPS)
    assert {c.info.status for c in children} <= {"FINISHED", "KILLED"}, [c.info.status for c in children]
    kept = {c.info.run_id: (c.info.end_time, _steps(uri, c.info.run_id)) for c in finished}

    resumed = _start(args + ["--resume"], tmp_path)
    out, err = resumed.communicate(timeout=600)
    runs = _runs(uri, name)
    key = "trial_id" if command == "search" else "cell"
    observed.record(LOST, command, _lost(_children(runs), key, expected))
    assert resumed.returncode == 0, err[-3000:]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [p.info.run_id for p in parents] == [parent.info.run_id] and parents[0].info.status == "FINISHED"
    children = _children(runs)
    assert len(children) == expected and len({c.data.tags[key] for c in children}) == expected  # once each
    assert {c.info.status for c in children} == {"FINISHED"}
    for child in children:
        _check_whole(uri, child, STEPS)
    for run_id, (end_time, steps) in kept.items():  # what had finished was left alone
        now = next(c for c in children if c.info.run_id == run_id)
        assert now.info.end_time == end_time and _steps(uri, run_id) == steps
    observed.record(RECOVERED, f"Ctrl-C to the process group + resume ({command})")


def test_a_trial_the_study_finished_before_the_kill_can_report_again(tmp_path):
    """The race the SIGKILL test hit: Optuna's storage holds trial 0 COMPLETE, Tune's saved state still
    runs it, so the resumed search runs it again and its reports reach the searcher. They must not fail
    the search (Ray's plain OptunaSearch raises UpdateFinishedTrialError there); the study keeps the
    value it had."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from bib_ray.distributed.optuna_searcher import BibOptunaSearch

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db")
    optuna.create_study(study_name="s", storage=storage, direction="maximize")
    searcher = BibOptunaSearch(space={"x": tune.uniform(0.0, 1.0)}, metric="m", mode="max",
                                     study_name="s", storage=storage)
    assert "x" in searcher.suggest("t0")
    optuna.load_study(study_name="s", storage=storage).tell(0, 0.75)  # finished in the study, not in Tune
    result = {"m": 0.5, "training_iteration": 1}
    with pytest.raises(UpdateFinishedTrialError):
        OptunaSearch.on_trial_result(searcher, "t0", result)  # what Ray's own searcher does here
    searcher.on_trial_result("t0", result)
    searcher.on_trial_complete("t0", {"m": 0.75, "training_iteration": 2})
    (trial,) = optuna.load_study(study_name="s", storage=storage).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.75
