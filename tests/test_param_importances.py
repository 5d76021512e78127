"""Optuna parameter importances of a search's study: order, files, reproducibility, and the cases with nothing
to assess (which must return a reason, not raise)."""

from __future__ import annotations

import csv
import io

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from bib_ray.tracking.importances import (CSV_NAME, MD_NAME, PNG_NAME, param_importances,
                                          write_param_importances)

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"engine.lr": FloatDistribution(1e-4, 1e-1, log=True), "engine.gamma": FloatDistribution(0.0, 1.0),
         "engine.beta_scale": IntDistribution(1, 8), "engine.variant": CategoricalDistribution(["fixed", "learned"])}


def objective(params: dict) -> float:
    """Almost all of the variance comes from the learning rate, a little from gamma, none from the rest."""
    return 3.0 * np.log10(params["engine.lr"]) + 0.2 * params["engine.gamma"]


def make_study(trials: int = 40, space: dict = SPACE, seed: int = 0, value=objective) -> optuna.Study:
    rng = np.random.default_rng(seed)
    study = optuna.create_study(direction="maximize")
    for _ in range(trials):
        params = {}
        for name, dist in space.items():
            if isinstance(dist, FloatDistribution):
                params[name] = float(10 ** rng.uniform(-4, -1)) if dist.log else float(rng.uniform(dist.low, dist.high))
            elif isinstance(dist, IntDistribution):
                params[name] = int(rng.integers(dist.low, dist.high + 1))
            else:
                params[name] = dist.choices[int(rng.integers(len(dist.choices)))]
        study.add_trial(create_trial(params=params, distributions=space, value=value(params)))
    return study


def test_the_parameter_that_drives_the_objective_comes_first(tmp_path):
    study = make_study()
    study.add_trial(create_trial(params={"engine.lr": 0.01}, distributions={"engine.lr": SPACE["engine.lr"]},
                                 state=TrialState.FAIL))  # not COMPLETE: ignored
    result = write_param_importances(study, tmp_path / "out")
    assert result.reason == "" and result.trials == 40
    assert [p.name for p in result.paths] == [CSV_NAME, MD_NAME, PNG_NAME]
    assert all(p.is_file() and p.stat().st_size > 0 for p in result.paths)
    rows = list(csv.DictReader(io.StringIO(result.paths[0].read_text())))
    names = [r["parameter"] for r in rows]
    values = [float(r["importance"]) for r in rows]
    assert names[0] == "engine.lr" and set(names) == set(SPACE)
    assert values == sorted(values, reverse=True) and values[0] > 0.5
    assert sum(values) == pytest.approx(1.0)
    assert [(n, v) for n, v in result.importances] == list(zip(names, values))
    md = result.paths[1].read_text()
    assert md.startswith("| parameter | importance |") and f"| engine.lr | {values[0]:.3f} |" in md
    assert result.paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_seeded_evaluator_reproduces_the_numbers():
    study = make_study()
    assert param_importances(study).importances == param_importances(study).importances


@pytest.mark.parametrize("case,needle", [
    ("no trials", "0 complete trial"),
    ("one trial", "1 complete trial"),
    ("one parameter", "1 searched parameter (engine.lr)"),
    ("constant objective", "could not assess"),
    ("two objectives", "several objectives"),
])
def test_nothing_to_assess_returns_a_reason_and_writes_nothing(tmp_path, case, needle):
    if case == "no trials":
        study = optuna.create_study()
    elif case == "one trial":
        study = make_study(trials=1)
    elif case == "one parameter":  # a second parameter that never varies does not count
        space = {"engine.lr": SPACE["engine.lr"], "engine.variant": CategoricalDistribution(["fixed"])}
        study = make_study(space=space, value=lambda p: np.log10(p["engine.lr"]))
    elif case == "constant objective":
        study = make_study(value=lambda p: 1.0)
    else:
        study = optuna.create_study(directions=["maximize", "minimize"])
        for i in range(5):
            study.add_trial(create_trial(params={"a": 0.1 * i, "b": 0.3 * i}, values=[float(i), 1.0],
                                         distributions={"a": FloatDistribution(0, 1), "b": FloatDistribution(0, 2)}))
    result = write_param_importances(study, tmp_path / "out")
    assert result.paths == [] and result.importances == []
    assert needle in result.reason
    assert not (tmp_path / "out").exists()
