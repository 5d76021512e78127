"""A search with the scheduler shipped in ``search_spaces/bib_default.yaml`` (ASHA), at tiny size.

Every other Tune test runs ``scheduler: none``; here ASHA must really stop trials, the stopped trials
must end as FINISHED MLflow children tagged ``stopped`` with their steps logged once, and the best
trial must be the best of the trials that ran to the end, as read from Tune's result grid.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from bib_ray.distributed.search import run_search, trial_plan
from bib_ray.distributed.space import parse_search_space
from bib_ray.progress import ProgressReporter, install
from bib_ray.trial_records import final_of
from bib_ray.spec import load_run_spec
from bib_ray.tracking.store import Store

from helpers import TINY_BASE, ray_session_with_cache
from bib_ray.tracking.metric_keys import mlflow_key, named_metrics

SHIPPED = Path(__file__).resolve().parents[1] / "search_spaces" / "bib_default.yaml"
STEPS = 10
REPORTER: dict[str, ProgressReporter] = {}


def asha_space(name: str, trials: int = 8) -> dict:
    """bib_default.yaml with its scheduler (ASHA, reduction factor as shipped), its lr and ridge ranges,
    and tiny settings: the tiny LM, 10 steps, a grace period of 2 steps and a report every step."""
    shipped = yaml.safe_load(SHIPPED.read_text())
    assert shipped["scheduler"]["type"] == "asha"
    return {**shipped, "name": name, "trials": trials, "concurrency": 2, "report_every": 1,
            "base": {**TINY_BASE, "engine": {**TINY_BASE["engine"], "steps": STEPS}},
            "params": {k: shipped["params"][k] for k in ("engine.lr", "engine.beta_scale")},
            "metric": "oracle_mean",  # the designs' mean moves with every change; their max ties often
            "scheduler": {**shipped["scheduler"], "grace_period": 2}}


@pytest.fixture(scope="module")
def asha_run(tmp_path_factory):
    with ray_session_with_cache(tmp_path_factory.mktemp("asha")) as root:
        space = parse_search_space(asha_space("asha_search"), "space")
        uri = f"sqlite:///{root}/mlruns.db"
        REPORTER["search"] = install()  # what the CLI does: the progress lines count how trials ended
        outcome = run_search(space, uri, storage=str(root / "runs"), best_output=root / "best.yaml")
        yield space, uri, outcome, root


def _stopped(results) -> list:
    return [r for r in results if not r.error and final_of(r.metrics) is None]


def _complete(results) -> list:
    return [r for r in results if not r.error and final_of(r.metrics) is not None]


def test_asha_stops_some_trials(asha_run):
    _, _, outcome, _ = asha_run
    results = list(outcome.job.results)
    assert len(results) == 8 and not any(r.error for r in results)
    stopped, complete = _stopped(results), _complete(results)
    assert stopped, "ASHA stopped no trial"
    assert complete, "ASHA stopped every trial"
    for result in stopped:
        assert result.metrics["step"] < STEPS  # cut before the end, at a rung
        assert result.metrics["step"] in (2, 4, 8)
    counts = REPORTER["search"].counts
    assert counts == {"finished": len(complete), "stopped early": len(stopped), "failed": 0}, counts


def test_stopped_trials_are_finished_children_with_steps_once(asha_run):
    space, uri, outcome, _ = asha_run
    store = Store(uri, space.name)
    children = {c.data.tags["trial_id"]: c for c in store.children(outcome.job.parent_id)}
    assert len(children) == 8 and {c.info.status for c in children.values()} == {"FINISHED"}
    for result in outcome.job.results:
        child = children[result.metrics["trial_id"]]
        steps = [m.step for m in store.client.get_metric_history(child.info.run_id, mlflow_key("normalized_mean"))]
        if final_of(result.metrics) is not None:  # every step once, and the final record at the last step
            assert "stopped" not in child.data.tags and "design_seconds" in child.data.metrics
            assert sorted(steps) == list(range(1, STEPS + 1)) + [STEPS]
        else:
            assert len(steps) == len(set(steps)), steps
            assert "early stopping" in child.data.tags["stopped"] and "design_seconds" not in child.data.metrics
            assert sorted(steps) == list(range(1, result.metrics["step"] + 1))


def test_best_trial_is_the_best_complete_one_in_the_result_grid(asha_run):
    space, uri, outcome, root = asha_run
    complete = _complete(outcome.job.results)
    best = max(complete, key=lambda r: r.metrics["normalized_mean"])
    assert outcome.best_metrics["trial_id"] == best.metrics["trial_id"]
    assert load_run_spec(root / "best.yaml") == trial_plan(space).spec_for(best.config).with_updates({"engine.seed": 0})
    parent = Store(uri, space.name).client.get_run(outcome.job.parent_id)
    assert parent.data.tags["best_trial_id"] == best.metrics["trial_id"]
    assert math.isclose(parent.data.metrics["best.normalized_mean"], best.metrics["normalized_mean"], rel_tol=1e-12)


def test_optuna_holds_the_stopped_trials_as_pruned(asha_run):
    """Optuna's COMPLETE trials are exactly the trials that ran to the end (MLflow's FINISHED children
    without the ``stopped`` tag), with their final scores; the trials ASHA stopped are PRUNED."""
    import optuna

    from bib_ray.distributed.search import trial_counts

    space, uri, outcome, _ = asha_run
    study = optuna.load_study(study_name=space.name, storage=outcome.optuna_storage)
    by_state = {state: sorted((round(t.params["engine.lr"], 12), t.value) for t in study.trials if t.state == state)
                for state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)}
    complete, stopped = _complete(outcome.job.results), _stopped(outcome.job.results)
    assert by_state[optuna.trial.TrialState.COMPLETE] == sorted(
        (round(r.config["engine.lr"], 12), r.metrics["normalized_mean"]) for r in complete)
    assert [lr for lr, _ in by_state[optuna.trial.TrialState.PRUNED]] == sorted(
        round(r.config["engine.lr"], 12) for r in stopped)
    assert len(study.trials) == 8  # nothing else: no FAIL, no RUNNING
    children = Store(uri, space.name).children(outcome.job.parent_id)
    ran_to_end = [c for c in children if c.info.status == "FINISHED" and "stopped" not in c.data.tags]
    assert len(ran_to_end) == len(by_state[optuna.trial.TrialState.COMPLETE])
    assert study.best_trial.value == outcome.best_metrics["normalized_mean"]  # the study's best is best.yaml's
    assert outcome.importances.trials == len(complete)  # importances over complete trials only
    counts = trial_counts(outcome.job)
    assert (counts.finished, counts.stopped, counts.failed) == (len(complete), len(stopped), 0)
    assert counts.line().startswith(f"trials: {len(complete)} finished, {len(stopped)} stopped early")
