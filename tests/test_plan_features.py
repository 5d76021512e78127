"""An ablation plan with what the shipped plans use and the tiny ablation test does not: several tasks
(TFBind8 and a small Ehrlich), the ``grad`` baseline, both Adaptive-eta settings and overrides.

Each override must be seen to apply where it matches and nowhere else, in the logged params and in
what the cells did (the learning rate each step used, logged as ``eta``).
"""

from __future__ import annotations

import pytest

from bib_ray.distributed.ablation import run_ablation
from bib_ray.distributed.plan import parse_plan
from bib_ray.tracking.store import Store

from helpers import TINY_BASE, ray_session_with_cache
from bib_ray.tracking.metric_keys import named_metrics

EHRLICH = {"name": "ehrlich", "options": {"length": 8, "vocab": 4, "motifs": 1, "motif_length": 2,
                                          "quantization": 2, "n_samples": 64}}
PLAN = {"name": "plan_features", "base": TINY_BASE, "tasks": ["tfbind8", EHRLICH], "variants": ["learned"],
        "baseline": True, "adaptive_eta": [False, True], "seeds": [0], "concurrency": 2,
        "overrides": [{"match": {"task": "ehrlich"}, "set": {"engine.lr": 0.05}},
                      {"match": {"adaptive_eta": True}, "set": {"engine.eta_max": 0.02}}]}


@pytest.fixture(scope="module")
def plan_run(tmp_path_factory):
    with ray_session_with_cache(tmp_path_factory.mktemp("plan_features")) as root:
        plan = parse_plan(PLAN, "plan")
        uri = f"sqlite:///{root}/mlruns.db"
        outcome = run_ablation(plan, plan.base, uri, storage=str(root / "runs"), out_dir=root / "report")
        store = Store(uri, plan.name)
        yield store, outcome, store.children(outcome.parent_id)


def test_every_cell_of_tasks_variants_and_eta_finished(plan_run):
    _, outcome, children = plan_run
    cells = sorted((c.data.tags["task"], c.data.tags["variant"], c.data.tags["adaptive_eta"]) for c in children)
    assert cells == sorted((t, v, e) for t in ("tfbind8", "ehrlich") for v in ("learned", "grad")
                           for e in ("false", "true"))
    assert {c.info.status for c in children} == {"FINISHED"}
    for child in children:  # both tasks have an oracle: every cell is scored by it
        assert 0.0 <= named_metrics(child.data.metrics)["normalized_max"] <= 1.0
    assert {(e["task"], e["variant"]) for e in outcome.report.summary} == {
        (t, v) for t in ("tfbind8", "ehrlich") for v in ("learned", "learned+eta", "grad", "grad+eta")}


def test_overrides_applied_where_they_match_and_only_there(plan_run):
    store, _, children = plan_run
    for child in children:
        task, eta_on = child.data.tags["task"], child.data.tags["adaptive_eta"] == "true"
        lr = 0.05 if task == "ehrlich" else 0.1
        params = child.data.params
        assert float(params["engine.lr"]) == lr, (task, params["engine.lr"])
        assert float(params["engine.eta_max"]) == (0.02 if eta_on else 0.5)
        assert params["task.name"] == task
        etas = [m.value for m in store.client.get_metric_history(child.info.run_id, "eta")]
        assert len(etas) == 7  # 6 steps and the final record (at step 6)
        if eta_on:  # the learned rate stayed under the overridden clamp
            assert all(1e-4 <= e <= 0.02 + 1e-12 for e in etas), etas
        else:  # the fixed rate is the (overridden) lr at every step
            assert etas == pytest.approx([lr] * 7, rel=1e-7)  # the engine's float32 lr


def test_ehrlich_cells_ran_on_the_small_ehrlich_task(plan_run):
    _, _, children = plan_run
    for child in children:
        if child.data.tags["task"] == "ehrlich":
            assert child.data.params["task.options.length"] == "8"
            assert named_metrics(child.data.metrics)["mean_edit_distance"] <= 8
