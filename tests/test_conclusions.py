"""Verdicts that replicate: Holm, simultaneous intervals, Stein's two stages, power, random effects.

Each formula is checked against an independent implementation (statsmodels, scipy) or the textbook
formula written out here, never against bib-ray's own helpers; the report-level checks recompute from the
child runs' own metrics in MLflow.
"""

from __future__ import annotations

import csv
import io
import itertools
import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.meta_analysis import combine_effects
from statsmodels.stats.multitest import multipletests

from bib_ray.tracking.conclusions import (CONCLUSION_HEAD, InferenceSettings, conclude, conclusions_markdown,
                                          lm_seeds_needed)
from bib_ray.tracking.inference import (UnitEstimate, bonferroni_t_interval, holm_adjust, lm_seeds_for_power,
                                        random_effects, stein_interval, stein_total)
from bib_ray.tracking.report import build_report
from bib_ray.tracking.store import flatten

from ablation_fixtures import local_store
from bib_ray.tracking.metric_keys import named_metrics


# --- formulas against independent implementations -----------------------------------------------------
def test_holm_equals_statsmodels_on_random_p_values():
    rng = np.random.default_rng(3)
    for m in (1, 2, 5, 9, 27):
        p = rng.uniform(0, 0.2, size=m) ** 2
        ours = holm_adjust(p)
        reject, theirs, _, _ = multipletests(p, alpha=0.05, method="holm")
        assert ours == pytest.approx(list(theirs), rel=1e-12)
        # Holm is never less powerful than Bonferroni, and never more than the unadjusted test.
        assert all(a <= min(1, len(p) * b) + 1e-15 and a >= b for a, b in zip(ours, p))
    assert math.isnan(holm_adjust([0.01, math.nan, 0.02])[1])
    assert holm_adjust([0.01, math.nan, 0.02])[0] == pytest.approx(0.02)  # m = 2: the NaN does not count


def test_bonferroni_t_interval_equals_scipy():
    values = [0.12, 0.05, 0.2, 0.08]
    for m in (1, 3, 9):
        low, high = bonferroni_t_interval(UnitEstimate.of(values), m, 0.05)
        ref = stats.t.interval(1 - 0.05 / m, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
        assert (low, high) == pytest.approx(ref, rel=1e-12)
    # STATS_NOTES' worked example: k = 3, m = 9 -> t(0.99722, 2) of about 13.4.
    assert stats.t.ppf(1 - 0.05 / 18, 2) == pytest.approx(13.4, abs=0.05)
    est = UnitEstimate.of([1.0, 2.0, 3.0])
    assert est.t_p_value() == pytest.approx(stats.ttest_1samp([1.0, 2.0, 3.0], 0).pvalue, rel=1e-12)


def test_stein_total_and_interval_equal_the_formula_on_a_constructed_example():
    stage_one = np.array([0.10, 0.02, 0.15])  # n0 = 3
    s0 = stage_one.std(ddof=1)
    alpha, h = 0.05 / 3, 0.05
    by_hand = max(3, math.ceil((stats.t.ppf(1 - alpha / 2, 2) * s0 / h) ** 2))
    assert stein_total(3, s0, h, alpha) == by_hand
    assert by_hand > 3  # the example needs a second stage
    extra = np.linspace(0.05, 0.11, by_hand - 3)
    result = stein_interval(np.concatenate([stage_one, extra]), 3, alpha)
    mean = np.concatenate([stage_one, extra]).mean()
    half = stats.t.ppf(1 - alpha / 2, 2) * s0 / math.sqrt(by_hand)
    assert (result.low, result.high) == pytest.approx((mean - half, mean + half), rel=1e-12)
    assert result.half_width <= h + 1e-12  # the target is met whatever s0 was
    assert result.p_value == pytest.approx(2 * stats.t.sf(abs(mean) * math.sqrt(by_hand) / s0, 2), rel=1e-12)
    # A spread small enough needs no second stage.
    assert stein_total(3, 0.001, h, alpha) == 3
    with pytest.raises(ValueError):
        stein_total(1, 0.1, h, alpha)


def test_stein_interval_keeps_its_coverage_when_n_is_chosen_from_the_data():
    """Monte Carlo: with N chosen from stage one, Stein's interval covers the true mean at >= its level."""
    rng = np.random.default_rng(0)
    covered, trials, alpha = 0, 2000, 0.1
    for _ in range(trials):
        first = rng.normal(0.3, 0.2, size=3)
        n = min(stein_total(3, first.std(ddof=1), 0.15, alpha), 60)
        values = np.concatenate([first, rng.normal(0.3, 0.2, size=n - 3)])
        r = stein_interval(values, 3, alpha)
        covered += r.low <= 0.3 <= r.high
    assert covered / trials >= 1 - alpha - 0.02


def test_power_seeds_are_the_smallest_n_that_satisfies_the_formula():
    for d, s, a in ((0.05, 0.08, 0.05), (0.02, 0.1, 0.05 / 9), (0.3, 0.05, 0.05)):
        n = lm_seeds_for_power(d, s, a)

        def need(k: int) -> float:
            return ((stats.t.ppf(1 - a / 2, k - 1) + stats.t.ppf(0.8, k - 1)) * s / d) ** 2

        assert n >= need(n)
        assert n == 2 or n - 1 < need(n - 1)
    assert lm_seeds_for_power(0.0, 0.1, 0.05) is None


def test_random_effects_equal_statsmodels_dersimonian_laird():
    y = np.array([0.10, 0.50, -0.20, 0.30, 0.12])
    v = np.array([0.010, 0.020, 0.015, 0.030, 0.004])
    ours = random_effects(y, v, 0.05)
    theirs = combine_effects(y, v, method_re="dl", use_t=True)
    assert theirs.tau2 > 0  # heterogeneous: statsmodels' tau^2 is not truncated at 0, ours is
    assert ours.tau2 == pytest.approx(theirs.tau2, rel=1e-10)
    assert ours.i2 == pytest.approx(theirs.i2, rel=1e-10)
    assert ours.mu == pytest.approx(theirs.mean_effect_re, rel=1e-12)
    assert ours.se == pytest.approx(theirs.sd_eff_w_re, rel=1e-10)
    hksj = theirs.summary_frame().loc["random effect wls"]
    assert (ours.low, ours.high) == pytest.approx((hksj["ci_low"], hksj["ci_upp"]), rel=1e-9)
    # Homogeneous effects: tau^2 = 0 and I^2 = 0.
    flat = random_effects([0.1, 0.1, 0.1], [0.01, 0.02, 0.03])
    assert flat.tau2 == 0 and flat.i2 == 0 and flat.mu == pytest.approx(0.1)


# --- verdicts on a synthetic ablation in MLflow ---------------------------------------------------------
VARIANTS = ("fixed", "learned", "grad", "forward")
TASKS = ("tfbind8", "aav")
LM_SEEDS = (0, 1, 2, 3)
SEEDS = (0, 1)


def _value(task: int, variant: str, lm_seed: int, seed: int) -> float:
    """grad far below fixed on every LM (a clear 'worse'); learned a hair above with LM noise (unresolved);
    forward above by a margin that an LM-dependent term blurs."""
    base = 0.5 + 0.05 * task + 0.1 * np.sin(2.3 * lm_seed + task) + 0.005 * seed
    shift = {"fixed": 0.0, "learned": 0.004 * np.cos(5.1 * lm_seed + 2 * task), "grad": -0.3 - 0.01 * lm_seed,
             "forward": 0.04 + 0.03 * np.sin(1.3 * lm_seed + task)}[variant]
    return float(base + shift + 0.002 * seed * (variant == "learned"))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("verdicts")
    store = local_store(f"sqlite:///{root}/mlruns.db", "verdicts", root / "artifacts")
    parent = store.create_run("verdicts", {"bib_ray.kind": "ablation", "bib_ray.name": "verdicts",
                                           "reference": "fixed", "primary_metric": "normalized_median"})
    for (t, task), variant, lm_seed, seed in itertools.product(enumerate(TASKS), VARIANTS, LM_SEEDS, SEEDS):
        cell = f"{task}/{variant}/lm{lm_seed}/seed{seed}"
        run = store.create_run(cell, {"task": task, "variant": variant, "adaptive_eta": "false", "seed": str(seed),
                                      "lm_seed": str(lm_seed), "cell": cell, "cell_key": cell}, parent)
        store.log_params(run, flatten({"lm": None}))
        score = _value(t, variant, lm_seed, seed)
        store.log_metrics(run, {"normalized_max": score + 0.3 + 0.01 * lm_seed, "normalized_median": score,
                                "normalized_mean": score - 0.05, "mean_edit_distance": 3.0}, 1)
        store.set_status(run, "FINISHED")
    store.set_status(parent, "FINISHED")
    report = build_report(store, parent, root / "report")
    yield store, parent, report


def _lm_means_of_differences(store, parent, task: str, variant: str, metric: str) -> list[float]:
    values: dict[tuple[str, int, int], float] = {}
    for run in store.children(parent):
        tags = run.data.tags
        if tags["task"] == task and run.info.status == "FINISHED":
            values[(tags["variant"], int(tags["lm_seed"]), int(tags["seed"]))] = named_metrics(run.data.metrics)[metric]
    return [np.mean([values[(variant, lm, s)] - values[("fixed", lm, s)] for s in SEEDS]) for lm in LM_SEEDS]


def test_verdicts_rest_on_holm_and_bonferroni_equal_to_an_independent_computation(synthetic):
    store, parent, report = synthetic
    conclusions = report.conclusions
    for metric, family in (("normalized_median", "primary"), ("normalized_max", "secondary"),
                           ("normalized_mean", "secondary")):
        mine = [c for c in conclusions.comparisons if c.metric == metric]
        assert len(mine) == len(TASKS) * (len(VARIANTS) - 1) and {c.family for c in mine} == {family}
        diffs = {(c.task, c.variant): _lm_means_of_differences(store, parent, c.task, c.variant, metric) for c in mine}
        raw = [stats.ttest_1samp(diffs[(c.task, c.variant)], 0).pvalue for c in mine]
        _, holm, _, _ = multipletests(raw, alpha=0.05, method="holm")
        m = len(mine)
        for c, p_holm in zip(mine, holm):
            d = diffs[(c.task, c.variant)]
            assert c.estimate == pytest.approx(np.mean(d), rel=1e-10)
            assert c.p_adjusted == pytest.approx(p_holm, rel=1e-8)
            low, high = stats.t.interval(1 - 0.05 / m, len(d) - 1, loc=np.mean(d), scale=stats.sem(d))
            assert (c.low, c.high) == pytest.approx((low, high), rel=1e-9)
            expected = "unresolved" if p_holm >= 0.05 else ("better" if np.mean(d) > 0 else "worse")
            assert c.verdict == expected
            assert c.lm_seeds == LM_SEEDS and c.units == len(LM_SEEDS) and c.family_size == m
    by = {(c.task, c.variant): c.verdict for c in conclusions.primary()}
    assert by[("tfbind8", "grad")] == "worse" and by[("aav", "grad")] == "worse"
    assert by[("tfbind8", "learned")] == "unresolved"
    assert conclusions.find("tfbind8", "learned", "normalized_median").lm_seeds_to_resolve >= 2


def test_conclusions_files_are_written_logged_and_printed(synthetic):
    store, parent, report = synthetic
    text = report.conclusions_md.read_text()
    header = text.splitlines()[0]
    assert header.startswith("| task | variant - reference | metric |")
    assert [h.strip() for h in header.strip("|").split("|")] == list(CONCLUSION_HEAD)
    rows = list(csv.DictReader(io.StringIO(report.conclusions_csv.read_text())))
    assert len(rows) == len(report.conclusions.comparisons)
    assert {r["verdict"] for r in rows} <= {"better", "worse", "unresolved"}
    verdict_cells = [line.split("|")[9].strip() for line in text.splitlines()[2:] if line.startswith("| ")
                     and "variant - reference" not in line and "normalized_" in line.split("|")[3]]
    assert set(verdict_cells) <= {"better", "worse", "unresolved"} and verdict_cells
    assert "Holm" in text and "Bonferroni" in text
    logged = {a.path for a in store.client.list_artifacts(parent, "report")}
    assert {"report/conclusions.md", "report/conclusions.csv", "report/pooled.csv"} <= logged
    assert "Verdicts:" in report.text and header in report.text
    # paired.md's stars are the adjusted verdicts, not the unadjusted intervals.
    for row in report.paired:
        line = next(l for l in report.paired_md.read_text().splitlines()
                    if l.startswith(f"| {row['task']} | {row['variant']} |"))
        median_cell = line.split("|")[5]
        assert ("*" in median_cell) == (row["median_verdict"] != "unresolved")


def test_pooled_effects_equal_statsmodels_over_the_tasks(synthetic):
    store, parent, report = synthetic
    pooled = {p.variant: p for p in report.conclusions.pooled}
    assert set(pooled) == {"learned", "grad", "forward"}
    m = len(pooled)
    raw = []
    for variant in ("forward", "learned", "grad"):
        y, v = [], []
        for task in TASKS:
            d = _lm_means_of_differences(store, parent, task, variant, "normalized_median")
            y.append(np.mean(d))
            v.append(np.var(d, ddof=1) / len(d))
        theirs = combine_effects(np.array(y), np.array(v), method_re="dl", use_t=True, alpha=0.05 / m)
        # statsmodels leaves a negative DL tau^2 untruncated; truncated at 0 the pooling is the fixed-effect one.
        kind = "random" if theirs.tau2 > 0 else "fixed"
        hksj = theirs.summary_frame(alpha=0.05 / m).loc[f"{kind} effect wls"]
        mu = theirs.mean_effect_re if kind == "random" else theirs.mean_effect_fe
        se = theirs.sd_eff_w_re_hksj if kind == "random" else theirs.sd_eff_w_fe_hksj
        got = pooled[variant]
        assert got.estimate == pytest.approx(mu, rel=1e-10)
        assert got.tau2 == pytest.approx(max(0.0, theirs.tau2), rel=1e-8, abs=1e-14)
        assert got.i2 == pytest.approx(max(0.0, theirs.i2), rel=1e-8, abs=1e-12)
        assert (got.low, got.high) == pytest.approx((hksj["ci_low"], hksj["ci_upp"]), rel=1e-8)
        raw.append(2 * stats.t.sf(abs(mu) / se, len(TASKS) - 1))
    _, holm, _, _ = multipletests(raw, method="holm")
    for variant, p in zip(("forward", "learned", "grad"), holm):
        assert pooled[variant].p_adjusted == pytest.approx(p, rel=1e-8)
    across = {r["variant"]: r for r in report.across_tasks}
    assert across["grad"]["pooled_estimate"] == pytest.approx(pooled["grad"].estimate)
    assert across["grad"]["trails_reference"] == 2  # worse on both tasks, by the adjusted verdicts
    assert "tau^2" in report.across_md.read_text()


def test_stein_verdicts_and_the_seeds_they_ask_for():
    """A replicated plan: stage one (3 LM seeds) sets N; the report uses Stein's interval for the primary."""
    rng = np.random.default_rng(1)
    rows = []
    effects = {"learned": 0.02, "grad": -0.2}
    lm_by_variant = {"fixed": 8, "learned": 8, "grad": 3}
    for variant, n in lm_by_variant.items():
        for lm in range(n):
            noise = rng.normal(0, 0.03)
            for seed in (0, 1):
                value = 0.5 + 0.1 * math.sin(lm) + effects.get(variant, 0) + (noise if variant != "fixed" else 0)
                rows.append({"task": "t", "variant": variant, "lm_seed": lm, "seed": seed, "lm": "default",
                             "metrics": {"normalized_median": value}})
    settings = InferenceSettings(primary_metric="normalized_median", initial_lm_seeds=3, target_half_width=0.02,
                                 max_lm_seeds=8)
    stage_one = [r for r in rows if r["lm_seed"] < 3]
    needed = lm_seeds_needed(stage_one, "fixed", settings)
    for variant in ("learned", "grad"):
        d = [np.mean([r["metrics"]["normalized_median"] for r in stage_one if r["variant"] == variant and r["lm_seed"] == lm])
             - np.mean([r["metrics"]["normalized_median"] for r in stage_one if r["variant"] == "fixed" and r["lm_seed"] == lm])
             for lm in range(3)]
        by_hand = max(3, math.ceil((stats.t.ppf(1 - 0.05 / 4, 2) * np.std(d, ddof=1) / 0.02) ** 2))
        assert needed[("t", variant)] == min(by_hand, 8)
    conclusions = conclude(rows, "fixed", settings)
    learned = conclusions.find("t", "learned", "normalized_median")
    assert learned.method.startswith("stein") and learned.stage_one_lm_seeds == 3 and learned.units == 8
    assert learned.capped == (learned.lm_seeds_required > 8)
    assert "half-width" in conclusions_markdown(conclusions).splitlines()[0]
