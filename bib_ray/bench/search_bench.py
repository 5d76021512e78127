"""``bib-ray bench search``: how much of a search's wall time goes to BIB steps.

16 trials (default) on local Ray with the default LM and small steps, no early stopping, logged to a
throw-away MLflow SQLite store. Prints wall time, the summed time of BIB design steps, per-worker LM
loads, where each trial slot's time went (start-up, hand-over between trials, trial time outside BIB
steps, BIB steps, tail), and last ``overhead_share=<fraction>``: 1 - (summed design-step seconds) / (wall seconds x
concurrent trial slots), i.e. the share of the machine's trial capacity not spent in BIB steps.
The wall time counts everything ``bib-ray search`` does: Ray start-up, MLflow logging, Tune.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bib_ray.distributed.search import run_search
from bib_ray.distributed.space import parse_search_space
from bib_ray.proxy.small_lm import ensure_default_lm
from bib_ray.spec import RunSpec
from bib_ray.workbench import build_task


def where_time_went(finals: list[dict], started_at: float, ended_at: float) -> dict[str, float]:
    """Each worker's timeline, averaged over workers: start-up before its first trial, gaps between
    its trials (Tune hand-over), time inside trials outside BIB steps, BIB steps, and the tail after
    its last trial (shut-down). Time.time() stamps from trials on one machine share the clock."""
    by_worker: dict[int, list[dict]] = {}
    for m in finals:
        by_worker.setdefault(m["worker_pid"], []).append(m)
    totals = {"startup": 0.0, "between_trials": 0.0, "in_trial_not_steps": 0.0, "bib_steps": 0.0, "tail": 0.0}
    for trials in by_worker.values():
        trials.sort(key=lambda m: m["trial_started_at"])
        totals["startup"] += trials[0]["trial_started_at"] - started_at
        totals["between_trials"] += sum(b["trial_started_at"] - a["trial_ended_at"] for a, b in zip(trials, trials[1:]))
        totals["in_trial_not_steps"] += sum(m["trial_ended_at"] - m["trial_started_at"] - m["design_seconds"]
                                            for m in trials)
        totals["bib_steps"] += sum(m["design_seconds"] for m in trials)
        totals["tail"] += ended_at - trials[-1]["trial_ended_at"]
    return {k: v / max(1, len(by_worker)) for k, v in totals.items()}


def main(args: argparse.Namespace) -> int:
    """Run the benchmark search and print its figures."""
    steps = args.steps or 20
    base = RunSpec().with_updates({"task.name": args.task, "engine.steps": steps,
                                   "engine.variant": args.variant})
    ensure_default_lm(build_task(base.task), base.lm_pretrain)  # pre-train outside the timing (cached)
    import os

    slots = max(1, (os.cpu_count() or 1))
    if args.address:
        import ray

        ray.init(address=args.address, logging_level="ERROR")
        slots = max(1, int(ray.cluster_resources().get("CPU", slots)))
    space = parse_search_space({
        "name": "bench_search", "base": base.model_dump(mode="json"),
        "params": {"engine.lr": {"type": "loguniform", "low": 0.01, "high": 1.0},
                   "engine.beta_scale": {"type": "loguniform", "low": 0.01, "high": 1e4},
                   "engine.gamma_lr": {"type": "loguniform", "low": 1e-3, "high": 1.0}},
        "trials": args.trials, "concurrency": slots, "scheduler": {"type": "none"},
        "resources": {"cpu": 1, "gpu": 0}}, "bench")
    with tempfile.TemporaryDirectory() as tmp:
        t0, started_at = time.perf_counter(), time.time()
        outcome = run_search(space, f"sqlite:///{tmp}/mlruns.db", address=args.address,
                             storage=str(Path(tmp) / "runs"), best_output=Path(tmp) / "best.yaml")
        wall, ended_at = time.perf_counter() - t0, time.time()
    finals = [r.metrics for r in outcome.job.results if r.metrics and r.metrics.get("final")]
    design = sum(m["design_seconds"] for m in finals)
    setup = sum(m["setup_seconds"] for m in finals)
    trial_total = sum(m.get("time_total_s", 0.0) for m in finals)
    inside = sum(m.get("trial_seconds", 0.0) for m in finals)
    runs = sum(m.get("run_seconds", 0.0) for m in finals)
    loads: dict[int, int] = {}
    for m in finals:
        loads[m["worker_pid"]] = max(loads.get(m["worker_pid"], 0), int(m["lm_loads_in_worker"]))
    print(f"trials={len(finals)}/{args.trials} steps={steps} designs={base.engine.designs} slots={slots}")
    print(f"wall_s={wall:.1f} design_step_s_summed={design:.1f} trial_setup_s_summed={setup:.1f} "
          f"trial_total_s_summed={trial_total:.1f} inside_trainable_s={inside:.1f} bib_runs_s={runs:.1f}")
    print(f"workers={len(loads)} lm_loads_per_worker={sorted(loads.values())}")
    parts = where_time_went(finals, started_at, ended_at)
    print("per trial slot, seconds: " + " ".join(f"{k}={v:.2f}" for k, v in parts.items()))
    print(f"best normalized_max={outcome.best_metrics.get('normalized_max', float('nan')):.4f}")
    print(f"overhead_share={1 - design / (wall * slots):.3f}")
    return 0
