"""Adaptive LM replication (Stein's two stages) in a real ablation, and the plan keys it adds.

The extra LM seeds are checked against the formula computed here from the stage-one children's own
metrics in MLflow (scipy's t quantile), not against bib-ray's helpers.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from scipy import stats

from bib_ray.distributed.ablation import run_ablation
from bib_ray.distributed.plan import parse_plan
from bib_ray.errors import BibInputError
from bib_ray.tracking.store import Store

from helpers import TINY_BASE, assert_one_line_error, ray_session_with_cache, run_cli
from bib_ray.tracking.metric_keys import named_metrics

PLAN = {"name": "replicated", "base": TINY_BASE, "variants": ["fixed", "grad"], "adaptive_eta": [False],
        "baseline": False, "seeds": [0], "concurrency": 2}


@pytest.mark.parametrize("update, needles", [
    ({"primary_metric": "normalized_bogus"}, ("primary_metric", "normalized_bogus", "not logged")),
    ({"replication": {"target_half_width": 0}}, ("replication.target_half_width", "greater than 0")),
    # a task with no oracle and the default primary metric (normalized_median): the fix names proxy_median
    ({"base": {**TINY_BASE, "task": {"name": "csv", "options": {"path": "DATA"}}}},
     ("primary_metric", "normalized_median", "no oracle", "proxy_median")),
    ({"replication": {"target_half_width": 0.1, "initial_lm_seeds": 4, "max_lm_seeds": 3}},
     ("replication", "max_lm_seeds", "initial_lm_seeds")),
    ({"replication": {"target_half_width": 0.1}, "base": {**TINY_BASE, "lm": "some/model"}},
     ("replication", "explicit lm", "lm: null")),
    ({"replication": {"target_half_width": 0.1}, "lm_seeds": [0, 1]}, ("replication", "remove lm_seeds")),
])
def test_bad_replication_and_primary_metric_are_one_line_errors_before_anything_starts(tmp_path, update, needles):
    data = tmp_path / "d.csv"
    data.write_text("sequence,score\n" + "".join(f"{a}{b}{c}A,{i}\n" for i, (a, b, c) in
                                                 enumerate((a, b, c) for a in "ACGT" for b in "ACGT" for c in "AC")))
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump({**PLAN, **update}).replace("DATA", str(data)))
    proc = run_cli(["ablate", str(plan_file)], cwd=tmp_path, env={"BIB_RAY_CACHE": str(tmp_path / "cache")})
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "mlruns.db").exists() and not (tmp_path / "cache").exists()  # nothing started


def test_more_designs_than_a_csv_offline_set_is_refused_before_ray(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("sequence,score\n" + "".join(f"{a}{b}{c}A,{i}\n" for i, (a, b, c) in
                                                 enumerate((a, b, c) for a in "ACGT" for b in "ACGT" for c in "AC")))
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump({**PLAN, "base": {**TINY_BASE, "task": {"name": "csv", "options": {
        "path": str(data)}}, "engine": {**TINY_BASE["engine"], "designs": 64}}, "primary_metric": "proxy_median"}))
    proc = run_cli(["ablate", str(plan_file)], cwd=tmp_path, env={"BIB_RAY_CACHE": str(tmp_path / "cache")})
    assert_one_line_error(proc, "designs", "64")
    assert not (tmp_path / "mlruns.db").exists()


def test_replication_requires_the_default_lm_in_code():
    plan = parse_plan({**PLAN, "replication": {"target_half_width": 0.1}, "base": {**TINY_BASE, "lm": "x/y"}}, "p")
    from bib_ray.distributed.plan import expand_cells

    with pytest.raises(BibInputError, match="replication"):
        expand_cells(plan, plan.base)


def _median_diffs_by_lm(children) -> dict[int, float]:
    values = {(c.data.tags["variant"], int(c.data.tags["lm_seed"])): named_metrics(c.data.metrics)["normalized_median"]
              for c in children if c.info.status == "FINISHED"}
    return {lm: values[("grad", lm)] - values[("fixed", lm)] for (v, lm) in values if v == "grad"}


def test_a_replicated_plan_runs_exactly_the_extra_lm_seeds_the_formula_asks_for(tmp_path_factory):
    with ray_session_with_cache(tmp_path_factory.mktemp("replication")) as root:
        uri = f"sqlite:///{root}/mlruns.db"
        # Stage one alone first (the same cells: cell keys hash the plan name and the cell's run), to pick a
        # target that Stein's formula turns into exactly one extra LM seed.
        stage_one = parse_plan({**PLAN, "lm_seeds": [0, 1]}, "plan")
        first = run_ablation(stage_one, stage_one.base, uri, storage=str(root / "runs"), out_dir=root / "r1")
        diffs = _median_diffs_by_lm(Store(uri, PLAN["name"]).children(first.parent_id))
        s0 = float(np.std([diffs[0], diffs[1]], ddof=1))
        assert s0 > 0, "the two LMs moved grad - fixed alike; the example needs a spread"
        t = stats.t.ppf(1 - 0.05 / 2, 1)  # m = 1 primary comparison, n0 - 1 = 1 df
        half_width = t * s0 / math.sqrt(2.5)  # (t s0 / h)^2 = 2.5 -> N = 3
        assert max(2, math.ceil((t * s0 / half_width) ** 2)) == 3

        plan = parse_plan({**PLAN, "replication": {"target_half_width": half_width, "initial_lm_seeds": 2,
                                                   "max_lm_seeds": 4}}, "plan")
        outcome = run_ablation(plan, plan.base, uri, storage=str(root / "runs"), out_dir=root / "r2")
        children = Store(uri, PLAN["name"]).children(outcome.parent_id)
        assert outcome.parent_id == first.parent_id  # the same parent: stage one was reused, not re-run
        assert {c.info.status for c in children} == {"FINISHED"}
        got = sorted((c.data.tags["variant"], c.data.tags["lm_seed"]) for c in children)
        assert got == sorted((v, lm) for v in ("fixed", "grad") for lm in ("0", "1", "2"))
        lm_dirs = [p for p in (root / "cache" / "lm").iterdir() if p.is_dir()]
        assert sorted(json.loads((d / "bib_ray_pretrain.json").read_text())["config"]["seed"]
                      for d in lm_dirs) == [0, 1, 2]  # each LM pre-trained once
        grad = outcome.report.conclusions.find("tfbind8", "grad", "normalized_median")
        assert grad.method.startswith("stein") and grad.units == 3 and grad.stage_one_lm_seeds == 2
        assert grad.lm_seeds_required == 3 and grad.capped is False
        assert grad.half_width <= half_width * (1 + 1e-9)
        all_diffs = _median_diffs_by_lm(children)
        mean = np.mean([all_diffs[k] for k in (0, 1, 2)])
        assert (grad.low, grad.high) == pytest.approx((mean - t * s0 / math.sqrt(3), mean + t * s0 / math.sqrt(3)))
        tags = Store(uri, PLAN["name"]).client.get_run(outcome.parent_id).data.tags
        assert tags["replication.target_half_width"] == str(half_width) and tags["primary_metric"] == "normalized_median"
        assert "half-width" in outcome.report.conclusions_md.read_text()
        # Each table says which machine made it: the CPU kernel path torch dispatched, from the children's tags.
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
        assert {c.data.tags["cpu_capability"] for c in children} == {capability}
        assert f"kernels {capability}, torch {torch.__version__}" in outcome.report.conclusions_md.read_text()
        # A re-run finds nothing left to do: the formula asks for the same seeds, all finished.
        again = run_ablation(plan, plan.base, uri, storage=str(root / "runs"), out_dir=root / "r3")
        assert len(again.skipped) == len(again.cells) == 6
