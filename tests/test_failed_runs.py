"""A search or ablation that ends on an error leaves no MLflow run RUNNING: its parent and every open
child are closed FAILED (KILLED when stopped). And a bad value anywhere in a search space is refused in
one line before Ray starts, instead of failing inside every worker, once per retry."""

from __future__ import annotations

import pytest
import yaml

from bib_ray.distributed.tune_job import TuneJob, close_open_runs, execute
from bib_ray.tracking.store import Store
from bib_ray.trial_records import TrialPlan
from bib_ray.spec import RunSpec
from helpers import TINY_BASE, assert_no_run_running, assert_one_line_error, run_cli


def test_close_open_runs_closes_the_parent_and_open_children_only(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/m.db", "closing")
    parent = store.create_run("parent", {})
    running = [store.create_run(f"c{i}", {}, parent_id=parent) for i in range(2)]
    done = store.create_run("done", {}, parent_id=parent)
    store.set_status(done, "FINISHED")
    close_open_runs(store, parent, "FAILED")
    status = {run_id: store.client.get_run(run_id).info.status for run_id in (parent, *running, done)}
    assert status == {parent: "FAILED", running[0]: "FAILED", running[1]: "FAILED", done: "FINISHED"}
    assert_no_run_running(tmp_path / "m.db")


def test_an_error_inside_the_tune_run_marks_the_parent_failed(tmp_path):
    """Tune refuses the job (an invalid mode) after the parent run was opened: the error goes on, and
    the parent is FAILED, not RUNNING."""
    store = Store(f"sqlite:///{tmp_path}/m.db", "broken_job")
    job = TuneJob(name="broken_job", kind="search", store=store, plan=TrialPlan(base=RunSpec()),
                  param_space={"engine.lr": 0.1}, resources={"cpu": 1}, metric="normalized_max", mode="sideways",
                  num_samples=1, max_concurrent=1)
    with pytest.raises(Exception, match="mode"):
        execute(job, tmp_path / "runs", resume=False)
    parents = store.find_runs("tags.`bib_ray.kind` = 'search'")
    assert [p.info.status for p in parents] == ["FAILED"]
    assert_no_run_running(tmp_path / "m.db")


@pytest.mark.parametrize("param,needle", [
    ({"engine.variant": {"type": "categorical", "values": ["learned", "bogus"]}}, "value 'bogus'"),
    ({"engine.steps": {"type": "uniform", "low": 5, "high": 20}}, "params.engine.steps value"),
    ({"engine.lr": {"type": "categorical", "values": [0.1, "fast"]}}, "value 'fast'"),
])
def test_every_value_of_a_space_is_checked_before_ray_starts(tmp_path, param, needle):
    space = {"name": "bad_values", "base": TINY_BASE, "trials": 2, "params": param}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    proc = run_cli(["search", "space.yaml", "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                    "--storage", str(tmp_path / "runs")], cwd=tmp_path)
    assert_one_line_error(proc, needle, store=tmp_path / "m.db")
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "runs").exists()  # nothing started
