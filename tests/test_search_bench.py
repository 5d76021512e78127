"""The search benchmark's account of each trial slot's time adds up to the wall time, and its steady
overhead share counts each slot from its first trial's start to its last trial's end."""

from __future__ import annotations

import pytest

from bib_ray.bench.search_bench import steady_overhead_share, where_time_went
from bib_ray.trial_records import FinalRecord, TrialTiming, WorkerInfo


def _final(pid: int, started: float, ended: float, steps_s: float) -> FinalRecord:
    timing = TrialTiming(started_at=started, ended_at=ended, setup_seconds=0.0, design_seconds=steps_s,
                         run_seconds=ended - started, trial_seconds=ended - started)
    return FinalRecord(step=20, metrics={}, replicates=1, worker=WorkerInfo(pid=pid, node="n", lm_loads=1),
                       timing=timing)


# worker 1: trials at 105-108 and 108.5-112; worker 2: one trial at 106-115 (given out of order)
FINALS = [_final(1, 108.5, 112.0, 3.0), _final(1, 105.0, 108.0, 2.5), _final(2, 106.0, 115.0, 8.0)]


def test_slot_timeline_parts_add_up_to_the_wall_time():
    t0, t1 = 100.0, 120.0
    parts = where_time_went(FINALS, t0, t1)
    assert sum(parts.values()) == pytest.approx(t1 - t0)
    assert parts["startup"] == pytest.approx((5.0 + 6.0) / 2)
    assert parts["between_trials"] == pytest.approx(0.5 / 2)
    assert parts["bib_steps"] == pytest.approx((5.5 + 8.0) / 2)
    assert parts["in_trial_not_steps"] == pytest.approx((0.5 + 0.5 + 1.0) / 2)
    assert parts["tail"] == pytest.approx((8.0 + 5.0) / 2)


def test_steady_share_leaves_start_up_and_tail_out():
    # slot spans: worker 1 from 105 to 112 (7 s, 5.5 s of steps), worker 2 from 106 to 115 (9 s, 8 s)
    assert steady_overhead_share(FINALS) == pytest.approx(1 - (5.5 + 8.0) / (7.0 + 9.0))


def test_gpu_share_without_a_gpu_is_one_line_error(tmp_path):
    """Refused before any LM is pre-trained (the cache stays empty)."""
    from helpers import assert_one_line_error, run_cli

    proc = run_cli(["bench", "search", "--gpu", "0.25"], cwd=tmp_path,
                   env={"CUDA_VISIBLE_DEVICES": "", "BIB_RAY_CACHE": str(tmp_path / "cache")})
    assert_one_line_error(proc, "--gpu")
    assert not (tmp_path / "cache" / "lm").exists()


def test_bare_tune_run_times_its_sleeping_trials(tmp_path):
    """The bare Tune + Optuna reference of ``bench search``: every trial sleeps as asked, on at most
    ``slots`` workers, and its steady share counts what is left between and around the sleeps."""
    import ray
    from ray import tune

    from bib_ray.bench.bare_tune import run_bare_tune
    from bib_ray.distributed.tune_job import init_ray

    init_ray(None, num_cpus=2)
    try:
        finals = run_bare_tune({"a": tune.uniform(0.0, 1.0), "b": tune.loguniform(0.01, 1.0)}, trials=4, slots=2,
                               sleep_s=0.3, storage=tmp_path)
    finally:
        ray.shutdown()
    assert len(finals) == 4
    assert all(0.3 <= f.timing.design_seconds < f.timing.ended_at - f.timing.started_at + 1e-6 for f in finals)
    assert len({f.worker.pid for f in finals}) <= 2
    share = steady_overhead_share(finals)
    assert 0.0 < share < 1.0
