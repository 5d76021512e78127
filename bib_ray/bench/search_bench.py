"""``bib-ray bench search``: how much of a search's wall time goes to BIB steps.

16 trials (default) on local Ray with the default LM and small steps, no early stopping, logged to a
throw-away MLflow SQLite store. Prints wall time, the summed time of BIB design steps, per-worker LM
loads, where each trial slot's time went (start-up, hand-over between trials, trial time outside BIB
steps, BIB steps, tail), ``overhead_share=<fraction>``: 1 - (summed design-step seconds) / (wall seconds x
concurrent trial slots), i.e. the share of the machine's trial capacity not spent in BIB steps, and last
``steady_overhead_share=<fraction>``: the same share counted from each slot's first trial start to its last
trial end (the per-trial overhead once Ray is up). Before it, ``bare_tune_overhead_share``: the steady share
of a bare Tune + Optuna run in the same command and Ray (:mod:`bib_ray.bench.bare_tune`: same space,
sampler, slots and trial count, trials that sleep as long as bib-ray's spent in BIB steps), and
``steady_to_bare_ratio``; the goal is a ratio to Tune itself, ``steady_overhead_share <= 1.5 x
bare_tune_overhead_share``. The wall time counts everything ``bib-ray search`` does: Ray start-up, MLflow logging, Tune.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bib_ray.bench.bare_tune import run_bare_tune
from bib_ray.distributed.search import run_search
from bib_ray.errors import BibInputError
from bib_ray.distributed.space import parse_search_space
from bib_ray.proxy.small_lm import ensure_default_lm
from bib_ray.spec import RunSpec
from bib_ray.trial_records import FinalRecord, TrialTiming, final_of
from bib_ray.workbench import build_task


def where_time_went(finals: list[FinalRecord], started_at: float, ended_at: float) -> dict[str, float]:
    """Each worker's timeline, averaged over workers: start-up before its first trial, gaps between
    its trials (Tune hand-over), time inside trials outside BIB steps, BIB steps, and the tail after
    its last trial (shut-down). Time.time() stamps from trials on one machine share the clock."""
    totals = {"startup": 0.0, "between_trials": 0.0, "in_trial_not_steps": 0.0, "bib_steps": 0.0, "tail": 0.0}
    by_worker = _by_worker(finals)
    for timings in by_worker.values():
        totals["startup"] += timings[0].started_at - started_at
        totals["between_trials"] += sum(b.started_at - a.ended_at for a, b in zip(timings, timings[1:]))
        totals["in_trial_not_steps"] += sum(t.ended_at - t.started_at - t.design_seconds for t in timings)
        totals["bib_steps"] += sum(t.design_seconds for t in timings)
        totals["tail"] += ended_at - timings[-1].ended_at
    return {k: v / max(1, len(by_worker)) for k, v in totals.items()}


def steady_overhead_share(finals: list[FinalRecord]) -> float:
    """The share of trial-slot time not spent in BIB steps, counting each slot (worker) from its first
    trial's start to its last trial's end: the overhead per trial, without Ray's start-up and shut-down."""
    span = steps = 0.0
    for timings in _by_worker(finals).values():
        span += timings[-1].ended_at - timings[0].started_at
        steps += sum(t.design_seconds for t in timings)
    return 1.0 - steps / span if span > 0 else float("nan")


def _by_worker(finals: list[FinalRecord]) -> dict[int, list[TrialTiming]]:
    by_worker: dict[int, list[TrialTiming]] = {}
    for record in finals:
        if record.timing is not None:
            by_worker.setdefault(record.worker.pid, []).append(record.timing)
    return {pid: sorted(timings, key=lambda t: t.started_at) for pid, timings in by_worker.items()}


def main(task: str = "tfbind8", variant: str = "learned", steps: int | None = None, trials: int = 16,
         address: str | None = None, gpu: float = 0.0) -> int:
    """Run the benchmark search and print its figures (``gpu``: the GPU share of each trial)."""
    steps = steps or 20
    base = RunSpec().with_updates({"task.name": task, "engine.steps": steps,
                                   "engine.variant": variant})
    import os

    slots = max(1, (os.cpu_count() or 1))
    gpus = 0.0
    if address:
        import ray

        ray.init(address=address, logging_level="ERROR")
        slots = max(1, int(ray.cluster_resources().get("CPU", slots)))
        gpus = float(ray.cluster_resources().get("GPU", 0))
    elif gpu > 0:
        import torch

        gpus = float(torch.cuda.device_count())
    if gpu > 0:  # trials share the GPUs: as many slots as GPU shares (and CPUs) allow
        if gpus == 0:
            raise BibInputError("--gpu", "asks a GPU share per trial but there is no GPU", "omit --gpu (CPU only)")
        slots = max(1, min(slots, int(gpus / gpu + 1e-9)))
    ensure_default_lm(build_task(base.task), base.lm_pretrain)  # pre-train outside the timing (cached)
    space = parse_search_space({
        "name": "bench_search", "base": base.model_dump(mode="json"),
        "params": {"engine.lr": {"type": "loguniform", "low": 0.01, "high": 1.0},
                   "engine.beta_scale": {"type": "loguniform", "low": 0.01, "high": 1e4},
                   "engine.gamma_lr": {"type": "loguniform", "low": 1e-3, "high": 1.0}},
        "trials": trials, "concurrency": slots, "scheduler": {"type": "none"},
        "resources": {"cpu": 1, "gpu": gpu}}, "bench")
    with tempfile.TemporaryDirectory() as tmp:
        t0, started_at = time.perf_counter(), time.time()
        outcome = run_search(space, f"sqlite:///{tmp}/mlruns.db", address=address,
                             storage=str(Path(tmp) / "runs"), best_output=Path(tmp) / "best.yaml")
        wall, ended_at = time.perf_counter() - t0, time.time()
        results = [r.metrics for r in outcome.job.results if final_of(r.metrics) is not None]
        finals = [final_of(m) for m in results]
        timed = [f.timing for f in finals if f.timing is not None]
        design = sum(t.design_seconds for t in timed)
        sleep_s = design / max(1, len(timed))  # the bare trials sleep as long as bib-ray's stepped
        bare = run_bare_tune(space.tune_space(), trials, slots, sleep_s, Path(tmp) / "bare")  # same Ray, after
    setup = sum(t.setup_seconds for t in timed)
    trial_total = sum(m.get("time_total_s", 0.0) for m in results)  # Tune's own clock of each trial
    inside = sum(t.trial_seconds for t in timed)
    runs = sum(t.run_seconds for t in timed)
    loads: dict[int, int] = {}
    for f in finals:
        loads[f.worker.pid] = max(loads.get(f.worker.pid, 0), f.worker.lm_loads)
    print(f"trials={len(finals)}/{trials} steps={steps} designs={base.engine.designs} slots={slots} "
          f"gpu_per_trial={gpu:g} trial_devices={sorted({f.worker.device for f in finals})}")
    print(f"wall_s={wall:.1f} design_step_s_summed={design:.1f} trial_setup_s_summed={setup:.1f} "
          f"trial_total_s_summed={trial_total:.1f} inside_trainable_s={inside:.1f} bib_runs_s={runs:.1f}")
    print(f"workers={len(loads)} lm_loads_per_worker={sorted(loads.values())}")
    parts = where_time_went(finals, started_at, ended_at)
    print("per trial slot, seconds: " + " ".join(f"{k}={v:.2f}" for k, v in parts.items()))
    print(f"best normalized_max={outcome.best_metrics.get('normalized_max', float('nan')):.4f}")
    print(f"overhead_share={1 - design / (wall * slots):.3f}")
    steady, bare_share = steady_overhead_share(finals), steady_overhead_share(bare)
    print(f"bare_tune_trials={len(bare)}/{trials} bare_tune_sleep_s={sleep_s:.3f}")
    print(f"bare_tune_overhead_share={bare_share:.3f}")
    print(f"steady_to_bare_ratio={steady / bare_share if bare_share > 0 else float('nan'):.2f} (goal <= 1.5)")
    print(f"steady_overhead_share={steady:.3f}")
    return 0
