"""The reference for ``bench search``'s overhead share: a bare Tune + Optuna run of sleeping trials.

Why: the share of trial-slot time outside BIB steps has a floor that is Tune's own (scheduling, the
searcher's ask/tell, the hand-over to the next trial in a reused actor), whatever bib-ray does. This run
has the same search space, TPE sampler, concurrency, CPU per trial and trial count as the bib-ray search,
and trials that sleep as long as bib-ray's trials spent in BIB steps, but none of bib-ray's callback,
MLflow, Optuna storage or trial records; its steady share is what Tune costs by itself, and the goal of
``bench search`` is a ratio to it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bib_ray.trial_records import FinalRecord, TrialTiming, WorkerInfo


def _sleeping_trial(config: dict[str, Any], sleep_s: float) -> None:
    """Sleep in place of BIB steps, then report once, as a bib-ray trial without a scheduler does."""
    from ray import tune

    started, t0 = time.time(), time.perf_counter()
    time.sleep(sleep_s)
    slept = time.perf_counter() - t0
    score = sum(float(v) for v in config.values())  # something for TPE to rank
    tune.report({"score": score, "started_at": started, "ended_at": time.time(), "slept_s": slept,
                 "pid": os.getpid()})


def run_bare_tune(param_space: dict[str, Any], trials: int, slots: int, sleep_s: float, storage: Path,
                  seed: int = 0) -> list[FinalRecord]:
    """Run the bare search on the Ray this process is connected to; one timing record per trial."""
    from optuna.samplers import TPESampler
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    searcher = ConcurrencyLimiter(OptunaSearch(metric="score", mode="max", sampler=TPESampler(seed=seed)),
                                  max_concurrent=slots)
    trainable = tune.with_resources(tune.with_parameters(_sleeping_trial, sleep_s=sleep_s), {"cpu": 1})
    tuner = tune.Tuner(trainable, param_space=param_space,
                       tune_config=tune.TuneConfig(search_alg=searcher, num_samples=trials, reuse_actors=True),
                       run_config=tune.RunConfig(name="bare_tune", storage_path=str(storage), verbose=0,
                                                 callbacks=[JsonLoggerCallback()]))  # as bib-ray's: result.json only
    finals = []
    for result in tuner.fit():
        m = result.metrics or {}
        if "started_at" not in m:
            continue
        timing = TrialTiming(started_at=m["started_at"], ended_at=m["ended_at"], setup_seconds=0.0,
                             design_seconds=m["slept_s"], run_seconds=m["slept_s"],
                             trial_seconds=m["ended_at"] - m["started_at"])
        finals.append(FinalRecord(step=0, metrics={}, replicates=1,
                                  worker=WorkerInfo(pid=int(m["pid"]), node="", lm_loads=0), timing=timing))
    return finals
