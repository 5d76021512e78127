"""One BIB run from a RunSpec: workbench, engine, per-step metrics and the final result.

This is the seam every front end uses (CLI, Tune trainable, ablation cell): it knows tasks and
proxies, drives the plain-torch engine, and turns its steps into named metrics. It knows nothing of
Ray or MLflow; they receive the metrics through ``on_step``.
"""

from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from bib_ray.core.engine import BIBEngine, StepRecord
from bib_ray.criteria import OfflineCriteria, split_offline
from bib_ray.errors import BibInputError
from bib_ray.spec import RunSpec
from bib_ray.tasks import Task
from bib_ray.workbench import Workbench, get_workbench

OnStep = Callable[[dict[str, float]], None]


@dataclass
class RunResult:
    """Final metrics, the per-step trajectory and the designs of one run."""

    metrics: dict[str, Any]
    trajectory: list[dict[str, float]]
    start: list[str]
    designs: list[str]
    scores: list[float] | None  # raw oracle scores of the designs, None without an oracle
    predictions: list[float]  # forward ridge prediction, raw units
    spec: RunSpec
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The content of result.json."""
        return {**self.metrics, "config": self.spec.model_dump(mode="json"), "trajectory": self.trajectory,
                "seconds": self.seconds}


def _stat(values: np.ndarray) -> tuple[float, float, float]:
    return float(values.max()), float(np.median(values)), float(values.mean())


def step_metrics(task: Task, record: StepRecord, start: torch.Tensor, bench: Workbench,
                 criteria: OfflineCriteria | None = None, beta_scale: float = 1.0,
                 all_criteria: bool = True) -> dict[str, float]:
    """Named metrics of one step: oracle (when the task has one), proxy, distance, gamma, eta, losses,
    and the offline-safe criteria of ``criteria`` (bib_ray.criteria): every one with ``all_criteria``,
    else only the cheap additive ones (offline_proxy_mean/max)."""
    designs = record.designs.numpy()
    out: dict[str, float] = {"step": record.step + 1}
    if task.has_oracle:
        norm = task.normalize(task.oracle(designs))
        out["normalized_max"], out["normalized_median"], out["normalized_mean"] = _stat(norm)
    pred = record.prediction.numpy() * bench.y_std + bench.y_mean
    out["proxy_max"], out["proxy_median"], out["proxy_mean"] = _stat(pred)
    if criteria is not None and all_criteria:
        out.update(criteria.design_metrics(designs))
        out["proxy_heldout_spearman"] = criteria.proxy_ranking(bench.phi_l, beta_scale)
    elif criteria is not None:
        additive = criteria.additive.predict(designs)
        out["offline_proxy_max"], out["offline_proxy_mean"] = float(additive.max()), float(additive.mean())
    elif bench.offline_scorer is not None:
        offline = bench.offline_scorer.score(designs)
        out["offline_proxy_max"], _, out["offline_proxy_mean"] = _stat(offline)
    out["mean_edit_distance"] = float((designs != start.numpy()).sum(1).mean())
    out["gamma"] = float(record.gamma.mean())
    out["eta"] = float(record.eta.mean())
    out["forward_loss"] = float(record.forward_loss.mean())
    out["backward_loss"] = float(record.backward_loss.mean())
    out["unique_designs"] = float(len({row.tobytes() for row in designs}))
    return out


def build_engine(spec: RunSpec, bench: Workbench) -> tuple[BIBEngine, torch.Tensor]:
    """The engine for a spec on a loaded workbench, and its start sequences (the best offline ones)."""
    cfg = spec.engine
    task = bench.task
    start = torch.tensor(np.asarray(task.offline_x)[task.top_offline(cfg.designs)], dtype=torch.long)
    fit = bench.offline_fit(cfg.beta_scale)
    aux = bench.auxiliary(cfg.aux_heads, cfg.aux_hidden, cfg.aux_epochs, cfg.seed)
    engine = BIBEngine(bench.proxy.embed, fit, aux, cfg, start, len(task.alphabet), bench.proxy.device)
    return engine, start


def provenance(spec: RunSpec, bench: Workbench) -> dict[str, Any]:
    """What a reader needs to know which LM and which code produced a result: the LM's weights
    fingerprint (a hash of the loaded tensors), its pre-training seed (None for an LM given by id or
    path), the task's alphabet (inferred from user data unless given: the letters designs are made
    of), the versions of torch and transformers that ran it, and the CPU and the kernel path torch
    dispatched (``torch.backends.cpu.get_cpu_capability()``): digits differ across kernel paths, so a table
    says which one made it."""
    import transformers

    return {"lm_fingerprint": bench.proxy.fingerprint(), "lm_seed": None if spec.lm else spec.lm_pretrain.seed,
            "alphabet": bench.task.alphabet, "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_model": cpu_model()}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else the platform's processor string)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def validate_spec(spec: RunSpec) -> Task:
    """Checks that need the task, done before any LM is loaded or trained: returns the task."""
    from bib_ray.proxy.antiberty import ANTIBERTY, antiberty_tokenizer, is_antiberty
    from bib_ray.proxy.lm_proxy import check_model_source, hub_load_options, resolve_device
    from bib_ray.proxy.vocab_guard import check_vocabulary
    from bib_ray.workbench import build_task

    if not spec.lm and spec.lm_pretrain.steps == 0:
        raise BibInputError("lm_pretrain.steps", "0 MLM steps would leave the default LM random (and cache it)",
                            "give at least 100 steps, or leave it out for the default budget")
    task = build_task(spec.task)
    task.top_offline(spec.engine.designs)  # M must not exceed the offline set
    split_offline(len(task.offline_y), spec.criteria)  # both parts of the criteria's split keep enough points
    resolve_device(spec.device)
    if is_antiberty(spec.lm):  # the package is there and its amino acids fit the task, before 100 MB load
        check_vocabulary(antiberty_tokenizer(), task.alphabet, ANTIBERTY)
    elif spec.lm:
        hub_load_options(check_model_source(spec.lm))  # a hub id without network fails here, in one line
    return task


def run_bib(spec: RunSpec, on_step: OnStep | None = None, progress: bool = False,
            bench: Workbench | None = None, criteria_at: Callable[[int], bool] | None = None,
            pretrain_log_every: int | None = None) -> RunResult:
    """Run BIB as ``spec`` says; call ``on_step`` with each step's metrics; return the result.

    ``progress`` shows a bar over the design steps; a default LM pre-trained on the way prints a line
    every ``pretrain_log_every`` MLM steps (None: 250 with ``progress``, else none).

    The offline criteria are computed at the last step and at every step ``criteria_at(step)`` (1-based)
    accepts; None: at every step. (The pairwise models and the nearest-offline distance cost a few
    milliseconds per step: a Tune trial asks for them only at the steps it reports.)"""
    t0 = time.perf_counter()
    if bench is None:
        validate_spec(spec)
    if pretrain_log_every is None:
        pretrain_log_every = 250 if progress else 0
    bench = bench or get_workbench(spec, log_every=pretrain_log_every)
    task = bench.task
    torch.manual_seed(spec.engine.seed)
    engine, start = build_engine(spec, bench)
    criteria = bench.offline_criteria(spec.criteria)  # fit once per workbench
    steps = spec.engine.steps_for(task.default_steps)
    t1 = time.perf_counter()
    trajectory: list[dict[str, float]] = []
    records = engine.run(steps)
    if progress:
        from tqdm import tqdm

        records = tqdm(records, total=steps, desc=f"BIB {spec.engine.variant} on {task.name}", unit="step")
    last: StepRecord | None = None
    engine_seconds = 0.0
    tick = time.perf_counter()
    for record in records:
        engine_seconds += time.perf_counter() - tick
        full = criteria_at is None or record.step + 1 == steps or criteria_at(record.step + 1)
        metrics = step_metrics(task, record, start, bench, criteria, spec.engine.beta_scale, full)
        trajectory.append(metrics)
        last = record
        if on_step is not None:
            on_step(metrics)
        tick = time.perf_counter()
    t2 = time.perf_counter()
    designs = last.designs.numpy() if last is not None else start.numpy()
    final = dict(trajectory[-1]) if trajectory else {}
    final.pop("step", None)
    offline_norm = None
    scores = None
    if task.has_oracle:
        scores = task.oracle(designs).tolist()
        offline_norm = float(task.normalize(np.asarray([np.max(task.offline_y)]))[0])
    metrics: dict[str, Any] = {
        "task": task.name, "variant": spec.engine.variant, "adaptive_eta": spec.engine.adaptive_eta,
        "seed": spec.engine.seed, "steps": steps, "designs": int(designs.shape[0]),
        "has_oracle": task.has_oracle, "best_offline_normalized": offline_norm,
        "best_offline_raw": float(np.max(task.offline_y)), "lm": bench.proxy.name, **provenance(spec, bench),
        **final,
    }
    if not task.has_oracle:
        metrics["note"] = "this task has no oracle: scores are the proxy's (forward ridge) predictions"
    pred = (last.prediction.numpy() * bench.y_std + bench.y_mean).tolist() if last is not None else []
    seconds = {"setup": t1 - t0, "design": t2 - t1, "engine": engine_seconds,
               "design_steps_per_second": (steps * designs.shape[0]) / max(engine_seconds, 1e-9)}
    return RunResult(metrics=metrics, trajectory=trajectory, start=task.decode(start.numpy()),
                     designs=task.decode(designs), scores=scores, predictions=pred, spec=spec,
                     seconds=seconds)



def logged_metric_names(has_oracle: bool) -> frozenset[str]:
    """Every metric :func:`step_metrics` can log for a task with or without an oracle (criteria included).

    Why: a plan's ``primary_metric`` is checked against this before any cell starts, so a typo or an oracle
    metric on a task without an oracle is a one-line error, not an empty verdicts table after an hour.
    """
    from bib_ray.criteria import CRITERIA_NAMES

    names = {"proxy_max", "proxy_median", "proxy_mean", "offline_proxy_max", "offline_proxy_mean",
             "mean_edit_distance", "gamma", "eta", "forward_loss", "backward_loss", "unique_designs", *CRITERIA_NAMES}
    if has_oracle:
        names |= {"normalized_max", "normalized_median", "normalized_mean"}
    return frozenset(names)
