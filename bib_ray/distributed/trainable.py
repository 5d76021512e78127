"""The Tune trainable: one trial (or ablation cell) = BIB runs of one RunSpec over its seeds.

The LM is loaded once per worker process (:func:`bib_ray.workbench.get_workbench` keeps it) and Tune
reuses actors between trials, so a worker that runs ten trials loads its LM once; every report
carries ``lm_loads_in_worker`` to prove it. A trial on a GPU (Ray sets CUDA_VISIBLE_DEVICES from its
resources, fractions included) places the LM and designs on cuda; otherwise on the CPU.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

RESERVED = ("base", "seeds", "lm_seeds", "cell", "report_every")
CRASH_STEP_ENV = "BIB_RAY_TEST_CRASH_AT_STEP"
CRASH_DIR_ENV = "BIB_RAY_TEST_CRASH_DIR"


def trial_spec(config: dict[str, Any]):
    """The RunSpec a trial config describes: the base with the sampled (dotted) params applied."""
    from bib_ray.spec import RunSpec

    base = RunSpec.model_validate(config["base"])
    updates = {key: value for key, value in config.items() if key not in RESERVED}
    updates.update((config.get("cell") or {}).get("updates", {}))
    return base.with_updates(updates) if updates else base


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


def bib_trainable(config: dict[str, Any]) -> None:
    """Tune function trainable: report every step, then a final record with means over LM seeds x design
    seeds, the last run's designs, and the provenance of the LMs that ran."""
    from ray import tune

    from bib_ray import workbench
    from bib_ray.core.engine import NonFiniteLossError
    from bib_ray.outputs import designs_rows
    from bib_ray.runner import run_bib

    _match_threads_to_cpus()
    spec = _device_for_trial(trial_spec(config))
    seeds = list(config.get("seeds") or [spec.engine.seed])
    lm_seeds = [None] if spec.lm else list(config.get("lm_seeds") or [spec.lm_pretrain.seed])
    context = tune.get_context()
    trial_id = context.get_trial_id() or "local"
    node = _node_name()
    started = time.perf_counter()
    started_at = time.time()
    setup_seconds = 0.0
    finals: list[dict[str, float]] = []
    fingerprints: list[str] = []
    compute_seconds = 0.0
    iteration = 0
    history: list[dict[str, float]] = []
    run_seconds = 0.0
    report_every = max(1, int(config.get("report_every", 5)))
    last = None
    for lm_seed in lm_seeds:
        lm_spec = spec if lm_seed is None else spec.with_updates({"lm_pretrain.seed": lm_seed})
        tick = time.perf_counter()
        bench = workbench.get_workbench(lm_spec)
        setup_seconds += time.perf_counter() - tick
        for seed in seeds:
            seeded = lm_spec.with_updates({"engine.seed": seed})
            steps = seeded.engine.steps_for(bench.task.default_steps)

            def on_step(metrics: dict[str, float], seed: int = seed, steps: int = steps) -> None:
                nonlocal iteration
                iteration += 1
                _maybe_crash(iteration, trial_id)
                history.append({**metrics, "step": iteration})
                if iteration % report_every == 0 or metrics["step"] == steps:
                    # Every report waits for the driver, so steps travel in small batches; "step" (the
                    # global step) is the schedulers' clock and "history" keeps every step for MLflow.
                    tune.report({**metrics, "step": iteration, "history": list(history), "seed": seed,
                                 "lm_loads_in_worker": workbench.LM_LOADS, "worker_pid": os.getpid(),
                                 "node": node})
                    history.clear()

            offset = iteration  # steps of earlier runs: reports fall where (offset + step) % report_every == 0

            def criteria_at(step: int, offset: int = offset) -> bool:
                return (offset + step) % report_every == 0  # every report carries every criterion (a metric)

            try:
                last = run_bib(seeded, on_step=on_step, bench=bench, criteria_at=criteria_at)
            except NonFiniteLossError as err:
                tune.report({"final": True, "failed_reason": str(err), "lm_loads_in_worker": workbench.LM_LOADS,
                             "worker_pid": os.getpid(), "node": node, "seed": seed})
                return
            compute_seconds += last.seconds["engine"]
            run_seconds += last.seconds["setup"] + last.seconds["design"]
            finals.append({k: v for k, v in last.metrics.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool)})
        fingerprints.append(bench.proxy.fingerprint())
    summary = {key: float(np.mean([f[key] for f in finals])) for key in finals[0] if key not in ("seed", "lm_seed")
               if all(key in f for f in finals)}
    summary.update({f"{key}_std": float(np.std([f[key] for f in finals])) for key in
                    ("normalized_max", "normalized_median", "offline_proxy_mean") if key in summary})
    rows = designs_rows(last) if last is not None else []
    provenance = {"lm_fingerprint": ",".join(fingerprints), "torch_version": last.metrics["torch_version"],
                  "transformers_version": last.metrics["transformers_version"]}
    tune.report({**summary, "final": True, "step": iteration + 1, "seeds": len(seeds) * len(lm_seeds),
                 "lm_loads_in_worker": workbench.LM_LOADS, "worker_pid": os.getpid(), "node": node,
                 "design_seconds": compute_seconds, "run_seconds": run_seconds,
                 "trial_seconds": time.perf_counter() - started, "setup_seconds": setup_seconds,
                 "designs_table": rows, "provenance": provenance,
                 "trial_started_at": started_at, "trial_ended_at": time.time()})
