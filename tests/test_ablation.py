"""A tiny ablation on local Ray: one parent, 4 children, report = children's numbers, re-run skips."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from bib_ray.distributed.ablation import run_ablation
from bib_ray.distributed.plan import parse_plan
from bib_ray.tracking.store import Store

from helpers import TINY_BASE, assert_one_line_error, ray_session_with_cache, run_cli
from mlflow_server import mlflow_server  # noqa: F401  (fixture)
from bib_ray.tracking.metric_keys import named_metrics

PLAN = {"name": "tiny_ablation", "base": TINY_BASE, "variants": ["forward", "learned"], "adaptive_eta": [False],
        "baseline": False, "seeds": [0, 1], "concurrency": 2}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ablation_run(tmp_path_factory):
    with ray_session_with_cache(tmp_path_factory.mktemp("ablation")) as root:
        plan = parse_plan(PLAN, "plan")
        uri = f"sqlite:///{root}/mlruns.db"
        first = run_ablation(plan, plan.base, uri, storage=str(root / "runs"), out_dir=root / "report")
        second = run_ablation(plan, plan.base, uri, storage=str(root / "runs"), out_dir=root / "report2")
        yield plan, uri, first, second, root


def test_one_parent_four_children(ablation_run):
    plan, uri, first, _, _ = ablation_run
    store = Store(uri, plan.name)
    parents = [r for r in store.find_runs("tags.`bib_ray.kind` = 'ablation'") if "mlflow.parentRunId" not in r.data.tags]
    assert [p.info.run_id for p in parents] == [first.parent_id]
    children = store.children(first.parent_id)
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    tags = {(c.data.tags["variant"], c.data.tags["seed"], c.data.tags["adaptive_eta"], c.data.tags["task"])
            for c in children}
    assert tags == {(v, s, "false", "tfbind8") for v in ("forward", "learned") for s in ("0", "1")}
    assert {c.data.params["engine.variant"] for c in children} == {"forward", "learned"}


def test_report_equals_children_metrics(ablation_run):
    plan, uri, first, _, _ = ablation_run
    store = Store(uri, plan.name)
    children = store.children(first.parent_id)
    for row in first.report.summary:
        runs = [c for c in children if c.data.tags["variant"] == row["variant"]]
        for column, metric in (("max", "normalized_max"), ("median", "normalized_median"),
                               ("mean", "normalized_mean"), ("edit_distance", "mean_edit_distance")):
            values = np.array([named_metrics(c.data.metrics)[metric] for c in runs])
            assert row[f"{column}_mean"] == pytest.approx(values.mean(), rel=1e-12)
            assert row[f"{column}_std"] == pytest.approx(values.std(), rel=1e-12, abs=1e-15)


def test_report_files_and_artifacts(ablation_run):
    plan, uri, first, _, _ = ablation_run
    for path in first.report.paths:
        assert path.stat().st_size > 0
    for png in (first.report.scores_png, first.report.trajectory_png):
        from matplotlib.image import imread

        assert png.read_bytes()[:8] == PNG
        assert imread(png).shape[0] > 100
    store = Store(uri, plan.name)
    logged = {a.path for a in store.client.list_artifacts(first.parent_id, "report")}
    assert logged == {"report/table.md", "report/table.csv", "report/paired.md", "report/paired.csv",
                      "report/scores.png", "report/paired.png", "report/trajectory.png", "report/conclusions.md",
                      "report/conclusions.csv"}


def test_rerun_skips_finished_cells(ablation_run):
    plan, uri, first, second, _ = ablation_run
    assert len(second.skipped) == 4 and second.job is None
    assert second.parent_id == first.parent_id
    assert len(Store(uri, plan.name).children(first.parent_id)) == 4


def test_report_command_rebuilds_from_mlflow(ablation_run):
    plan, uri, first, _, root = ablation_run
    proc = run_cli(["report", plan.name, "--tracking-uri", uri, "--output", str(root / "cli_report")], cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| tfbind8 | learned | 2 |" in proc.stdout
    assert (root / "cli_report" / "table.csv").read_text() == first.report.csv


def test_report_reference_picks_the_variant_the_differences_compare_with(ablation_run, tmp_path, capsys):
    """README: ``--reference`` overrides the plan's reference variant. Against ``forward`` the paired table has
    the ``learned`` row, against ``learned`` the ``forward`` row, with the opposite differences (same pairs)."""
    import csv

    from bib_ray.cli import main

    plan, uri, first, _, _ = ablation_run
    tables = {}
    for reference in ("forward", "learned"):
        out = tmp_path / reference
        assert main(["report", plan.name, "--tracking-uri", uri, "--output", str(out), "--reference", reference]) == 0
        assert f"variant - {reference}" in capsys.readouterr().out
        tables[reference] = list(csv.DictReader((out / "paired.csv").open()))
    (vs_forward,), (vs_learned,) = tables["forward"], tables["learned"]
    assert (vs_forward["variant"], vs_forward["reference"]) == ("learned", "forward")
    assert (vs_learned["variant"], vs_learned["reference"]) == ("forward", "learned")
    assert vs_forward["pairs"] == vs_learned["pairs"] == "2"
    for column in ("max", "median", "mean"):
        assert float(vs_forward[f"{column}_diff"]) == pytest.approx(-float(vs_learned[f"{column}_diff"]), abs=1e-12)


@pytest.mark.slow  # a second Ray job of 4 trials (90 s on a loaded 2-core machine)
def test_force_reruns_finished_cells_under_a_new_parent(ablation_run, tmp_path):
    """README: re-running a plan skips FINISHED cells "unless ``--force``". On a copy of the store (so the
    other tests' store keeps one parent), force re-runs all four cells as new children of a new parent,
    keeps the old ones, and the seeded cells give the same numbers again."""
    import shutil

    plan, uri, first, _, root = ablation_run
    shutil.copy(root / "mlruns.db", tmp_path / "mlruns.db")
    copy = f"sqlite:///{tmp_path}/mlruns.db"
    forced = run_ablation(plan, plan.base, copy, storage=str(tmp_path / "runs"), out_dir=tmp_path / "report",
                          force=True)
    assert not forced.skipped and forced.parent_id != first.parent_id
    store = Store(copy, plan.name)
    old, new = store.children(first.parent_id), store.children(forced.parent_id)
    assert len(old) == 4 and len(new) == 4 and {c.info.status for c in new} == {"FINISHED"}
    assert not {c.info.run_id for c in old} & {c.info.run_id for c in new}
    before = {c.data.tags["cell"]: named_metrics(c.data.metrics)["normalized_max"] for c in old}
    after = {c.data.tags["cell"]: named_metrics(c.data.metrics)["normalized_max"] for c in new}
    assert after.keys() == before.keys() and after == pytest.approx(before, rel=1e-9)


def test_ablation_through_mlflow_server(mlflow_server, tmp_path, monkeypatch):
    """A real client: the ablation logs through `mlflow server`; MlflowClient finds it over REST."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    plan = parse_plan({**PLAN, "name": "served_ablation"}, "plan")
    outcome = run_ablation(plan, plan.base, mlflow_server, storage=str(tmp_path / "runs"), out_dir=tmp_path / "r")
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("served_ablation")
    parents = client.search_runs([experiment.experiment_id],
                                 "tags.`bib_ray.kind` = 'ablation' and tags.`bib_ray.name` = 'served_ablation'")
    parent = [p for p in parents if "mlflow.parentRunId" not in p.data.tags]
    assert [p.info.run_id for p in parent] == [outcome.parent_id]
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{outcome.parent_id}'")
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    names = {a.path for a in client.list_artifacts(outcome.parent_id, "report")}
    assert "report/table.csv" in names and "report/scores.png" in names
    local = client.download_artifacts(outcome.parent_id, "report/table.csv", str(tmp_path))
    assert open(local).read() == outcome.report.csv
    designs = client.list_artifacts(children[0].info.run_id)
    assert [a.path for a in designs] == ["designs.csv"]


BAD_PLANS = [
    ({"colour": "red"}, "colour"),
    ({"variants": ["forward", "sideways"]}, "variants"),
    ({"seeds": "zero"}, "seeds"),
    ({"overrides": [{"match": {"variant": "learned"}, "set": {"engine.nope": 1}}]}, "overrides"),
    ({"overrides": [{"match": {"colour": "red"}, "set": {"engine.lr": 0.1}}]}, "colour"),
    ({"tasks": ["tfbind9"]}, "tfbind9"),
    ({"base_from": "missing_best.yaml"}, "missing_best.yaml"),
    ({"base": {**TINY_BASE, "engine": {"lr": -1}}}, "engine.lr"),
]


@pytest.mark.parametrize("change,needle", BAD_PLANS)
def test_bad_plan_is_one_line_error(tmp_path, change, needle):
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump({**PLAN, **change}))
    proc = run_cli(["ablate", "plan.yaml", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"], cwd=tmp_path)
    assert_one_line_error(proc, needle, store=tmp_path / "m.db")
