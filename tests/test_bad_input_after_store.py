"""Bad input that search and ablate can only detect after the MLflow store is open and Ray is up.

The other bad-input cases fail before any store exists, so "no run left RUNNING" is never at stake
there. Here the store already holds an earlier search or ablation of the same name (an ablation's
parent is reopened when cells remain), and the mistake is found late: more GPUs per trial than the
cluster has, ``--resume`` with nothing to resume, a ``--storage`` path that is a file. Each must end
as one error line with exit code 2, and the store must hold exactly the runs it held before, with
the same statuses: nothing left RUNNING, nothing reopened, nothing lost.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ablation_fixtures import local_store, make_synthetic_ablation
from helpers import TINY_BASE, assert_no_run_running, assert_one_line_error, run_cli

NAME = "late_errors"
SPACE = {"name": NAME, "base": TINY_BASE, "trials": 2, "scheduler": {"type": "none"},
         "params": {"engine.lr": {"type": "loguniform", "low": 0.01, "high": 1.0}}}
PLAN = {"name": NAME, "base": TINY_BASE, "variants": ["forward"], "adaptive_eta": [False], "baseline": False,
        "seeds": [0]}


def _previous_search(store) -> None:
    parent = store.create_run(NAME, {"bib_ray.kind": "search", "bib_ray.name": NAME})
    for trial in ("t1", "t2"):
        child = store.create_run(f"trial-{trial}", {"trial_id": trial}, parent)
        store.log_metrics(child, {"normalized_max": 0.5}, 1)
        store.set_status(child, "FINISHED")
    store.set_status(parent, "FINISHED")


def _snapshot(uri: str) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return {r.info.run_id: r.info.status for r in runs}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One LM cache for these cases: the tiny default LM is pre-trained once, not per case."""
    return tmp_path_factory.mktemp("late_cache")


SLOW = pytest.mark.slow  # each case starts Ray in a fresh process: two stay in the default suite
CASES = [
    pytest.param("search", {"resources": {"cpu": 1, "gpu": 4}}, [], "resources.gpu", id="search-gpu-beyond-cluster",
                 marks=SLOW),
    pytest.param("search", {}, ["--resume"], "--resume", id="search-resume-nothing"),
    pytest.param("search", {}, ["--storage", "a_file"], "--storage", id="search-storage-is-a-file", marks=SLOW),
    pytest.param("ablate", {"resources": {"cpu": 1, "gpu": 4}}, [], "resources.gpu", id="ablate-gpu-beyond-cluster",
                 marks=SLOW),
    pytest.param("ablate", {}, ["--resume"], "--resume", id="ablate-resume-nothing", marks=SLOW),
    # Before the fix in tune_job.execute this one reopened the earlier parent, then crashed with a
    # traceback and left it RUNNING.
    pytest.param("ablate", {}, ["--storage", "a_file"], "--storage", id="ablate-storage-is-a-file"),
]


@pytest.mark.parametrize("command,change,flags,needle", CASES)
def test_late_bad_input_leaves_the_store_as_it_was(tmp_path, shared_cache, command, change, flags, needle):
    db = tmp_path / "m.db"
    uri = f"sqlite:///{db}"
    store = local_store(uri, NAME, tmp_path / "artifacts")
    if command == "search":
        _previous_search(store)
        (tmp_path / "in.yaml").write_text(yaml.safe_dump({**SPACE, **change}))
    else:
        make_synthetic_ablation(store, NAME, ["forward"], [0])  # a parent whose cells differ: it is reopened
        (tmp_path / "in.yaml").write_text(yaml.safe_dump({**PLAN, **change}))
    (tmp_path / "a_file").write_text("not a folder\n")
    before = _snapshot(uri)
    assert before and "RUNNING" not in before.values()
    args = [command, "in.yaml", "--tracking-uri", uri] + flags
    if "--storage" not in flags:
        args += ["--storage", str(tmp_path / "runs")]
    proc = run_cli(args, cwd=tmp_path, env={"BIB_RAY_CACHE": str(shared_cache)})
    assert_one_line_error(proc, needle, store=db, store_must_exist=True)
    assert _snapshot(uri) == before
    assert assert_no_run_running(db) == len(before)
