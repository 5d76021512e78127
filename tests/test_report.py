"""The ablation report rebuilt from MLflow: numbers, table text, plots, artifacts, lookup, CLI."""

from __future__ import annotations

import csv
import io
import math
from types import SimpleNamespace

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from bib_ray.errors import BibInputError
from bib_ray.tracking.report import (build_report, collect_cells, find_parent, run_report, summarise, to_csv,
                                     to_markdown, trajectory_data, variant_label)

from ablation_fixtures import (STEPS, assert_trajectories_are_the_steps, cell_values, local_store,
                               make_synthetic_ablation)
from helpers import assert_one_line_error, run_cli
from bib_ray.tracking.metric_keys import named_metrics

NAME = "synth_plan"
VARIANTS = ["learned+eta", "forward"]  # deliberately not in table order
SEEDS = [0, 1]
TASKS = ("tfbind8", "csv")  # csv: no oracle, so the table falls back to proxy scores
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPORT_FILES = {"table.md", "table.csv", "paired.md", "paired.csv", "scores.png", "paired.png", "trajectory.png",
                "across_tasks.md", "across_tasks.csv", "conclusions.md", "conclusions.csv"}
COLUMN_METRICS = {
    "normalized": {"max": "normalized_max", "median": "normalized_median", "mean": "normalized_mean"},
    "proxy": {"max": "proxy_max", "median": "proxy_median", "mean": "proxy_mean"},
}


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    """A SQLite store with a stale and a current parent of NAME, one in another experiment, one empty."""
    root = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    store = local_store(uri, NAME, root / "artifacts")
    stale = make_synthetic_ablation(store, NAME, ["forward"], [0], failed=False)
    parent = make_synthetic_ablation(store, NAME, VARIANTS, SEEDS, tasks=TASKS, failed=True, killed=True)
    other_store = local_store(uri, "other_experiment", root / "other_artifacts")
    other = make_synthetic_ablation(other_store, "cross_exp", ["grad"], [0], failed=False)
    empty = store.create_run("empty", {"bib_ray.kind": "ablation", "bib_ray.name": "empty_plan"})
    report = build_report(store, parent, root / "out")
    return {"root": root, "uri": uri, "store": store, "client": MlflowClient(tracking_uri=uri), "parent": parent,
            "stale": stale, "other": other, "empty": empty, "report": report}


def _finished_children(client, parent):
    runs = client.search_runs([client.get_run(parent).info.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent}'")
    return [r for r in runs if r.info.status == "FINISHED"]


def test_summary_matches_numpy_over_the_children(ablation):
    client, report = ablation["client"], ablation["report"]
    groups: dict[tuple[str, str], list] = {}
    for run in _finished_children(client, ablation["parent"]):
        key = (run.data.tags["task"], variant_label(run.data.tags["variant"], run.data.tags["adaptive_eta"]))
        groups.setdefault(key, []).append(named_metrics(run.data.metrics))
    assert len(groups) == 4 and all(len(g) == 2 for g in groups.values())
    # table order: task, then forward before learned, without +eta before with
    assert [(e["task"], e["variant"]) for e in report.summary] == [
        ("csv", "forward"), ("csv", "learned+eta"), ("tfbind8", "forward"), ("tfbind8", "learned+eta")]
    for entry in report.summary:
        metrics = groups[(entry["task"], entry["variant"])]
        source = "proxy" if entry["task"] == "csv" else "normalized"
        assert entry["score"] == source and entry["seeds"] == 2 and entry["seed_list"] == SEEDS
        names = {**COLUMN_METRICS[source], "edit_distance": "mean_edit_distance",
                 "offline_proxy_mean": "offline_proxy_mean"}
        for column, metric in names.items():
            values = np.array([m[metric] for m in metrics])
            assert entry[f"{column}_mean"] == pytest.approx(np.mean(values), rel=1e-12, abs=1e-15)
            assert entry[f"{column}_std"] == pytest.approx(np.std(values), rel=1e-12, abs=1e-15)
            assert entry[f"{column}_std"] > 0  # the seeds differ, so ddof=0 std is not trivially 0


def test_finals_are_the_step_t_plus_1_record_and_bad_cells_are_skipped(ablation):
    report = ablation["report"]
    tf_forward = next(e for e in report.summary if e["task"] == "tfbind8" and e["variant"] == "forward")
    expected = [cell_values(0, 1, seed, STEPS)["normalized_max"] + 0.001 for seed in SEEDS]
    assert tf_forward["max_mean"] == pytest.approx(np.mean(expected), rel=1e-12)
    assert report.skipped == {"FAILED": 1, "KILLED": 1}
    assert all(e[k] < 50 for e in report.summary for k in e if k.endswith("_mean"))  # the 99s are out
    rows = collect_cells(ablation["client"], ablation["parent"])
    assert len(rows) == 8 and {r["status"] for r in rows} == {"FINISHED"}


def test_markdown_has_a_row_per_variant(ablation):
    report = ablation["report"]
    md = report.markdown
    assert md.splitlines()[0] == "| task | variant | n | max | median | mean | edit distance |"

    def with_interval(e, column):
        return (f"{e[column + '_mean']:.3f} ± {e[column + '_std']:.3f} "
                f"[{e[column + '_ci_low']:.3f}, {e[column + '_ci_high']:.3f}]")

    for e in report.summary:
        row = (f"| {e['task']} | {e['variant']} | 2 | {with_interval(e, 'max')} | {with_interval(e, 'median')} | "
               f"{with_interval(e, 'mean')} | {e['edit_distance_mean']:.3f} ± {e['edit_distance_std']:.3f} |")
        assert row in md.splitlines(), (row, md)
    assert "csv: no oracle, proxy scores" in md
    assert report.table_md.read_text() == md


def test_csv_parses_to_the_same_numbers(ablation):
    report = ablation["report"]
    parsed = list(csv.DictReader(io.StringIO(report.table_csv.read_text())))
    assert report.table_csv.read_text() == report.csv == to_csv(report.summary)
    assert len(parsed) == len(report.summary)
    for row, entry in zip(parsed, report.summary):
        assert (row["task"], row["variant"], int(row["seeds"]), row["score"]) == \
            (entry["task"], entry["variant"], entry["seeds"], entry["score"])
        for key in row:
            if key.endswith(("_mean", "_std")):
                assert float(row[key]) == entry[key]  # full precision: exact round trip


def test_pngs_are_valid_images(ablation):
    import matplotlib.image as mpimg

    report = ablation["report"]
    for path in (report.scores_png, report.trajectory_png):
        data = path.read_bytes()
        assert len(data) > 1000 and data[:8] == PNG_SIGNATURE, path
        image = mpimg.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, image.shape


def test_report_files_are_artifacts_of_the_parent(ablation, tmp_path):
    client, parent, report = ablation["client"], ablation["parent"], ablation["report"]
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert logged == {f"report/{name}" for name in REPORT_FILES}
    local = client.download_artifacts(parent, "report/table.csv", str(tmp_path))
    assert open(local).read() == report.table_csv.read_text()


def test_trajectories_use_steps_1_to_t_only(ablation):
    rows = [r for r in collect_cells(ablation["client"], ablation["parent"]) if r["task"] == "tfbind8"]
    data = trajectory_data(ablation["client"], rows, "normalized_max")
    assert list(data) == ["forward", "learned+eta"]
    assert_trajectories_are_the_steps(data, VARIANTS, SEEDS)


def test_find_parent_by_name_and_by_id(ablation):
    client, store = ablation["client"], ablation["store"]
    assert find_parent(client, NAME).info.run_id == ablation["parent"]  # the newest, not the stale one
    assert find_parent(store, ablation["parent"]).info.run_id == ablation["parent"]
    assert find_parent(client, ablation["stale"]).info.run_id == ablation["stale"]
    assert find_parent(client, "cross_exp").info.run_id == ablation["other"]  # found in another experiment


def test_find_parent_errors(ablation):
    client = ablation["client"]
    with pytest.raises(BibInputError) as err:
        find_parent(client, "no_such_plan")
    assert "no_such_plan" in str(err.value) and "ablation name" in str(err.value)
    with pytest.raises(BibInputError, match="0" * 32):
        find_parent(client, "0" * 32)  # a well-formed run id that does not exist
    child = collect_cells(client, ablation["parent"])[0]["run_id"]
    with pytest.raises(BibInputError, match=f"cell of parent run {ablation['parent']}"):
        find_parent(client, child)


def test_helpers_on_empty_input_and_no_finished_cells(ablation, tmp_path):
    assert summarise([]) == []
    assert to_markdown([]).startswith("| task | variant |")
    with pytest.raises(BibInputError, match="no finished cells"):
        build_report(ablation["client"], ablation["empty"], tmp_path / "out")
    with pytest.raises(BibInputError, match="no MLflow store"):
        run_report(NAME, tracking_uri=f"sqlite:///{tmp_path / 'nope.db'}", output=str(tmp_path))
    assert not (tmp_path / "nope.db").exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(BibInputError, match="not a folder"):
        build_report(ablation["client"], ablation["parent"], a_file)


def test_cli_report_prints_the_table_and_exits_0(ablation, tmp_path):
    out = tmp_path / "cli_report"
    proc = run_cli(["report", NAME, "--tracking-uri", ablation["uri"], "--output", str(out)], cwd=tmp_path,
                   timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| task | variant | n | max | median | mean | edit distance |" in proc.stdout
    for e in ablation["report"].summary:
        assert f"| {e['task']} | {e['variant']} | 2 |" in proc.stdout
    assert ablation["parent"] in proc.stdout and "skipped cells: 1 failed, 1 killed" in proc.stdout
    assert {p.name for p in out.iterdir()} >= REPORT_FILES | {"agreement.csv", "agreement.md"}  # tfbind8: agreement too
    assert (out / "table.csv").read_text() == ablation["report"].csv


def test_cli_report_unknown_name_is_one_line_exit_2(ablation, tmp_path):
    proc = run_cli(["report", "no_such_plan", "--tracking-uri", ablation["uri"], "--output", str(tmp_path / "o")],
                   cwd=tmp_path, timeout=120)
    assert_one_line_error(proc, "no_such_plan")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def _fake_run(run_id, task, variant, eta, seed, start, metrics, status="FINISHED", cell_key=None):
    tags = {"task": task, "variant": variant, "adaptive_eta": eta, "seed": seed}
    if cell_key:
        tags["cell_key"] = cell_key
    return SimpleNamespace(info=SimpleNamespace(run_id=run_id, status=status, start_time=start, end_time=start + 1,
                                                run_name=run_id),
                           data=SimpleNamespace(tags=tags, metrics=metrics, params={}))


def test_summarise_in_memory_population_std_dedup_and_missing_metrics():
    runs = [
        _fake_run("a", "aav", "grad", "True", "10", 1, {"normalized_max": 1.0, "mean_edit_distance": 2.0}),
        _fake_run("b", "aav", "grad", "true", "2", 2, {"normalized_max": 3.0, "mean_edit_distance": 4.0}),
        _fake_run("c", "aav", "grad", "true", "2", 1, {"normalized_max": 50.0}),  # older run of cell b: dropped
        _fake_run("d", "aav", "backward", "false", "0", 1, {"normalized_max": 0.5}, cell_key="k"),
        _fake_run("e", "aav", "backward", "false", "0", 5, {"normalized_max": 0.7}, cell_key="k"),  # newer: kept
        _fake_run("f", "aav", "grad", "true", "3", 9, {"normalized_max": 80.0}, status="KILLED"),
    ]
    rows = collect_cells(None, "unused", runs)
    assert [(r["run_id"], r["variant"], r["seed"]) for r in rows] == [
        ("e", "backward", 0), ("b", "grad+eta", 2), ("a", "grad+eta", 10)]
    summary = summarise(rows)
    grad = summary[1]
    assert (grad["variant"], grad["seeds"], grad["seed_list"]) == ("grad+eta", 2, [2, 10])
    assert grad["max_mean"] == 2.0 and grad["max_std"] == 1.0  # population std of [1, 3] (ddof=1 gives 1.414)
    assert math.isnan(grad["mean_mean"]) and math.isnan(grad["offline_proxy_mean_std"])
    backward = summary[0]
    assert backward["max_mean"] == 0.7 and backward["max_std"] == 0.0 and math.isnan(backward["edit_distance_mean"])
    md = to_markdown(summary)
    # t interval of [1, 3] with one degree of freedom: 2 ± 12.706 (one LM: over design seeds).
    assert "| aav | grad+eta | 2 | 2.000 ± 1.000 [-10.706, 14.706] | – | – | 3.000 ± 1.000 |" in md
    assert "t interval over design seeds on one LM" in md
    parsed = list(csv.DictReader(io.StringIO(to_csv(summary))))
    assert parsed[1]["max_std"] == "1.0" and parsed[1]["mean_mean"] == "" and parsed[0]["max_mean"] == "0.7"
