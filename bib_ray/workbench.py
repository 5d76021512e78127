"""Everything a BIB run loads before it designs: task, LM proxy, offline embeddings and fits.

Loading an LM and embedding the offline set cost far more than a short design run, so a process
keeps them: a workbench is built once per (task, LM, device) and reused by every run in the same
process (every Tune trial a Ray worker runs). ``LM_LOADS`` counts real loads, so the Ray layer can
prove each worker loaded its LM once. Offline embeddings are also cached on disk.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bib_ray.cache_store import ensure_entry, lm_label
from bib_ray.core.auxiliary import fit_auxiliary
from bib_ray.core.ridge import OfflineFit
from bib_ray.criteria import CriteriaConfig, OfflineCriteria
from bib_ray.evaluation import AdditiveOfflineScorer
from bib_ray.proxy.lm_proxy import LMProxy, resolve_device
from bib_ray.proxy.small_lm import SmallLMConfig, cache_root, default_lm_path, ensure_default_lm
from bib_ray.spec import RunSpec, TaskSpec
from bib_ray.tasks import Task, make_task

LM_LOADS = 0
_LOCK = threading.Lock()
_BENCHES: dict[tuple, "Workbench"] = {}


@dataclass
class Workbench:
    """A task with its LM proxy and z-scored offline data, embedded once."""

    task: Task
    proxy: LMProxy
    phi_l: torch.Tensor  # (n, d) float32 on cpu
    y_z: torch.Tensor  # (n,) float64 z-scored offline labels
    y_mean: float
    y_std: float
    offline_scorer: AdditiveOfflineScorer | None = None
    cache_key: str = ""  # LM and task fingerprints: names this workbench's disk caches
    _fits: dict = field(default_factory=dict)
    _aux: dict = field(default_factory=dict)
    _criteria: dict = field(default_factory=dict)

    def offline_fit(self, beta_scale: float) -> OfflineFit:
        """The forward ridge and backward statistics for one ridge scale (memoised)."""
        if beta_scale not in self._fits:
            self._fits[beta_scale] = OfflineFit.fit(self.phi_l, self.y_z, beta_scale)
        return self._fits[beta_scale]

    def offline_criteria(self, config: CriteriaConfig) -> OfflineCriteria:
        """The offline-safe criteria's models for one criteria config (memoised: fit once, seconds)."""
        if config not in self._criteria:
            self._criteria[config] = OfflineCriteria.fit(np.asarray(self.task.offline_x), self.y_z.numpy(),
                                                         len(self.task.alphabet), config)
        return self._criteria[config]

    def auxiliary(self, heads: int, hidden: int, epochs: int, seed: int) -> torch.nn.Module:
        """The auxiliary ensemble f_a for one recipe and seed (memoised, and cached on disk: training
        it costs seconds, and every trial of every search on this LM and seed can reuse it)."""
        key = (heads, hidden, epochs, seed)
        if key not in self._aux:
            path = cache_root() / "auxiliary" / f"{self.cache_key}-{heads}-{hidden}-{epochs}-{seed}.pt"
            self._aux[key] = ensure_entry(
                path, "auxiliary", lambda tmp: torch.save(fit_auxiliary(self.phi_l, self.y_z, heads, hidden, epochs,
                                                                        seed), tmp),
                lambda p: torch.load(p, weights_only=False), task=self.task.name, lm=lm_label(self.proxy.name),
                extra={"heads": heads, "hidden": hidden, "epochs": epochs, "seed": seed})
        return self._aux[key]


def _embedding_cache_file(proxy: LMProxy, task: Task) -> Path:
    return cache_root() / "embeddings" / f"{_cache_key(proxy, task)}.pt"


def _cache_key(proxy: LMProxy, task: Task) -> str:
    return f"{proxy.fingerprint()}-{task.fingerprint()}"


def embed_offline(proxy: LMProxy, task: Task, use_disk: bool = True) -> torch.Tensor:
    """phi of every offline sequence, from the (verified) disk cache when it is there."""
    def embed() -> torch.Tensor:
        return proxy.embed_sequences(torch.tensor(np.asarray(task.offline_x), dtype=torch.long)).float()

    if not use_disk:
        return embed()
    return ensure_entry(_embedding_cache_file(proxy, task), "embeddings", lambda tmp: torch.save(embed(), tmp),
                        torch.load, task=task.name, lm=lm_label(proxy.name))


def resolve_lm_source(spec: RunSpec, task: Task, log_every: int = 0) -> str:
    """The LM to load: the given id/path, else the default small LM (pre-trained on first use)."""
    if spec.lm:
        return spec.lm
    return str(ensure_default_lm(task, spec.lm_pretrain, log_every=log_every))


def prepare_default_lms(specs: list[RunSpec], workers: int | None = None) -> None:
    """Pre-train (or find cached) the default LMs these runs need, here, before any trial starts.

    A search or ablation calls this in its driver: inside a trial the LM would be trained with the
    trial's single CPU while every other worker waits for it. Each LM pre-trains single-threaded (its
    weights do not depend on the core count), so several missing LMs (LM seeds, a panel of tasks)
    pre-train side by side, one process per core: the same weights, in a fraction of the wall time.
    LMs already in the cache are only verified, here, without starting any process.
    """
    needed: dict[tuple[str, str], tuple[RunSpec, Task, SmallLMConfig]] = {}
    for spec in specs:
        if spec.lm:
            continue
        task = build_task(spec.task)
        config = spec.lm_pretrain.resolved(task.length)
        needed.setdefault((spec.task.key(), config.key()), (spec, task, config))
    missing = [(spec, config) for spec, task, config in needed.values()
               if not default_lm_path(task.name, task.fingerprint(), config).exists()]
    workers = min(len(missing), workers or os.cpu_count() or 1)
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for future in [pool.submit(_ensure_default_lm_of, spec, config) for spec, config in missing]:
                future.result()  # the first failure is raised here, as in the serial loop
    for _, task, config in needed.values():  # the rest (and a check of what the pool wrote)
        ensure_default_lm(task, config, log_every=_pretrain_log_every(config))


def _pretrain_log_every(config: SmallLMConfig) -> int:
    return max(1, (config.steps or 10) // 4)


def _ensure_default_lm_of(spec: RunSpec, config: SmallLMConfig) -> Path:
    """One LM in a pool process (specs pickle small; the task is rebuilt there)."""
    return ensure_default_lm(build_task(spec.task), config, log_every=_pretrain_log_every(config))


def build_task(spec: TaskSpec) -> Task:
    """The task object of a spec."""
    return make_task(spec.name, **spec.options)


def get_workbench(spec: RunSpec, log_every: int = 0) -> Workbench:
    """The process's workbench for this run's task, LM and device; loads it on first use."""
    global LM_LOADS
    device = resolve_device(spec.device)
    pretrain: SmallLMConfig | None = None if spec.lm else spec.lm_pretrain
    key = (spec.task.key(), spec.lm, pretrain.key() if pretrain else None, str(device), spec.precision)
    with _LOCK:
        if key in _BENCHES:
            return _BENCHES[key]
        task = build_task(spec.task)
        source = resolve_lm_source(spec, task, log_every)
        proxy = LMProxy.load(source, task.alphabet, device)
        LM_LOADS += 1
        if spec.precision == "bf16":
            # The offline set is embedded by the same bf16 LM, so a design and an offline sequence with
            # the same letters get the same phi; the fingerprint is the bf16 weights', so its caches are its own.
            proxy = proxy.astype(torch.bfloat16)
        phi = embed_offline(proxy, task)
        y = np.asarray(task.offline_y, dtype=np.float64)
        mean, std = float(y.mean()), float(y.std())
        y_z = (y - mean) / std
        scorer = AdditiveOfflineScorer(np.asarray(task.offline_x), y_z, len(task.alphabet))
        bench = Workbench(task=task, proxy=proxy, phi_l=phi, y_z=torch.from_numpy(y_z), y_mean=mean, y_std=std,
                          offline_scorer=scorer, cache_key=_cache_key(proxy, task))
        _BENCHES[key] = bench
        return bench


def clear_workbenches() -> None:
    """Forget every loaded workbench (tests)."""
    global LM_LOADS
    with _LOCK:
        _BENCHES.clear()
        LM_LOADS = 0
