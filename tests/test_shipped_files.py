"""Every shipped search space and ablation plan loads, validates, and expands as its comments say.

A shipped file that no longer validates (a renamed key, a bound the schema now refuses, a task option
that changed) is the first thing a user runs: these tests fail before the user does. The runs
themselves are exercised at tiny size in ``test_asha_search.py`` and ``test_plan_features.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bib_ray.distributed.space import lm_seed_list
from bib_ray.distributed.plan import expand_cells, load_plan
from bib_ray.distributed.search import default_lm_variants, validate_against_task
from bib_ray.distributed.space import Categorical, IntRange, load_search_space
from bib_ray.runner import validate_spec

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))
PLANS = sorted((ROOT / "ablations").glob("*.yaml"))


def test_shipped_files_are_found():
    assert {p.name for p in SPACES} >= {"bib_default.yaml", "variants.yaml"}
    assert {p.name for p in PLANS} >= {"bib_variants.yaml", "quick.yaml"}


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_search_space_file_is_valid(path):
    space = load_search_space(path)
    validate_against_task(space)  # the metric fits the task (an oracle metric needs an oracle)
    validate_spec(space.base)  # designs fit the offline set, device and LM source are usable
    tune_space = space.tune_space()
    assert set(tune_space) == set(space.params)
    for key, dist in space.params.items():  # every value the distribution can produce is a valid run
        if isinstance(dist, Categorical):
            candidates = list(dist.values)
        elif isinstance(dist, IntRange):
            candidates = [dist.low, dist.high]
        else:
            candidates = [dist.low, dist.high, (dist.low + dist.high) / 2]
        for value in candidates:
            assert space.contains(key, value)
            validate_spec(space.base.with_updates({key: value}))
        for _ in range(5):
            sampled = tune_space[key].sample()
            assert space.contains(key, sampled), (key, sampled)
    default_lm_variants(space)  # the driver can work out which default LMs to pre-train


def _stated_cell_count(path: Path) -> int | None:
    match = re.search(r"\((\d+) cells\)", path.read_text())
    return int(match.group(1)) if match else None


@pytest.mark.parametrize("path", PLANS, ids=[p.name for p in PLANS])
def test_ablation_plan_file_is_valid(path):
    plan, base = load_plan(path)
    cells = expand_cells(plan, base)
    tasks = plan.tasks or [base.task]
    variants = set(plan.variants) | ({"grad"} if plan.baseline else set())
    lm_seeds = lm_seed_list(plan.lm_seeds, base)
    assert len(cells) == len(tasks) * len(variants) * len(plan.adaptive_eta) * len(lm_seeds) * len(plan.seeds)
    assert len({c.key for c in cells}) == len(cells) and len({c.name for c in cells}) == len(cells)
    stated = _stated_cell_count(path)
    if stated is not None:  # the file's own comment promises a cell count
        assert len(cells) == stated, (path.name, len(cells), stated)
    seen = set()
    for cell in cells:
        assert cell.spec.engine.variant in variants and cell.spec.engine.seed in plan.seeds
        assert base.lm or cell.spec.lm_pretrain.seed in lm_seeds
        if cell.spec.task.key() not in seen:
            seen.add(cell.spec.task.key())
            validate_spec(cell.spec)  # task, options, designs vs the offline set, device
    assert len(seen) == len(tasks)
