"""The Tune trainable: one trial (or ablation cell) = BIB runs of one RunSpec over its seeds, as a thin
wrapper of :func:`bib_ray.trial_run.run_replicates` (which knows nothing of Ray).

The LM is loaded once per worker process (:func:`bib_ray.workbench.get_workbench` keeps it) and Tune
reuses actors between trials, so a worker that runs ten trials loads its LM once; every report
carries its worker's LM load count to prove it. A trial on a GPU (Ray sets CUDA_VISIBLE_DEVICES from its
resources, fractions included) places the LM and designs on cuda; otherwise on the CPU.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from bib_ray.trial_records import TrialPlan

CRASH_STEP_ENV = "BIB_RAY_TEST_CRASH_AT_STEP"
CRASH_DIR_ENV = "BIB_RAY_TEST_CRASH_DIR"
STEP_DELAY_ENV = "BIB_RAY_TEST_STEP_DELAY_S"


def _device_for_trial(spec):
    try:
        import ray

        gpus = ray.get_gpu_ids()
    except Exception:  # noqa: BLE001 - outside Ray: keep the spec's device
        gpus = []
    if gpus:
        return spec.with_updates({"device": "cuda"})
    if spec.device.startswith("cuda"):
        return spec.with_updates({"device": "cpu"})  # the trial got no GPU: run where it is
    return spec


def _node_name() -> str:
    """Host and Ray node id: several Ray nodes can share a host, and the id tells them apart."""
    try:
        import ray

        return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:12]}"
    except Exception:  # noqa: BLE001 - outside Ray
        return socket.gethostname()


def _match_threads_to_cpus() -> None:
    """torch's intra-op threads = the CPUs Ray gave this trial (a worker that imported torch before it
    got its resources would otherwise use every core and oversubscribe the node)."""
    import torch

    try:
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    except Exception:  # noqa: BLE001 - outside Ray
        return
    torch.set_num_threads(max(1, int(cpus)))


def _maybe_crash(step: int, trial_id: str) -> None:
    """Test-only fault injection: the first attempt of each trial kills its worker at a given step.

    Set BIB_RAY_TEST_CRASH_AT_STEP=N and BIB_RAY_TEST_CRASH_DIR=DIR (a marker per trial records that
    the crash happened, so the retry runs through). Never set these outside tests.
    """
    at = os.environ.get(CRASH_STEP_ENV)
    folder = os.environ.get(CRASH_DIR_ENV)
    if not at or not folder or step != int(at):
        return
    marker = Path(folder) / f"crashed-{trial_id}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(os.getpid()))
    os._exit(17)


def _test_hooks(step: int, trial_id: str) -> None:
    """Test-only: BIB_RAY_TEST_STEP_DELAY_S=S sleeps S seconds after each design step, so a fault test's
    tiny cells last long enough to be interrupted mid-run on a fast, quiet machine; then the crash hook."""
    delay = os.environ.get(STEP_DELAY_ENV)
    if delay:
        time.sleep(float(delay))
    _maybe_crash(step, trial_id)


def bib_trainable(config: dict[str, Any], plan: TrialPlan) -> None:
    """Tune function trainable (bound to the experiment's :class:`TrialPlan` by ``tune.with_parameters``):
    build the trial's run once, place it, and let :func:`bib_ray.trial_run.run_replicates` report."""
    from ray import tune

    from bib_ray.trial_run import run_replicates

    _match_threads_to_cpus()
    spec = _device_for_trial(plan.spec_for(config))
    trial_id = tune.get_context().get_trial_id() or "local"
    run_replicates(spec, plan.seeds_of(spec), plan.lm_seeds_of(spec), plan.report_every,
                   emit=lambda record: tune.report(record.to_result()), node=_node_name(),
                   on_iteration=lambda step: _test_hooks(step, trial_id),
                   criteria_each_report=plan.criteria_each_report)
