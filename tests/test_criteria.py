"""The offline-safe criteria on toy landscapes whose answer is known, their wiring into runs, and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from bib_ray.cli import main
from bib_ray.criteria import (CRITERIA_NAMES, CriteriaConfig, OfflineCriteria, nearest_distance, one_hot, spearman,
                              split_offline)
from bib_ray.distributed.space import parse_search_space
from bib_ray.errors import BibInputError

from conftest import ToyTask
from helpers import TINY_BASE, assert_one_line_error, run_cli

VOCAB = 4


def _z(y: np.ndarray) -> np.ndarray:
    return (y - y.mean()) / y.std()


def _random_designs(n: int, length: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(n, length))


def test_additive_criterion_ranks_designs_as_an_additive_oracle_does():
    task = ToyTask(n=300, length=6, seed=1)
    crit = OfflineCriteria.fit(task.offline_x, _z(task.offline_y), VOCAB, CriteriaConfig(ridge=0.01))
    designs = _random_designs(400, 6, seed=7)
    assert spearman(crit.additive.predict(designs), task.oracle(designs)) > 0.99
    # and the logged metric is that model's mean / max over the designs
    metrics = crit.design_metrics(designs[:32])
    assert metrics["offline_proxy_mean"] == pytest.approx(crit.additive.predict(designs[:32]).mean())
    assert metrics["offline_proxy_max"] == pytest.approx(crit.additive.predict(designs[:32]).max())


def _pairwise_landscape(length: int, seed: int):
    """f(x) = sum over position pairs of W_ij[x_i, x_j], each table centred by rows and columns, so the
    landscape has no additive part at all: only a pairwise model can learn it."""
    rng = np.random.default_rng(seed)
    tables = {}
    for i in range(length):
        for j in range(i + 1, length):
            w = rng.normal(size=(VOCAB, VOCAB))
            w -= w.mean(0, keepdims=True)
            w -= w.mean(1, keepdims=True)
            tables[(i, j)] = w

    def f(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        return sum(w[x[:, i], x[:, j]] for (i, j), w in tables.items())
    return f


def test_pairwise_criterion_recovers_a_pairwise_landscape_the_additive_one_cannot():
    f = _pairwise_landscape(5, seed=3)
    x = _random_designs(900, 5, seed=4)
    crit = OfflineCriteria.fit(x, _z(f(x)), VOCAB, CriteriaConfig(ridge=0.01, ensemble=2))
    designs = _random_designs(300, 5, seed=5)
    truth = f(designs)
    pairwise, _ = crit.pairwise.predict(designs)
    assert spearman(pairwise, truth) > 0.95
    assert abs(spearman(crit.additive.predict(designs), truth)) < 0.3


def test_conservative_score_is_below_the_mean_and_rises_with_agreement():
    task = ToyTask(n=200, length=6, seed=2)
    crit = OfflineCriteria.fit(task.offline_x, _z(task.offline_y), VOCAB, CriteriaConfig(ensemble=6, k=1.0))
    designs = _random_designs(20, 6, seed=9)
    _, members = crit.pairwise.predict(designs)
    assert (members.std(1) > 0).all()  # bootstrap members disagree somewhat
    assert crit.design_metrics(designs)["offline_conservative_mean"] < members.mean()
    # the same ensemble mean with members agreeing more and more: the score rises to the mean
    base = members.mean(1, keepdims=True)
    spread = members - base
    scores = []
    real_predict = crit.pairwise.predict
    for shrink in (1.0, 0.5, 0.1, 0.0):
        crit.pairwise.predict = lambda x, shrink=shrink: (real_predict(x)[0], base + shrink * spread)
        scores.append(crit.design_metrics(designs)["offline_conservative_mean"])
    crit.pairwise.predict = real_predict
    assert scores == sorted(scores) and len(set(scores)) == 4
    assert scores[-1] == pytest.approx(base.mean())
    # k scales the penalty: k = 0 is the ensemble mean, a larger k a lower score
    free = OfflineCriteria.fit(task.offline_x, _z(task.offline_y), VOCAB, CriteriaConfig(ensemble=6, k=0.0))
    strict = OfflineCriteria.fit(task.offline_x, _z(task.offline_y), VOCAB, CriteriaConfig(ensemble=6, k=2.0))
    assert free.design_metrics(designs)["offline_conservative_mean"] == pytest.approx(members.mean())
    assert strict.design_metrics(designs)["offline_conservative_mean"] < \
        crit.design_metrics(designs)["offline_conservative_mean"]


def test_ranking_criterion_is_higher_for_a_good_kernel_than_a_random_one():
    import torch

    task = ToyTask(n=300, length=6, seed=3)
    y_z = _z(task.offline_y)
    crit = OfflineCriteria.fit(task.offline_x, y_z, VOCAB)
    good = torch.from_numpy(one_hot(task.offline_x, VOCAB))  # the toy score is linear in these features
    noise = torch.from_numpy(np.random.default_rng(0).normal(size=good.shape))
    good_rho = crit.proxy_ranking(good, beta_scale=1.0)
    assert good_rho > 0.95
    assert crit.proxy_ranking(noise, beta_scale=1.0) < good_rho - 0.5
    assert crit.proxy_ranking(good, beta_scale=1.0) == good_rho  # memoised per beta_scale


def test_nearest_distance_equals_brute_force():
    rng = np.random.default_rng(11)
    offline = rng.integers(0, VOCAB, size=(150, 7))
    designs = np.concatenate([rng.integers(0, VOCAB, size=(30, 7)), offline[:5], offline[:3]])
    designs[-1, 0] = (designs[-1, 0] + 1) % VOCAB  # one letter off an offline sequence
    brute = np.array([min(int((d != o).sum()) for o in offline) for d in designs], dtype=float)
    got = nearest_distance(designs, one_hot(offline, VOCAB).astype(np.float32), VOCAB)
    np.testing.assert_array_equal(got, brute)
    assert got[30:35].tolist() == [0.0] * 5 and got[-1] <= 1.0


def test_split_is_seeded_disjoint_and_refuses_too_few_points():
    fit, held = split_offline(100, CriteriaConfig(holdout=0.3, seed=1))
    assert len(fit) == 70 and len(held) == 30 and not set(fit) & set(held)
    again, _ = split_offline(100, CriteriaConfig(holdout=0.3, seed=1))
    np.testing.assert_array_equal(fit, again)
    with pytest.raises(BibInputError, match="criteria.holdout") as err:
        split_offline(100, CriteriaConfig(holdout=0.97))
    assert "leaves 3 to fit" in str(err.value)
    with pytest.raises(BibInputError, match="2 held out"):
        split_offline(60, CriteriaConfig(holdout=0.03))


def _csv_task(tmp_path, n: int = 60):
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGT"), 6)) for _ in range(n)]
    (tmp_path / "data.csv").write_text("sequence,score\n" + "".join(f"{s},{s.count('G')}\n" for s in seqs))
    return str(tmp_path / "data.csv")


def test_a_run_logs_every_criterion_and_the_distance_matches_its_designs(tmp_path, capsys):
    base = {**TINY_BASE, "engine": {**TINY_BASE["engine"], "designs": 8}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(base))
    data = _csv_task(tmp_path)
    assert main(["run", "--config", str(tmp_path / "tiny.yaml"), "--task", "csv", "--data", data,
                 "--output", str(tmp_path / "out"), "--no-progress"]) == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    for name in CRITERIA_NAMES:
        assert np.isfinite(result[name]), name
        assert all(name in step for step in result["trajectory"]), name  # criteria_at None: every step
    assert -1.0 <= result["proxy_heldout_spearman"] <= 1.0
    from bib_ray.tasks import make_task

    task = make_task("csv", path=data)
    import csv

    rows = list(csv.DictReader((tmp_path / "out" / "designs.csv").open()))
    designs = task.encode([row["design"] for row in rows])
    brute = np.mean([min(int((d != o).sum()) for o in task.offline_x) for d in designs])
    assert result["offline_nearest_distance"] == pytest.approx(brute)


def test_criteria_at_limits_the_costly_criteria_to_the_asked_steps(tmp_path):
    from bib_ray.runner import run_bib
    from bib_ray.spec import parse_run_spec

    spec = parse_run_spec({**TINY_BASE, "task": {"name": "csv", "options": {"path": _csv_task(tmp_path)}},
                           "engine": {**TINY_BASE["engine"], "designs": 8}}, "test")
    result = run_bib(spec, criteria_at=lambda step: step % 4 == 0)
    with_pairwise = [i + 1 for i, m in enumerate(result.trajectory) if "offline_pairwise_mean" in m]
    assert with_pairwise == [4, 6]  # step 4 asked, step 6 the last
    assert all("offline_proxy_mean" in m for m in result.trajectory)  # the cheap additive one: every step


def test_bad_holdout_is_one_line_error_before_any_lm(tmp_path):
    base = {**TINY_BASE, "criteria": {"holdout": 0.95}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(base))
    proc = run_cli(["run", "--config", "bad.yaml", "--task", "csv", "--data", _csv_task(tmp_path, n=40)],
                   cwd=tmp_path, env={"BIB_RAY_CACHE": str(tmp_path / "cache")})
    assert_one_line_error(proc, "criteria.holdout")
    assert not (tmp_path / "cache" / "lm").exists()


def test_search_metric_accepts_every_criterion_and_lists_them_for_an_unknown_one():
    space = {"name": "s", "base": TINY_BASE, "params": {"engine.lr": {"type": "loguniform", "low": 0.01, "high": 1}}}
    for name in CRITERIA_NAMES:
        mode = "min" if name == "offline_nearest_distance" else "max"
        parsed = parse_search_space({**space, "metric": name, "mode": mode}, "space")
        assert parsed.result_key == name and not parsed.uses_oracle
    with pytest.raises(BibInputError) as err:
        parse_search_space({**space, "metric": "offline_bogus"}, "space")
    assert all(name in str(err.value) for name in CRITERIA_NAMES) and "\n" not in str(err.value)
    with pytest.raises(BibInputError, match="mode: min"):
        parse_search_space({**space, "metric": "offline_nearest_distance"}, "space")


def test_csv_search_offers_only_offline_criteria(tmp_path):
    from bib_ray.distributed.search import validate_against_task

    space = {"name": "s", "base": {**TINY_BASE, "task": {"name": "csv", "options": {"path": _csv_task(tmp_path)}}},
             "params": {"engine.lr": {"type": "loguniform", "low": 0.01, "high": 1}}}
    with pytest.raises(BibInputError) as err:
        validate_against_task(parse_search_space({**space, "metric": "oracle_median"}, "space"))
    assert all(name in str(err.value) for name in CRITERIA_NAMES)
    for name in CRITERIA_NAMES:
        mode = "min" if name == "offline_nearest_distance" else "max"
        validate_against_task(parse_search_space({**space, "metric": name, "mode": mode}, "space"))
    tight = {**space, "metric": "proxy_mean", "base": {**space["base"], "criteria": {"holdout": 0.05}}}
    with pytest.raises(BibInputError, match="criteria.holdout"):
        validate_against_task(parse_search_space(tight, "space"))
