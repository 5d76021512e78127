"""The search benchmark's account of each trial slot's time adds up to the wall time."""

from __future__ import annotations

import pytest

from bib_ray.bench.search_bench import where_time_went


def test_slot_timeline_parts_add_up_to_the_wall_time():
    t0, t1 = 100.0, 120.0
    finals = [  # worker 1: trials at 105-108 and 108.5-112; worker 2: one trial at 106-115
        {"worker_pid": 1, "trial_started_at": 108.5, "trial_ended_at": 112.0, "design_seconds": 3.0},
        {"worker_pid": 1, "trial_started_at": 105.0, "trial_ended_at": 108.0, "design_seconds": 2.5},
        {"worker_pid": 2, "trial_started_at": 106.0, "trial_ended_at": 115.0, "design_seconds": 8.0},
    ]
    parts = where_time_went(finals, t0, t1)
    assert sum(parts.values()) == pytest.approx(t1 - t0)
    assert parts["startup"] == pytest.approx((5.0 + 6.0) / 2)
    assert parts["between_trials"] == pytest.approx(0.5 / 2)
    assert parts["bib_steps"] == pytest.approx((5.5 + 8.0) / 2)
    assert parts["in_trial_not_steps"] == pytest.approx((0.5 + 0.5 + 1.0) / 2)
    assert parts["tail"] == pytest.approx((8.0 + 5.0) / 2)
