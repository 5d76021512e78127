"""The report through a real MLflow tracking server: runs, metrics and artifacts all over HTTP."""

from __future__ import annotations


from mlflow.tracking import MlflowClient

from bib_ray.tracking.report import build_report, find_parent, run_report
from bib_ray.tracking.store import Store

from ablation_fixtures import make_synthetic_ablation
from mlflow_server import mlflow_server  # noqa: F401 - the fixture
from bib_ray.tracking.metric_keys import mlflow_key

NAME = "server_plan"
REPORT_FILES = {"table.md", "table.csv", "paired.md", "paired.csv", "scores.png", "paired.png", "trajectory.png",
                "conclusions.md", "conclusions.csv"}


def test_report_through_the_server(mlflow_server, tmp_path, capsys):  # noqa: F811 - the fixture
    store = Store(mlflow_server, NAME)
    parent = make_synthetic_ablation(store, NAME, ["fixed", "learned+eta"], [0, 1], failed=True)
    report = build_report(store, parent, tmp_path / "out")
    assert [(e["variant"], e["seeds"]) for e in report.summary] == [("fixed", 2), ("learned+eta", 2)]

    client = MlflowClient(tracking_uri=mlflow_server)  # a fresh client, as another machine would have
    experiment = client.get_experiment_by_name(NAME)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # artifacts go through the server
    ids = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(ids, f"tags.`bib_ray.kind` = 'ablation' and tags.`bib_ray.name` = '{NAME}'")
    assert [r.info.run_id for r in parents] == [parent]
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    statuses = sorted(r.info.status for r in children)
    assert statuses == ["FAILED"] + ["FINISHED"] * 4
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert all(len(client.get_metric_history(r.info.run_id, mlflow_key("normalized_max"))) == 6 for r in finished)
    assert all("designs.csv" in {a.path for a in client.list_artifacts(r.info.run_id)} for r in finished)

    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert logged == {f"report/{name}" for name in REPORT_FILES}
    downloaded = client.download_artifacts(parent, "report/table.csv", str(tmp_path / "download"))
    assert open(downloaded).read() == report.table_csv.read_text() == report.csv

    assert find_parent(client, NAME).info.run_id == parent
    code = run_report(parent, tracking_uri=mlflow_server, output=str(tmp_path / "cli"))
    out = capsys.readouterr().out
    assert code == 0 and "| tfbind8 | learned+eta | 2 |" in out
    assert "skipped cells: 1 failed" in out and mlflow_server in out
