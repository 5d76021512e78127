"""LM replicates: the lm_seeds axis, the report's intervals and paired differences, LM provenance.

The statistics are checked against an independent computation with numpy and scipy on the child runs'
own metrics (not on the report's intermediate values), so a report that averaged the wrong unit, paired
the wrong replicates or mislabelled an interval fails here.
"""

from __future__ import annotations

import csv
import io
import itertools

import numpy as np
import pytest
import yaml
from scipy import stats

from bib_ray.distributed.ablation import run_ablation
from bib_ray.distributed.plan import expand_cells, parse_plan
from bib_ray.proxy import small_lm
from bib_ray.tracking.report import build_report, paired, summarise
from bib_ray.tracking.stats import mean_ranks, sign_flip_p_value
from bib_ray.tracking.store import Store, flatten

from ablation_fixtures import local_store
from helpers import TINY_BASE, assert_no_running_runs, assert_one_line_error, ray_session_with_cache, run_cli
from bib_ray.tracking.metric_keys import named_metrics

LM_PLAN = {"name": "lm_replicates", "base": TINY_BASE, "variants": ["fixed", "learned"], "adaptive_eta": [False],
           "baseline": False, "seeds": [0, 1], "lm_seeds": [0, 1], "concurrency": 2}


# --- statistics against scipy, on a synthetic ablation in MLflow ----------------------------------------
def _value(task: int, variant: int, lm_seed: int, seed: int) -> float:
    """A score with a large LM effect, a small design-seed effect and a variant effect that depends on
    the LM (so paired differences vary across LMs and their interval is not degenerate)."""
    return 0.4 + 0.1 * task + 0.05 * variant + 0.12 * np.sin(3.1 * lm_seed + task) \
        + 0.01 * seed * (1 + variant) + 0.02 * variant * np.cos(1.7 * lm_seed)


VARIANTS = ("fixed", "learned", "grad")
TASKS = ("tfbind8", "aav")
LM_SEEDS = (0, 1, 2)
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_lm")
    store = local_store(f"sqlite:///{root}/mlruns.db", "synthetic_lm", root / "artifacts")
    parent = store.create_run("synthetic_lm", {"bib_ray.kind": "ablation", "bib_ray.name": "synthetic_lm",
                                               "reference": "fixed"})
    for (t, task), (v, variant), lm_seed, seed in itertools.product(enumerate(TASKS), enumerate(VARIANTS),
                                                                    LM_SEEDS, SEEDS):
        cell = f"{task}/{variant}/lm{lm_seed}/seed{seed}"
        run = store.create_run(cell, {"task": task, "variant": variant, "adaptive_eta": "false", "seed": str(seed),
                                      "lm_seed": str(lm_seed), "cell": cell, "cell_key": cell}, parent)
        store.log_params(run, flatten({"lm": None, "engine": {"variant": variant}}))
        score = _value(t, v, lm_seed, seed)
        store.log_metrics(run, {"normalized_max": score + 0.3, "normalized_median": score,
                                "normalized_mean": score - 0.05, "mean_edit_distance": 3.0 + seed}, 1)
        store.set_status(run, "FINISHED")
    # A replicate of the reference that failed: it must drop out of the pairs, not pair with a stale value.
    run = store.create_run("bad", {"task": "tfbind8", "variant": "fixed", "adaptive_eta": "false", "seed": "7",
                                   "lm_seed": "0", "cell": "bad", "cell_key": "bad"}, parent)
    store.log_metrics(run, {"normalized_median": 99.0}, 1)
    store.set_status(run, "FAILED")
    store.set_status(parent, "FINISHED")
    report = build_report(store, parent, root / "report")
    yield store, parent, report


def _child_values(store: Store, parent: str, task: str, variant: str, metric: str) -> dict[tuple[int, int], float]:
    out = {}
    for run in store.children(parent):
        tags = run.data.tags
        if run.info.status == "FINISHED" and tags["task"] == task and tags["variant"] == variant:
            out[(int(tags["lm_seed"]), int(tags["seed"]))] = named_metrics(run.data.metrics)[metric]
    return out


def _scipy_t_interval_over_lm_means(values: dict[tuple[int, int], float]) -> tuple[float, float]:
    lm_means = [np.mean([v for (lm, _), v in values.items() if lm == seed]) for seed in sorted({k[0] for k in values})]
    return stats.t.interval(0.95, len(lm_means) - 1, loc=np.mean(lm_means), scale=stats.sem(lm_means))


def test_summary_interval_is_t_over_lm_seed_means(synthetic):
    store, parent, report = synthetic
    assert len(report.summary) == len(TASKS) * len(VARIANTS)
    for entry in report.summary:
        assert entry["seeds"] == 9 and entry["lm_seeds"] == 3 and entry["interval_unit"] == "lm_seed"
        for column, metric in (("max", "normalized_max"), ("median", "normalized_median"),
                               ("mean", "normalized_mean")):
            values = _child_values(store, parent, entry["task"], entry["variant"], metric)
            assert entry[f"{column}_mean"] == pytest.approx(np.mean(list(values.values())), rel=1e-12)
            assert entry[f"{column}_std"] == pytest.approx(np.std(list(values.values())), rel=1e-12)
            low, high = _scipy_t_interval_over_lm_means(values)
            assert (entry[f"{column}_ci_low"], entry[f"{column}_ci_high"]) == pytest.approx((low, high), rel=1e-10)
            # Not the naive interval over the 9 replicates as if independent (much narrower here).
            naive = stats.t.interval(0.95, 8, loc=np.mean(list(values.values())), scale=stats.sem(list(values.values())))
            assert high - low > 1.5 * (naive[1] - naive[0])


def test_paired_differences_and_p_values_equal_scipy(synthetic):
    store, parent, report = synthetic
    assert {(p["task"], p["variant"]) for p in report.paired} == {(t, v) for t in TASKS for v in ("learned", "grad")}
    for row in report.paired:
        assert row["reference"] == "fixed" and row["pairs"] == 9
        for column, metric in (("median", "normalized_median"), ("max", "normalized_max")):
            mine = _child_values(store, parent, row["task"], row["variant"], metric)
            ref = _child_values(store, parent, row["task"], "fixed", metric)
            diffs = {k: mine[k] - ref[k] for k in mine}
            assert row[f"{column}_diff"] == pytest.approx(np.mean(list(diffs.values())), rel=1e-10)
            low, high = _scipy_t_interval_over_lm_means(diffs)
            assert (row[f"{column}_ci_low"], row[f"{column}_ci_high"]) == pytest.approx((low, high), rel=1e-9)
            d = np.array(list(diffs.values()))
            exact = stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf,
                                           alternative="two-sided").pvalue
            assert row[f"{column}_p"] == pytest.approx(exact, rel=1e-9)
            assert row[f"{column}_excludes_zero"] == (low > 0 or high < 0)
    written = list(csv.DictReader(io.StringIO(report.paired_csv.read_text())))
    assert len(written) == len(report.paired)
    assert float(written[0]["median_ci_low"]) == report.paired[0]["median_ci_low"]


def test_table_csv_has_interval_columns_and_across_tasks(synthetic):
    store, parent, report = synthetic
    rows = list(csv.DictReader(io.StringIO(report.table_csv.read_text())))
    assert {"median_ci_low", "median_ci_high", "lm_seeds", "interval_unit"} <= set(rows[0])
    assert float(rows[0]["median_ci_low"]) == report.summary[0]["median_ci_low"]
    assert "[" in report.markdown.splitlines()[2] and "3x3" in report.markdown.splitlines()[2]
    assert "t interval over LM-seed means" in report.markdown
    assert "given by the plan" not in report.markdown  # the default LM (MLflow logs lm: None as "None")
    # Across tasks: mean rank of the median per variant, as scipy ranks each task's means.
    ranks = {}
    for task in TASKS:
        means = {v: np.mean(list(_child_values(store, parent, task, v, "normalized_median").values())) for v in VARIANTS}
        for v, r in zip(VARIANTS, stats.rankdata([-means[v] for v in VARIANTS])):
            ranks.setdefault(v, []).append(r)
    got = {row["variant"]: row for row in report.across_tasks}
    for v in VARIANTS:
        assert got[v]["mean_rank"] == pytest.approx(np.mean(ranks[v]))
    for v in ("learned", "grad"):
        # Better/worse counts rest on the family-adjusted verdicts of the primary metric (the median).
        beats = sum(p["median_verdict"] == "better" for p in report.paired if p["variant"] == v)
        trails = sum(p["median_verdict"] == "worse" for p in report.paired if p["variant"] == v)
        assert got[v]["beats_reference"] == beats and got[v]["trails_reference"] == trails
        assert got[v]["paired_tasks"] == 2
    logged = {a.path for a in store.client.list_artifacts(parent, "report")}
    assert {"report/paired.csv", "report/paired.md", "report/across_tasks.csv", "report/paired.png"} <= logged


def test_one_lm_interval_is_over_design_seeds_and_says_so():
    rows = [{"task": "t", "variant": v, "seed": s, "lm_seed": None, "lm": "facebook/esm2_t6_8M_UR50D",
             "metrics": {"normalized_max": 0.1 * s + i, "normalized_median": 0.2 * s + i}}
            for i, v in enumerate(("fixed", "learned")) for s in range(4)]
    summary = summarise(rows)
    values = [0.2 * s for s in range(4)]
    low, high = stats.t.interval(0.95, 3, loc=np.mean(values), scale=stats.sem(values))
    assert summary[0]["interval_unit"] == "seed"
    assert (summary[0]["median_ci_low"], summary[0]["median_ci_high"]) == pytest.approx((low, high))
    from bib_ray.tracking.report import to_markdown

    assert "one LM given by the plan: facebook/esm2_t6_8M_UR50D" in to_markdown(summary)
    assert paired(rows, "fixed")[0]["median_diff"] == pytest.approx(1.0)


def test_sign_flip_and_ranks_by_hand():
    # All 8 sign patterns of (1, 2, 3): |mean| >= 2 only for +++ and ---.
    assert sign_flip_p_value([1.0, 2.0, 3.0]) == pytest.approx(2 / 8)
    assert sign_flip_p_value([1.0, -1.0]) == pytest.approx(1.0)
    assert mean_ranks({"a": {"x": 0.9, "y": 0.5, "z": 0.5}, "b": {"x": 0.1, "y": 0.2, "z": 0.3}}) == \
        {"x": 2.0, "y": 2.25, "z": 1.75}


# --- the lm_seeds axis on Ray, with real (tiny) pre-trained LMs -------------------------------------------
@pytest.fixture(scope="module")
def lm_ablation(tmp_path_factory):
    with ray_session_with_cache(tmp_path_factory.mktemp("lm_ablation")) as root:
        plan = parse_plan(LM_PLAN, "plan")
        uri = f"sqlite:///{root}/mlruns.db"
        outcome = run_ablation(plan, plan.base, uri, storage=str(root / "runs"), out_dir=root / "report")
        yield plan, uri, outcome, root


def test_lm_seeds_make_four_children_per_cell_and_pretrain_each_lm_once(lm_ablation):
    plan, uri, outcome, root = lm_ablation
    children = Store(uri, plan.name).children(outcome.parent_id)
    assert len(children) == 2 * 4 and {c.info.status for c in children} == {"FINISHED"}
    replicates = {(c.data.tags["variant"], c.data.tags["lm_seed"], c.data.tags["seed"]) for c in children}
    assert replicates == {(v, lm, s) for v in ("fixed", "learned") for lm in ("0", "1") for s in ("0", "1")}
    assert {c.data.params["lm_pretrain.seed"] for c in children} == {"0", "1"}
    lm_dirs = [p for p in (root / "cache" / "lm").iterdir() if p.is_dir()]
    assert len(lm_dirs) == 2  # one pre-trained LM per LM seed, shared by every cell on it
    import json

    assert sorted(json.loads((d / "bib_ray_pretrain.json").read_text())["config"]["seed"] for d in lm_dirs) == [0, 1]
    assert all(c.data.tags["lm_loads_in_worker"] in ("1", "2") for c in children)


def test_fingerprints_differ_between_lm_seeds_and_match_within(lm_ablation):
    plan, uri, outcome, _ = lm_ablation
    children = Store(uri, plan.name).children(outcome.parent_id)
    by_seed: dict[str, set[str]] = {}
    for child in children:
        by_seed.setdefault(child.data.tags["lm_seed"], set()).add(child.data.tags["lm_fingerprint"])
        assert child.data.tags["torch_version"] and child.data.tags["transformers_version"]
    assert all(len(prints) == 1 for prints in by_seed.values())
    assert by_seed["0"] != by_seed["1"]
    assert outcome.report.summary[0]["lm_seeds"] == 2 and outcome.report.summary[0]["interval_unit"] == "lm_seed"


def test_same_lm_seed_pretrains_to_the_same_fingerprint(tmp_path, monkeypatch, toy_task):
    from bib_ray.proxy.lm_proxy import LMProxy

    config = small_lm.SmallLMConfig(hidden=16, layers=1, heads=2, intermediate=32, steps=5, batch_size=16)
    prints = []
    for folder, seed in (("a", 0), ("b", 0), ("c", 1)):
        monkeypatch.setenv("BIB_RAY_CACHE", str(tmp_path / folder))
        path = small_lm.ensure_default_lm(toy_task, config.model_copy(update={"seed": seed}))
        prints.append(LMProxy.load(str(path), toy_task.alphabet).fingerprint())
    assert prints[0] == prints[1] != prints[2]


def test_lms_pretrained_side_by_side_equal_those_pretrained_one_by_one(tmp_path, monkeypatch):
    """The driver pre-trains several LMs in parallel processes; each must be the LM a serial run makes."""
    from bib_ray.spec import RunSpec
    from bib_ray.workbench import prepare_default_lms

    base = RunSpec.model_validate(TINY_BASE)
    specs = [base.with_updates({"lm_pretrain.seed": seed}) for seed in (0, 1, 0)]  # seed 0 twice: trained once
    weights = {}
    for workers in (1, 2):
        monkeypatch.setenv("BIB_RAY_CACHE", str(tmp_path / f"workers{workers}"))
        prepare_default_lms(specs, workers=workers)
        folders = sorted(p for p in (small_lm.cache_root() / "lm").iterdir() if p.is_dir())
        weights[workers] = {p.name: (p / "model.safetensors").read_bytes() for p in folders}
    assert len(weights[1]) == 2 and weights[1] == weights[2]

    import concurrent.futures

    def no_pool(*args, **kwargs):
        raise AssertionError("a process pool was started for LMs that are all cached")

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", no_pool)
    prepare_default_lms(specs, workers=2)  # everything cached: only verified, in this process


def test_recipe_version_is_part_of_the_cache_folder(monkeypatch):
    config = small_lm.SmallLMConfig(steps=10)
    before = small_lm.default_lm_path("tfbind8", "abc", config)
    monkeypatch.setattr(small_lm, "RECIPE_VERSION", small_lm.RECIPE_VERSION + 1)
    assert small_lm.default_lm_path("tfbind8", "abc", config) != before


def test_result_json_records_provenance(tmp_path):
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump({**TINY_BASE, "lm_pretrain": {**TINY_BASE["lm_pretrain"], "seed": 3}}))
    proc = run_cli(["run", "--config", str(spec_file), "--output", str(tmp_path / "out")], cwd=tmp_path,
                   env={"BIB_RAY_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["lm_seed"] == 3 and len(result["lm_fingerprint"]) == 16
    assert result["torch_version"] and result["transformers_version"]


# --- bad input ----------------------------------------------------------------------------------------
BAD_LM_PLANS = [
    ({"lm_seeds": [0, 1], "base": {**TINY_BASE, "lm": "./some_local_lm"}}, "lm_seeds"),
    ({"lm_seeds": [-1]}, "lm_seeds"),
    ({"lm_seeds": [1, 1]}, "lm_seeds"),
    ({"lm_seeds": []}, "lm_seeds"),
    ({"reference": "sideways"}, "reference"),
]


@pytest.mark.parametrize("change,needle", BAD_LM_PLANS)
def test_bad_lm_plan_is_one_line_error(tmp_path, change, needle):
    (tmp_path / "some_local_lm").mkdir()
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump({**LM_PLAN, **change}))
    uri = f"sqlite:///{tmp_path}/m.db"
    proc = run_cli(["ablate", "plan.yaml", "--tracking-uri", uri], cwd=tmp_path,
                   env={"BIB_RAY_CACHE": str(tmp_path / "cache")})
    assert_one_line_error(proc, needle)
    assert_no_running_runs(uri)
    assert not (tmp_path / "cache" / "lm").exists()  # rejected before any pre-training


def test_bad_lm_seeds_in_a_search_space(tmp_path):
    space = {"name": "s", "base": {**TINY_BASE, "lm": "./some_local_lm"}, "lm_seeds": [0, 1],
             "params": {"engine.lr": {"type": "loguniform", "low": 0.01, "high": 0.3}}, "trials": 2}
    (tmp_path / "some_local_lm").mkdir()
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    uri = f"sqlite:///{tmp_path}/m.db"
    proc = run_cli(["search", "space.yaml", "--tracking-uri", uri], cwd=tmp_path)
    assert_one_line_error(proc, "lm_seeds")
    assert_no_running_runs(uri)


def test_report_reference_must_have_replicates(synthetic, tmp_path):
    store, parent, _ = synthetic
    from bib_ray.errors import BibInputError

    with pytest.raises(BibInputError, match="reference"):
        build_report(store, parent, tmp_path / "r", reference="learned+eta")


def test_expand_cells_orders_replicates_and_matches_lm_seed_overrides():
    plan = parse_plan({**LM_PLAN, "overrides": [{"match": {"lm_seed": 1}, "set": {"engine.lr": 0.05}}]}, "plan")
    cells = expand_cells(plan, plan.base)
    assert [c.name for c in cells[:4]] == ["tfbind8/fixed/lm0/seed0", "tfbind8/fixed/lm0/seed1",
                                           "tfbind8/fixed/lm1/seed0", "tfbind8/fixed/lm1/seed1"]
    assert {c.spec.engine.lr for c in cells if c.spec.lm_pretrain.seed == 1} == {0.05}
    assert {c.spec.engine.lr for c in cells if c.spec.lm_pretrain.seed == 0} == {0.1}
    assert len({c.key for c in cells}) == len(cells)


# --- task panels (several landscapes of one kind in one plan) -------------------------------------------
def test_panel_lists_and_seeded_samples_expand_into_tasks():
    from bib_ray.tasks.tfbind8 import tf_names

    listed = parse_plan({**LM_PLAN, "tasks": {"name": "tfbind8", "tf": ["SIX6_REF_R1", "FOXC1_REF_R1"]}}, "plan")
    assert [t.options for t in listed.tasks] == [{"tf": "SIX6_REF_R1"}, {"tf": "FOXC1_REF_R1"}]
    draw = {"name": "tfbind8", "sample": {"option": "tf", "n": 5, "seed": 3, "contains": "_REF_R1"}}
    first = parse_plan({**LM_PLAN, "tasks": [draw, "aav"]}, "plan")
    again = parse_plan({**LM_PLAN, "tasks": [draw]}, "plan")
    other = parse_plan({**LM_PLAN, "tasks": [{**draw, "sample": {**draw["sample"], "seed": 4}}]}, "plan")
    tfs = [t.options["tf"] for t in first.tasks[:5]]
    assert first.tasks[5].name == "aav" and len(set(tfs)) == 5
    assert set(tfs) <= {n for n in tf_names() if "_REF_R1" in n}
    assert tfs == [t.options["tf"] for t in again.tasks] != [t.options["tf"] for t in other.tasks]
    plan, base = __import__("bib_ray.distributed.plan", fromlist=["load_plan"]).load_plan("ablations/tf_panel.yaml")
    cells = expand_cells(plan, base)
    assert len({c.spec.task.key() for c in cells}) == 6 and len(cells) == 6 * 4 * 2 * 2


@pytest.mark.parametrize("tasks,needle", [
    ({"name": "tfbind8", "sample": {"option": "tf", "n": 500}}, "sample.n"),
    ({"name": "tfbind8", "sample": {"option": "colour", "n": 2}}, "sample.option"),
    ({"name": "tfbind8", "tf": ["SIX6_REF_R1"], "sample": {"option": "tf", "n": 2}}, "both listed and sampled"),
])
def test_bad_panel_is_one_line_error(tmp_path, tasks, needle):
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump({**LM_PLAN, "tasks": tasks}))
    proc = run_cli(["ablate", "plan.yaml", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"], cwd=tmp_path)
    assert_one_line_error(proc, needle)
