"""A 4-trial search on local Ray: bounds, MLflow parent/children, LM reuse, best config re-runs."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from bib_ray.distributed.search import run_search
from bib_ray.distributed.space import parse_search_space
from bib_ray.errors import BibInputError
from bib_ray.tracking.store import Store
from bib_ray.trial_records import final_of

from helpers import TINY_BASE, assert_one_line_error, ray_session_with_cache, run_cli
from bib_ray.tracking.metric_keys import named_metrics

SPACE = {
    "name": "tiny_search",
    "base": TINY_BASE,
    "params": {
        "engine.lr": {"type": "loguniform", "low": 0.01, "high": 1.0},
        "engine.beta_scale": {"type": "loguniform", "low": 0.1, "high": 100.0},
        "engine.variant": {"type": "categorical", "values": ["forward", "learned"]},
    },
    "trials": 4,
    "concurrency": 2,
    "scheduler": {"type": "none"},
}


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    with ray_session_with_cache(tmp_path_factory.mktemp("search")) as root:
        space = parse_search_space(SPACE, "space")
        uri = f"sqlite:///{root}/mlruns.db"
        outcome = run_search(space, uri, storage=str(root / "runs"), best_output=root / "best.yaml")
        yield space, uri, outcome, root


def test_search_completes_and_samples_inside_bounds(search_run):
    space, _, outcome, _ = search_run
    results = list(outcome.job.results)
    assert len(results) == 4 and not any(r.error for r in results)
    for result in results:
        for key in space.params:
            assert space.contains(key, result.config[key]), (key, result.config[key])
    assert outcome.best_spec is not None


def test_mlflow_parent_and_children_match_result_grid(search_run):
    space, uri, outcome, _ = search_run
    store = Store(uri, space.name)
    parent = store.client.get_run(outcome.job.parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sampler_seed"] == "0"
    assert parent.data.tags["benchmark_mode"] == "true"
    children = store.children(outcome.job.parent_id)
    assert len(children) == 4
    by_trial = {c.data.tags["trial_id"]: c for c in children}
    for result in outcome.job.results:
        child = by_trial[result.metrics["trial_id"]]
        assert child.info.status == "FINISHED"
        assert child.data.tags["task"] == "tfbind8"
        assert child.data.tags["variant"] == result.config["engine.variant"]
        assert math.isclose(float(child.data.params["engine.lr"]), result.config["engine.lr"], rel_tol=1e-12)
        assert math.isclose(named_metrics(child.data.metrics)["normalized_max"], result.metrics["normalized_max"], rel_tol=1e-12)
        assert [a.path for a in store.client.list_artifacts(child.info.run_id)] == ["designs.csv"]
        history = store.client.get_metric_history(child.info.run_id, "forward_loss")
        # 6 steps, then the final (seed-mean) record at the last step
        assert sorted(m.step for m in history) == list(range(1, 7)) + [6]


def test_lm_loaded_once_per_worker(search_run):
    _, _, outcome, _ = search_run
    pids = {}
    for result in outcome.job.results:
        worker = final_of(result.metrics).worker
        assert worker.lm_loads == 1
        pids[worker.pid] = pids.get(worker.pid, 0) + 1
    assert sum(pids.values()) == 4
    assert max(pids.values()) >= 2  # actors were reused: some worker ran several trials, still one load


def test_best_config_reruns_with_same_scores(search_run):
    _, _, outcome, root = search_run
    proc = run_cli(["run", "--config", str(root / "best.yaml"), "--output", str(root / "rerun"), "--no-progress"],
                   cwd=root, env={"BIB_RAY_CACHE": str(root / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rerun = json.loads((root / "rerun" / "result.json").read_text())
    for key in ("normalized_max", "normalized_median", "mean_edit_distance"):
        assert math.isclose(rerun[key], outcome.best_metrics[key], rel_tol=1e-9, abs_tol=1e-9), key


def test_a_plan_with_base_from_best_yaml_runs_the_best_config(search_run, tmp_path):
    """README: ``base_from: best.yaml`` starts an ablation from a finished search's best config: the cell
    runs with the search's best parameters (the plan's variant on top)."""
    from bib_ray.distributed.ablation import run_ablation
    from bib_ray.distributed.plan import load_plan
    from bib_ray.spec import load_run_spec

    _, _, outcome, root = search_run
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump({
        "name": "from_best", "base_from": str(root / "best.yaml"), "variants": ["forward"], "adaptive_eta": [False],
        "baseline": False, "seeds": [0]}))
    plan, base = load_plan(tmp_path / "plan.yaml")
    best = load_run_spec(root / "best.yaml")
    assert base == best and base.engine.lr != parse_search_space(SPACE, "space").base.engine.lr
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    ran = run_ablation(plan, base, uri, storage=str(tmp_path / "runs"), out_dir=tmp_path / "report")
    (child,) = Store(uri, "from_best").children(ran.parent_id)
    assert child.info.status == "FINISHED" and child.data.params["engine.variant"] == "forward"
    assert math.isclose(float(child.data.params["engine.lr"]), best.engine.lr, rel_tol=1e-12)
    assert math.isclose(float(child.data.params["engine.beta_scale"]), best.engine.beta_scale, rel_tol=1e-12)


@pytest.mark.slow  # a second Ray job of 4 trials (90 s on a loaded 2-core machine)
def test_a_fresh_search_replaces_its_study(search_run, tmp_path):
    """README: a fresh run of a search (no --resume) replaces its Optuna study; MLflow keeps every run. On a
    copy of both stores, so the other tests' study is untouched."""
    import datetime
    import shutil

    import optuna

    space, _, outcome, root = search_run
    for name in ("mlruns.db", "optuna.db"):
        shutil.copy(root / name, tmp_path / name)
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    started = datetime.datetime.now()
    again = run_search(space, uri, storage=str(tmp_path / "runs"), best_output=tmp_path / "best.yaml")
    assert again.job.parent_id != outcome.job.parent_id
    study = _study(tmp_path)
    assert len(study.trials) == 4 and {t.state for t in study.trials} == {optuna.trial.TrialState.COMPLETE}
    store = Store(uri, space.name)
    new_children = store.children(again.job.parent_id)
    assert len(store.children(outcome.job.parent_id)) == 4 and len(new_children) == 4  # MLflow keeps both
    new_lrs = sorted(float(c.data.params["engine.lr"]) for c in new_children)
    assert sorted(t.params["engine.lr"] for t in study.trials) == pytest.approx(new_lrs, rel=1e-12)
    assert all(t.datetime_start >= started for t in study.trials)  # none of the old study's trials is left


def test_gpu_beyond_cluster_is_refused(search_run):
    space, uri, _, root = search_run
    bad = parse_search_space({**SPACE, "name": "too_many_gpus", "resources": {"cpu": 1, "gpu": 4}}, "space")
    with pytest.raises(BibInputError, match="resources.gpu"):
        run_search(bad, uri, storage=str(root / "runs"))
    store = Store(uri, "too_many_gpus")
    assert store.find_runs("attributes.status = 'RUNNING'") == []


BAD_SPACES = [
    ({"unknown_key": 1}, "unknown_key"),
    ({"trials": "many"}, "trials"),
    ({"params": {"engine.lr": {"type": "uniform", "low": 1.0, "high": 0.1}}}, "engine.lr"),
    ({"params": {"engine.lr": {"type": "loguniform", "low": 0.0, "high": 0.1}}}, "engine.lr"),
    ({"metric": "accuracy"}, "metric"),
    ({"params": {"engine.nope": {"type": "uniform", "low": 0.0, "high": 0.1}}}, "engine.nope"),
    ({"base": {**TINY_BASE, "task": {"name": "csv", "options": {"path": "DATA"}}}}, "metric"),
]


@pytest.mark.parametrize("change,needle", BAD_SPACES)
def test_bad_space_is_one_line_error(tmp_path, change, needle):
    data = tmp_path / "data.csv"
    data.write_text("sequence,score\n" + "".join(f"{s},{i}\n" for i, s in enumerate(
        ["ACGT", "AGGT", "ACCT", "TCGT", "ACGA", "GCGT", "ACTT", "AAGT", "CCGT", "ACGG"])))
    space = {**SPACE, **change}
    text = yaml.safe_dump(space).replace("DATA", str(data))
    (tmp_path / "space.yaml").write_text(text)
    proc = run_cli(["search", "space.yaml", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"], cwd=tmp_path)
    assert_one_line_error(proc, needle, store=tmp_path / "m.db")


# --- the Optuna study in Optuna's own storage ---------------------------------------------------------
def _study(root):
    import optuna

    return optuna.load_study(study_name="tiny_search", storage=f"sqlite:///{root}/optuna.db")


def test_optuna_storage_holds_the_search_as_mlflow_does(search_run):
    """Beside the MLflow store, an Optuna study that optuna-dashboard or optuna.load_study can read:
    one COMPLETE trial per FINISHED child, with the same parameters and value."""
    import optuna

    space, uri, outcome, root = search_run
    children = [c for c in Store(uri, space.name).children(outcome.job.parent_id) if c.info.status == "FINISHED"]
    complete = [t for t in _study(root).trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == len(children) == 4
    logged = sorted((float(c.data.params["engine.lr"]), float(c.data.params["engine.beta_scale"]),
                     c.data.params["engine.variant"], named_metrics(c.data.metrics)[space.result_key]) for c in children)
    studied = sorted((t.params["engine.lr"], t.params["engine.beta_scale"], t.params["engine.variant"], t.value)
                     for t in complete)
    for a, b in zip(logged, studied):
        assert a[2] == b[2] and math.isclose(a[0], b[0], rel_tol=1e-12) and math.isclose(a[1], b[1], rel_tol=1e-12)
        assert math.isclose(a[3], b[3], rel_tol=1e-12)
    parent = Store(uri, space.name).client.get_run(outcome.job.parent_id)
    assert parent.data.tags["optuna_storage"] == f"sqlite:///{root}/optuna.db"


def test_optuna_trials_and_mlflow_runs_link_to_each_other(search_run):
    """optuna-dashboard titles the objective with the metric's name; each Optuna trial carries its MLflow
    run id and UI address, each MLflow child its Optuna trial number, read back from both stores."""
    space, uri, outcome, root = search_run
    study = _study(root)
    assert study.metric_names == [space.metric]
    children = Store(uri, space.name).children(outcome.job.parent_id)
    by_number = {t.number: t for t in study.trials}
    assert len(children) == len(by_number) == 4
    for child in children:
        trial = by_number[int(child.data.tags["optuna.trial_number"])]
        assert trial.user_attrs["mlflow.run_id"] == child.info.run_id
        assert trial.user_attrs["ray.trial_id"] == child.data.tags["trial_id"]
        assert trial.user_attrs["mlflow.run_url"].endswith(
            f"/#/experiments/{child.info.experiment_id}/runs/{child.info.run_id}")
        assert trial.params["engine.variant"] == child.data.params["engine.variant"]


def test_the_saved_searcher_state_holds_no_storage_url(search_run):
    """Tune pickles the searcher into its folder; the Optuna storage URL (a password, on PostgreSQL) is
    not in it: --resume opens the storage again from the URL it is given."""
    space, _, outcome, root = search_run
    states = list(outcome.job.experiment_path.glob("searcher-state*.pkl"))
    assert states, sorted(p.name for p in outcome.job.experiment_path.iterdir())
    for state in states:
        data = state.read_bytes()
        assert b"optuna.db" not in data and b"sqlite:" not in data, state.name


def test_parameter_importances_are_on_the_parent_run(search_run):
    space, uri, outcome, _ = search_run
    client = Store(uri, space.name).client
    files = {a.path for a in client.list_artifacts(outcome.job.parent_id, "report")}
    assert {"report/param_importances.csv", "report/param_importances.md", "report/param_importances.png"} <= files
    names = [name for name, _ in outcome.importances.importances]
    assert sorted(names) == sorted(space.params)


def test_resume_continues_the_same_study(search_run):
    space, uri, outcome, root = search_run
    before = _study(root)
    again = run_search(space, uri, resume=True, storage=str(root / "runs"), best_output=root / "best_again.yaml")
    after = _study(root)
    assert again.job.parent_id == outcome.job.parent_id
    assert after.user_attrs == before.user_attrs
    assert [(t.number, t.params, t.value) for t in after.trials] == [(t.number, t.params, t.value)
                                                                       for t in before.trials]


@pytest.mark.parametrize("url,needle", [("notadb://somewhere/x", "--optuna-storage"),
                                        ("postgresql://127.0.0.1:1/optuna", "--optuna-storage")])
def test_bad_optuna_storage_is_one_line_error(tmp_path, url, needle):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    proc = run_cli(["search", "space.yaml", "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--optuna-storage", url],
                   cwd=tmp_path)
    assert_one_line_error(proc, needle, store=tmp_path / "m.db")


def test_optuna_storage_with_a_study_of_another_space_is_refused(tmp_path):
    from bib_ray.distributed.optuna_study import prepare_study

    url = f"sqlite:///{tmp_path}/optuna.db"
    other = parse_search_space({**SPACE, "params": {"engine.lr": SPACE["params"]["engine.lr"]}}, "other")
    prepare_study(other, url, resume=False)  # same name, another space
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    proc = run_cli(["search", "space.yaml", "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--optuna-storage", url],
                   cwd=tmp_path)
    assert_one_line_error(proc, "--optuna-storage", "another search space", store=tmp_path / "m.db")
