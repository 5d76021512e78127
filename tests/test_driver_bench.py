"""``bib-ray bench driver`` runs the real search job on synthetic trials and accounts for every metric value.

A small run (2 workers, 3 trials of 2 replicates x 5 steps) as a user types it: its figures are printed one
``key=value`` a line, every value the synthetic trials emitted is read back from MLflow (rows_lost=0), and
the expected count is trials x steps x replicates x metrics. The 64-worker figures are the bench's, not a
test's (README, Benchmarks). The run starts Ray twice (about a minute): slow set.
"""

from __future__ import annotations

import re

import pytest

from bib_ray.bench.driver_bench import STEP_METRICS
from helpers import run_cli

KEYS = ("driver_trials_per_hour", "bare_tune_trials_per_hour", "ratio_to_bare", "rows_expected", "rows_logged",
        "rows_lost", "max_writer_lag_s", "max_writer_lag_first_half_s", "max_writer_lag_second_half_s",
        "driver_peak_rss_mib")


@pytest.mark.slow
def test_small_driver_bench_logs_every_row(tmp_path):
    proc = run_cli(["bench", "driver", "--workers", "2", "--trials", "3", "--steps", "5", "--replicates", "2",
                    "--designs", "4", "--sleep", "0"], cwd=tmp_path, env={"BIB_RAY_CACHE": str(tmp_path / "c")},
                   timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = dict(re.findall(r"^(\w+)=([-\d.]+)$", proc.stdout, flags=re.M))
    assert set(KEYS) <= set(figures), proc.stdout[-2000:]
    assert int(figures["rows_expected"]) == 3 * 5 * 2 * len(STEP_METRICS)
    assert int(figures["rows_logged"]) == int(figures["rows_expected"]) and int(figures["rows_lost"]) == 0
    assert float(figures["driver_trials_per_hour"]) > 0 and float(figures["bare_tune_trials_per_hour"]) > 0
    assert float(figures["driver_peak_rss_mib"]) > 50


def test_bad_size_is_a_one_line_error(tmp_path):
    proc = run_cli(["bench", "driver", "--workers", "0"], cwd=tmp_path, env={"BIB_RAY_CACHE": str(tmp_path / "c")})
    assert proc.returncode == 2 and "--workers" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
