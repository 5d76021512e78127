"""The agreement report from MLflow: correlations and regrets equal scipy's on the child runs, lookup, bad inputs."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from scipy.stats import kendalltau, spearmanr

from bib_ray.criteria import CRITERIA_NAMES
from bib_ray.errors import BibInputError
from bib_ray.tracking.agreement import (agreement_table, bootstrap_interval, build_agreement, expected_top_mean,
                                        find_report_parent, kendall_rows, spearman_rows, to_csv)
from bib_ray.tracking.report import run_report

from ablation_fixtures import local_store, make_synthetic_ablation
from helpers import assert_one_line_error, run_cli
from bib_ray.tracking.metric_keys import named_metrics

NAME = "synth_search"
TRIALS = 9


def trial_metrics(i: int, oracle: bool = True) -> dict[str, float]:
    """Hand-made finals of trial i: some criteria agree with the oracle median, some disagree, one is tied."""
    rng = np.random.default_rng(100 + i)
    median = 0.3 + 0.05 * i + 0.01 * rng.random()
    out = {"offline_proxy_mean": median + 0.2 * rng.normal(), "offline_proxy_max": 1.0 + 0.02 * ((i * 7) % 9),
           "offline_pairwise_mean": 2 * median + 0.001 * rng.random(), "offline_pairwise_max": -median,
           "offline_conservative_mean": median - 0.3 * rng.random(), "proxy_heldout_spearman": 0.1 * (i // 3),
           "offline_nearest_distance": 3.0 - 2 * median + 0.05 * rng.normal(), "proxy_mean": rng.normal(),
           "design_seconds": 1.0, "mean_edit_distance": 2.0}
    if oracle:
        out.update({"normalized_median": median, "normalized_max": median + 0.2 + 0.05 * rng.random()})
    return out


def make_search(store, name: str, task: str = "tfbind8", trials: int = TRIALS, oracle: bool = True) -> str:
    """A search parent laid out as `bib-ray search` logs one: FINISHED trials with final records, one trial
    stopped early by ASHA (FINISHED, no final record), one FAILED with huge metrics."""
    parent = store.create_run(name, {"bib_ray.kind": "search", "bib_ray.name": name, "task": task})
    for i in range(trials):
        run = store.create_run(f"trial-{i}", {"trial_id": f"t{i}", "task": task, "variant": "learned"}, parent)
        store.log_metrics(run, {k: v - 5 for k, v in trial_metrics(i, oracle).items()}, 1)  # a step, overwritten
        store.log_metrics(run, trial_metrics(i, oracle), 2)
        store.set_status(run, "FINISHED")
    stopped = store.create_run("trial-stopped", {"trial_id": "ts", "task": task}, parent)
    store.log_metrics(stopped, {k: 50.0 for k in trial_metrics(0, oracle) if k != "design_seconds"}, 1)
    store.set_status(stopped, "FINISHED")
    failed = store.create_run("trial-failed", {"trial_id": "tf", "task": task}, parent)
    store.log_metrics(failed, {k: 99.0 for k in trial_metrics(0, oracle)}, 1)
    store.set_status(failed, "FAILED")
    store.set_status(parent, "FINISHED")
    return parent


@pytest.fixture(scope="module")
def searches(tmp_path_factory):
    root = tmp_path_factory.mktemp("agreement")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    store = local_store(uri, NAME, root / "artifacts")
    parent = make_search(store, NAME)
    csv_parent = make_search(store, "csv_search", task="csv", trials=4, oracle=False)
    empty = store.create_run("empty_search", {"bib_ray.kind": "search", "bib_ray.name": "empty_search"})
    store.set_status(empty, "FINISHED")
    client = MlflowClient(tracking_uri=uri)
    report = build_agreement(client, client.get_run(parent), root / "out", samples=300)
    return {"root": root, "uri": uri, "store": store, "client": client, "parent": parent, "csv": csv_parent,
            "empty": empty, "report": report}


def _children_finals(client, parent):
    runs = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    return [named_metrics(r.data.metrics) for r in runs if r.info.status == "FINISHED" and "design_seconds" in r.data.metrics]


def test_correlations_and_regrets_equal_scipy_on_the_child_runs(searches):
    finals = _children_finals(searches["client"], searches["parent"])
    assert len(finals) == TRIALS  # the stopped and the failed trial are out
    median = np.array([m["normalized_median"] for m in finals])
    best_max = np.array([m["normalized_max"] for m in finals])
    table = {e["criterion"]: e for e in searches["report"].table}
    assert list(table) == list(CRITERIA_NAMES)
    for name, entry in table.items():
        sign = -1.0 if name == "offline_nearest_distance" else 1.0
        x = sign * np.array([m[name] for m in finals])
        assert entry["trials"] == TRIALS
        assert entry["spearman_median"] == pytest.approx(spearmanr(x, median).statistic, abs=1e-12)
        assert entry["spearman_max"] == pytest.approx(spearmanr(x, best_max).statistic, abs=1e-12)
        assert entry["kendall_median"] == pytest.approx(kendalltau(x, median).statistic, abs=1e-12)
        assert entry["kendall_max"] == pytest.approx(kendalltau(x, best_max).statistic, abs=1e-12)
        order = np.argsort(-x, kind="stable")
        if len(set(x)) == len(x):  # no ties: the top trials are plain argsort picks
            assert entry["top1_median"] == pytest.approx(median[order[0]], abs=1e-12)
            assert entry["regret_top1"] == pytest.approx(median.max() - median[order[0]], abs=1e-12)
            assert entry["regret_top3"] == pytest.approx(median.max() - median[order[:3]].mean(), abs=1e-12)
        assert entry["spearman_median_lo"] <= entry["spearman_median"] + 1e-9 <= entry["spearman_median_hi"] + 2e-9
    # the hand-made landscape: pairwise mean is a monotone copy of the median, pairwise max its negative
    assert table["offline_pairwise_mean"]["spearman_median"] == pytest.approx(1.0)
    assert table["offline_pairwise_mean"]["regret_top1"] == pytest.approx(0.0)
    assert table["offline_pairwise_max"]["spearman_median"] == pytest.approx(-1.0)
    assert table["offline_nearest_distance"]["spearman_median"] > 0.5  # lower distance = better, oriented
    assert table["offline_pairwise_max"]["regret_top1"] == pytest.approx(median.max() - median.min(), abs=1e-12)


def test_tied_criterion_shares_the_top_places():
    score = np.array([0.2, 0.2, 0.1, 0.2])  # three trials tied at the top
    oracle = np.array([1.0, 2.0, 3.0, 6.0])
    assert expected_top_mean(score, oracle, 1) == pytest.approx(3.0)  # mean of the tied three
    assert expected_top_mean(score, oracle, 3) == pytest.approx(3.0)
    assert expected_top_mean(score, oracle, 4) == pytest.approx(3.0)
    assert expected_top_mean(np.array([3.0, 2.0, 1.0]), oracle[:3], 2) == pytest.approx(1.5)


def test_bootstrap_interval_brackets_and_narrows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    stat = spearman_rows
    lo, hi = bootstrap_interval(x, x + 0.3 * rng.normal(size=40), stat, samples=400)
    lo_noisy, hi_noisy = bootstrap_interval(x, x + 3.0 * rng.normal(size=40), stat, samples=400)
    assert lo < hi and lo_noisy < hi_noisy
    assert hi - lo < hi_noisy - lo_noisy  # a tighter relation has a narrower interval
    assert all(math.isnan(v) for v in bootstrap_interval(x[:2], x[:2], stat))


def test_bootstrap_interval_is_the_95_percent_percentile_interval_of_the_resamples():
    """Recomputed independently on the same resamples (the seeded draw of ``bootstrap_interval``): scipy's
    Spearman on each resampled pair of columns, then the 2.5th and 97.5th percentiles; and 95% of the
    resampled statistics fall inside, whatever the draw (a 20/80 interval holds 60%). scipy.stats.bootstrap
    on its own resamples agrees to Monte Carlo error."""
    from scipy.stats import bootstrap

    from bib_ray.tracking.agreement import BOOTSTRAP_SEED

    rng = np.random.default_rng(3)
    a = rng.normal(size=30)
    b = a + rng.normal(size=30)
    samples = 2000
    lo, hi = bootstrap_interval(a, b, spearman_rows, samples=samples)
    idx = np.random.default_rng(BOOTSTRAP_SEED).integers(0, 30, size=(samples, 30))
    values = np.array([spearmanr(a[row], b[row]).statistic for row in idx])
    ordered = np.sort(values)
    expected = [np.interp(q * (samples - 1), np.arange(samples), ordered) for q in (0.025, 0.975)]
    assert (lo, hi) == pytest.approx(expected, abs=1e-12)
    inside = np.mean((values >= lo) & (values <= hi))
    assert 0.945 <= inside <= 0.955, inside
    scipy_ci = bootstrap((a, b), lambda u, v: spearmanr(u, v).statistic, paired=True, vectorized=False,
                         n_resamples=2000, method="percentile", random_state=1).confidence_interval
    assert lo == pytest.approx(scipy_ci.low, abs=0.03) and hi == pytest.approx(scipy_ci.high, abs=0.03)


def test_vectorised_correlations_equal_scipy_on_resamples_with_ties():
    rng = np.random.default_rng(4)
    a, b = rng.integers(0, 5, size=12).astype(float), rng.normal(size=12)  # ties in a
    idx = rng.integers(0, 12, size=(20, 12))  # resamples repeat trials: more ties
    rho, tau = spearman_rows(a[idx], b[idx]), kendall_rows(a[idx], b[idx])
    for row, r, t in zip(idx, rho, tau):
        assert r == pytest.approx(spearmanr(a[row], b[row]).statistic, abs=1e-12)
        assert t == pytest.approx(kendalltau(a[row], b[row]).statistic, abs=1e-12)
    assert np.isnan(spearman_rows(np.ones(5), b[:5])[0]) and np.isnan(kendall_rows(np.ones(5), b[:5])[0])


def test_parent_metrics_csv_and_plots_are_logged(searches):
    client, parent, report = searches["client"], searches["parent"], searches["report"]
    # the table is an artifact, not metrics: the parent's chart view stays on the headline metrics
    assert not [k for k in client.get_run(parent).data.metrics if k.startswith("agreement")]
    parsed = list(csv.DictReader(io.StringIO(report.csv_path.read_text())))
    assert [row["criterion"] for row in parsed] == list(CRITERIA_NAMES)
    assert report.csv_path.read_text() == to_csv(report.table)
    assert float(parsed[0]["spearman_median"]) == report.table[0]["spearman_median"]
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/agreement.csv", "report/agreement.md"} <= logged
    assert [p.name for p in report.plots] == ["agreement.png"]  # one panel per criterion
    for path in report.plots:
        assert f"report/{path.name}" in logged
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    assert report.left_out == {"failed": 1, "stopped early": 1}


def test_find_report_parent_by_name_and_id_and_errors(searches):
    client = searches["client"]
    assert find_report_parent(client, NAME).info.run_id == searches["parent"]
    assert find_report_parent(client, searches["parent"]).info.run_id == searches["parent"]
    with pytest.raises(BibInputError, match="no search or ablation parent run"):
        find_report_parent(client, "nope")
    child = searches["client"].search_runs(
        [client.get_run(searches["parent"]).info.experiment_id],
        f"tags.mlflow.parentRunId = '{searches['parent']}'")[0].info.run_id
    with pytest.raises(BibInputError, match=f"parent run {searches['parent']}"):
        find_report_parent(client, child)


def test_no_oracle_and_no_finished_trial_are_refused(searches, tmp_path):
    client = searches["client"]
    with pytest.raises(BibInputError, match="no oracle"):
        build_agreement(client, client.get_run(searches["csv"]), tmp_path / "o")
    with pytest.raises(BibInputError, match="no trial that ran to the end"):
        build_agreement(client, client.get_run(searches["empty"]), tmp_path / "o")
    assert agreement_table([{"task": "csv", "metrics": {"offline_proxy_mean": 1.0}}]) == []
    with pytest.raises(BibInputError, match="csv has no oracle"):
        run_report("csv_search", tracking_uri=searches["uri"], output=str(tmp_path / "o"))


def test_cli_prints_the_agreement_table(searches, tmp_path):
    proc = run_cli(["report", NAME, "--tracking-uri", searches["uri"], "--output", str(tmp_path / "o")],
                   cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| task | criterion | trials | Spearman median |" in proc.stdout
    entry = searches["report"].table[2]
    assert f"| tfbind8 | {entry['criterion']} | {TRIALS} | {entry['spearman_median']:.2f} [" in proc.stdout
    assert "left out trials: 1 failed, 1 stopped early" in proc.stdout
    assert (tmp_path / "o" / "agreement.csv").is_file()


@pytest.mark.parametrize("target,needle", [("csv_search", "no oracle"), ("empty_search", "no trial that ran")])
def test_cli_bad_reports_are_one_line_exit_2(searches, tmp_path, target, needle):
    proc = run_cli(["report", target, "--tracking-uri", searches["uri"], "--output", str(tmp_path / "o")],
                   cwd=tmp_path, timeout=400)
    assert_one_line_error(proc, needle)


def test_ablation_cells_get_an_agreement_table_too(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    store = local_store(uri, "abl", tmp_path / "artifacts")
    parent = make_synthetic_ablation(store, "abl", ["forward", "learned", "grad"], [0, 1], failed=True)
    client = MlflowClient(tracking_uri=uri)
    report = build_agreement(client, client.get_run(parent), tmp_path / "out", samples=50)
    entry = next(e for e in report.table if e["criterion"] == "offline_proxy_mean")
    finals = _children_finals(client, parent)
    assert entry["trials"] == len(finals) == 6
    x = np.array([m["offline_proxy_mean"] for m in finals])
    y = np.array([m["normalized_median"] for m in finals])
    assert entry["spearman_median"] == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    missing = next(e for e in report.table if e["criterion"] == "offline_pairwise_mean")
    assert missing["trials"] == 0 and math.isnan(missing["spearman_median"])  # not logged by these cells


def test_several_tasks_get_per_task_rows_and_no_agreement_metrics(tmp_path):
    """README: with several tasks the table has one row per task and criterion, each computed on that task's
    trials alone; the numbers are a table artifact (agreement.csv under report/), never ``agreement.*``
    metrics that MLflow's UI would sort ahead of every trial's headline metrics."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    store = local_store(uri, "two_tasks", tmp_path / "artifacts")
    parent = make_synthetic_ablation(store, "two_tasks", ["forward", "learned", "grad"], [0, 1],
                                     tasks=("tfbind8", "ehrlich"), failed=False)
    client = MlflowClient(tracking_uri=uri)
    report = build_agreement(client, client.get_run(parent), tmp_path / "out", samples=50)
    logged = named_metrics(client.get_run(parent).data.metrics)
    assert not [k for k in logged if k.startswith("agreement.")]
    artifacts = {a.path for a in client.list_artifacts(parent, "report")}
    assert "report/agreement.csv" in artifacts
    csv_rows = list(csv.DictReader(report.csv_path.read_text().splitlines()))
    assert {r["task"] for r in csv_rows} == {"tfbind8", "ehrlich"}
    runs = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    for task in ("tfbind8", "ehrlich"):
        mine = [named_metrics(r.data.metrics) for r in runs if r.data.tags["task"] == task and r.info.status == "FINISHED"]
        assert len(mine) == 6
        rho = spearmanr([m["offline_proxy_mean"] for m in mine], [m["normalized_median"] for m in mine]).statistic
        entry = next(e for e in report.table if e["task"] == task and e["criterion"] == "offline_proxy_mean")
        assert entry["trials"] == 6
        assert entry["spearman_median"] == pytest.approx(rho, abs=1e-12)
        row = next(r for r in csv_rows if r["task"] == task and r["criterion"] == "offline_proxy_mean")
        assert float(row["spearman_median"]) == pytest.approx(rho, abs=1e-6)
