"""One trial's work, free of Ray: run a spec on each LM seed x design seed, report steps in batches,
and end with a :class:`~bib_ray.trial_records.FinalRecord` of means over the replicates.

Why apart from the Tune trainable: this is the part that does BIB; Tune only gives it a spec and a
way to send records (``emit``). It can be called and tested without Ray, and the Tune wrapper
(:mod:`bib_ray.distributed.trainable`) stays a few lines about resources and devices.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np

from bib_ray.spec import RunSpec
from bib_ray.trial_records import SPREAD_METRICS, FinalRecord, StepReport, StepRow, TrialTiming, WorkerInfo

Emit = Callable[[StepReport | FinalRecord], None]
REPORT_SECONDS = 10.0  # without a step cadence: a report at least this often (live curves in MLflow)


def run_replicates(spec: RunSpec, seeds: list[int], lm_seeds: list[int | None], report_every: int | None,
                   emit: Emit, node: str = "", on_iteration: Callable[[int], None] | None = None,
                   criteria_each_report: bool = False,
                   clock: Callable[[], float] = time.monotonic) -> FinalRecord:
    """Run ``spec`` once per (LM seed, design seed) and emit what it did, then the :class:`FinalRecord`
    (also returned), which carries the steps not yet reported.

    Reports: every ``report_every`` steps (an early-stopping scheduler's rungs need them) and at each
    replicate's end; with ``report_every=None``, at each replicate's end and at least every
    ``REPORT_SECONDS`` of ``clock``, counted from the first step (set-up is not reporting time; a test
    passes a clock of its own, so the cadence does not hang on the machine's load). Why so few: each
    report is a round trip to the driver that the trial waits on (tens of milliseconds, more on a busy
    machine), which is most of a short trial's overhead. The
    offline criteria are computed at each replicate's last step, and at every step-cadence report with
    ``criteria_each_report``.

    ``on_iteration(global_step)`` is called before each step is recorded (fault injection in tests).
    A run whose losses turn non-finite ends the trial with a failed final record.
    """
    from bib_ray import outputs, workbench
    from bib_ray.core.engine import NonFiniteLossError
    from bib_ray.runner import run_bib

    started, started_at = time.perf_counter(), time.time()
    report_every = max(1, report_every) if report_every else None
    reported_at: float | None = None  # the clock at the first step, then at each report
    setup_seconds = design_seconds = run_seconds = 0.0
    iteration = 0
    pending: list[StepRow] = []
    finals: list[dict[str, float]] = []
    fingerprints: list[str] = []
    last = None

    def worker() -> WorkerInfo:
        return WorkerInfo(pid=os.getpid(), node=node, lm_loads=workbench.LM_LOADS, device=spec.device)

    for lm_seed in lm_seeds:
        lm_spec = spec if lm_seed is None else spec.with_updates({"lm_pretrain.seed": lm_seed})
        tick = time.perf_counter()
        bench = workbench.get_workbench(lm_spec)
        setup_seconds += time.perf_counter() - tick
        for seed in seeds:
            seeded = lm_spec.with_updates({"engine.seed": seed})
            steps = seeded.engine.steps_for(bench.task.default_steps)
            offset = iteration  # the global step before this replicate
            last_replicate = lm_seed == lm_seeds[-1] and seed == seeds[-1]

            def on_step(metrics: dict[str, float], seed: int = seed, lm_seed: int | None = lm_seed,
                        steps: int = steps, last_replicate: bool = last_replicate) -> None:
                nonlocal iteration, reported_at
                iteration += 1
                if on_iteration is not None:
                    on_iteration(iteration)
                row = {k: v for k, v in metrics.items() if k != "step"}
                pending.append(StepRow(step=iteration, seed=seed, lm_seed=lm_seed, metrics=row))
                if reported_at is None:
                    reported_at = clock()
                end = metrics["step"] == steps
                if end and last_replicate:
                    return  # these rows travel with the final record: one round trip less
                due = iteration % report_every == 0 if report_every else \
                    clock() - reported_at >= REPORT_SECONDS
                if due or end:
                    emit(StepReport(rows=tuple(pending), worker=worker()))
                    pending.clear()
                    reported_at = clock()

            def criteria_at(step: int, offset: int = offset) -> bool:
                return criteria_each_report and bool(report_every) and (offset + step) % report_every == 0

            try:
                last = run_bib(seeded, on_step=on_step, bench=bench, criteria_at=criteria_at)
            except NonFiniteLossError as err:
                failed = FinalRecord(step=iteration, metrics={}, replicates=len(finals), worker=worker(),
                                     failed_reason=str(err), rows=tuple(pending))
                emit(failed)
                return failed
            design_seconds += last.seconds["engine"]
            run_seconds += last.seconds["setup"] + last.seconds["design"]
            finals.append({k: v for k, v in last.metrics.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("seed", "lm_seed")})
        fingerprints.append(bench.proxy.fingerprint())
    means = {key: float(np.mean([f[key] for f in finals])) for key in finals[0] if all(key in f for f in finals)}
    means.update({f"{key}_std": float(np.std([f[key] for f in finals])) for key in SPREAD_METRICS if key in means})
    provenance = {"lm_fingerprint": ",".join(fingerprints),
                  **{key: str(last.metrics[key]) for key in ("alphabet", "torch_version", "transformers_version",
                                                             "cpu_capability", "cpu_model")}}
    timing = TrialTiming(started_at=started_at, ended_at=time.time(), setup_seconds=setup_seconds,
                         design_seconds=design_seconds, run_seconds=run_seconds,
                         trial_seconds=time.perf_counter() - started)
    final = FinalRecord(step=iteration, metrics=means, replicates=len(finals), worker=worker(), timing=timing,
                        provenance=provenance, designs=outputs.designs_rows(last), rows=tuple(pending))
    emit(final)
    return final
