"""The choice of the best trial, on hand-made result grids: mode max and min, ASHA-stopped trials,
failed and non-finite trials, and the seed the best config carries."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from bib_ray.distributed.search import best_of
from bib_ray.distributed.space import parse_search_space
from bib_ray.spec import RunSpec
from bib_ray.trial_records import FinalRecord, StepReport, StepRow, WorkerInfo

from helpers import TINY_BASE

BASE = RunSpec.model_validate(TINY_BASE).model_dump(mode="json")


@dataclass
class FakeResult:
    """What best_of reads of a ray.tune.Result."""

    trial_id: str
    value: float | None
    final: bool = True
    error: object = None
    lr: float = 0.1
    metrics: dict = field(init=False)
    config: dict = field(init=False)

    def __post_init__(self) -> None:
        worker = WorkerInfo(pid=1, node="here", lm_loads=1)
        metrics = {} if self.value is None else {"offline_proxy_mean": self.value}
        record = (FinalRecord(step=12, metrics=metrics, replicates=2, worker=worker) if self.final
                  else StepReport(rows=(StepRow(step=4, seed=4, lm_seed=0, metrics=metrics),), worker=worker))
        self.metrics = {"trial_id": self.trial_id, **record.to_result()}
        self.config = {"engine.lr": self.lr}  # a search trial's config: its sampled parameters


def _space(mode: str):
    return parse_search_space({"name": "s", "base": TINY_BASE, "metric": "offline_proxy_mean", "mode": mode,
                               "seeds": [4, 7], "params": {"engine.lr": {"type": "loguniform", "low": 0.01,
                                                                         "high": 1.0}}}, "space")


def _best(results, mode):
    return best_of(SimpleNamespace(results=results), _space(mode))


GRID = [FakeResult("a", 0.5, lr=0.11), FakeResult("b", 0.9, final=False, lr=0.12),  # stopped early, higher
        FakeResult("c", 0.7, lr=0.13), FakeResult("d", float("nan"), lr=0.14),
        FakeResult("e", 5.0, error=RuntimeError("worker died"), lr=0.15), FakeResult("f", 0.2, lr=0.16),
        FakeResult("g", -1.0, final=False, lr=0.17)]


@pytest.mark.parametrize("mode,expected", [("max", "c"), ("min", "f")])
def test_best_is_a_complete_trial(mode, expected):
    spec, metrics = _best(GRID, mode)
    assert metrics["trial_id"] == expected
    chosen = next(r for r in GRID if r.trial_id == expected)
    assert spec.engine.lr == chosen.lr
    assert spec.engine.seed == 4  # the space's first seed: best.yaml re-runs that one


@pytest.mark.parametrize("mode,expected", [("max", "b"), ("min", "g")])
def test_stopped_trials_count_when_none_completed(mode, expected):
    stopped = [r for r in GRID if not r.final] + [FakeResult("h", float("inf"), final=False)]
    _, metrics = _best(stopped, mode)
    assert metrics["trial_id"] == expected


def test_no_usable_trial_gives_none():
    assert _best([FakeResult("x", float("nan")), FakeResult("y", None),
                  FakeResult("z", 1.0, error=RuntimeError())], "max") == (None, {})
