"""What a search trial or ablation cell is given and what it reports, as typed records.

Why one module: a trial runs in a Ray worker and is logged by a callback in the driver; the search
picks its best trial and the benchmark times it. Each of them used to read and write the same magic
keys (``final``, ``history``, ``designs_table``, ``failed_reason``) in a plain dict. Now the worker
builds a :class:`StepReport` or a :class:`FinalRecord`, turns it into Tune's result dict with
``to_result`` (top-level metrics stay where Tune's schedulers and searchers look for them), and every
reader turns the dict back with :func:`record_of`. The key names live here and nowhere else.

The fixed part of a trial (base run, seeds, LM seeds, report cadence) travels once per experiment as a
:class:`TrialPlan` (``tune.with_parameters``); a trial's own config holds only what varies: the sampled
parameters of a search, or an ablation :class:`CellConfig`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Mapping

from bib_ray.spec import RunSpec

# Headline metrics, in the order reports and summaries show them (defined once).
HEADLINE_METRICS: tuple[str, ...] = ("normalized_max", "normalized_median", "normalized_mean",
                                     "offline_proxy_mean", "mean_edit_distance")
# Metrics whose spread over a trial's replicates (seeds x LM seeds) the final record carries as ``<name>_std``.
SPREAD_METRICS: tuple[str, ...] = ("normalized_max", "normalized_median", "offline_proxy_mean")

_KIND = "bib_ray_record"  # "step" or "final"
_METRIC_NAMES = "bib_ray_metrics"  # which top-level keys are the record's metrics
_ROWS = "bib_ray_rows"
_WORKER = "bib_ray_worker"
_TIMING = "bib_ray_timing"
_PROVENANCE = "bib_ray_provenance"
_DESIGNS = "bib_ray_designs"
_FAILED = "bib_ray_failed_reason"
_REPLICATES = "bib_ray_replicates"
STEP_KEY = "step"  # the global step: the schedulers' clock (ASHA's time_attr) and MLflow's step


@dataclass(frozen=True)
class WorkerInfo:
    """Which worker ran the trial, and how many times that worker process has loaded an LM."""

    pid: int
    node: str
    lm_loads: int
    device: str = "cpu"  # where the trial's LM and designs ran


@dataclass(frozen=True)
class StepRow:
    """One design step of one replicate: ``step`` counts on across the trial's replicates."""

    step: int
    seed: int
    lm_seed: int | None
    metrics: dict[str, float]


@dataclass(frozen=True)
class StepReport:
    """The steps a trial ran since its last report (reports are batched to spare the driver)."""

    rows: tuple[StepRow, ...]
    worker: WorkerInfo

    def to_result(self) -> dict[str, Any]:
        """Tune's result: the last step's metrics at the top level, every row under one key."""
        last = self.rows[-1]
        return {**last.metrics, STEP_KEY: last.step, _KIND: "step", _METRIC_NAMES: list(last.metrics),
                _ROWS: [asdict(row) for row in self.rows], _WORKER: asdict(self.worker)}

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> "StepReport":
        rows = tuple(StepRow(**row) for row in result[_ROWS])
        return cls(rows=rows, worker=WorkerInfo(**result[_WORKER]))


@dataclass(frozen=True)
class TrialTiming:
    """Where a trial's time went (seconds; ``started_at``/``ended_at`` are wall-clock stamps)."""

    started_at: float
    ended_at: float
    setup_seconds: float  # loading LMs and their workbenches
    design_seconds: float  # inside the engine's design steps
    run_seconds: float  # the BIB runs: engine set-up, steps, per-step metrics
    trial_seconds: float  # the whole trial function


@dataclass(frozen=True)
class FinalRecord:
    """A trial's end: metric means over its replicates (seeds x LM seeds), or why it failed."""

    step: int  # the trial's last step: final metrics are logged there
    metrics: dict[str, float]
    replicates: int
    worker: WorkerInfo
    timing: TrialTiming | None = None
    provenance: dict[str, str] = field(default_factory=dict)
    designs: list[dict[str, Any]] = field(default_factory=list)  # the last replicate's designs table
    failed_reason: str | None = None
    rows: tuple[StepRow, ...] = ()  # the trial's last steps, not sent in a step report

    @property
    def failed(self) -> bool:
        return self.failed_reason is not None

    def to_result(self) -> dict[str, Any]:
        """Tune's result: the metric means at the top level (what searchers and ``best_of`` read)."""
        return {**self.metrics, STEP_KEY: self.step, _KIND: "final", _METRIC_NAMES: list(self.metrics),
                _REPLICATES: self.replicates, _WORKER: asdict(self.worker),
                _TIMING: asdict(self.timing) if self.timing else None, _PROVENANCE: dict(self.provenance),
                _DESIGNS: list(self.designs), _FAILED: self.failed_reason, _ROWS: [asdict(row) for row in self.rows]}

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> "FinalRecord":
        timing = result.get(_TIMING)
        return cls(step=int(result[STEP_KEY]), metrics={k: result[k] for k in result[_METRIC_NAMES] if k in result},
                   replicates=int(result[_REPLICATES]), worker=WorkerInfo(**result[_WORKER]),
                   timing=TrialTiming(**timing) if timing else None, provenance=dict(result.get(_PROVENANCE) or {}),
                   designs=list(result.get(_DESIGNS) or []), failed_reason=result.get(_FAILED),
                   rows=tuple(StepRow(**row) for row in result.get(_ROWS) or ()))


def record_of(result: Mapping[str, Any] | None) -> StepReport | FinalRecord | None:
    """The record a Tune result holds (None for a result that is not one of ours, e.g. empty)."""
    kind = (result or {}).get(_KIND)
    if kind == "step":
        return StepReport.from_result(result)
    if kind == "final":
        return FinalRecord.from_result(result)
    return None


def final_of(result: Mapping[str, Any] | None) -> FinalRecord | None:
    """The final record of a result, None when the result is a step report (a trial stopped early)."""
    record = record_of(result)
    return record if isinstance(record, FinalRecord) else None


def is_final(result: Mapping[str, Any] | None) -> bool:
    """Whether a result is a trial's final record (it ran to the end), from the record's kind alone: so
    it also reads the flattened copy of a result that Tune hands to searchers."""
    return (result or {}).get(_KIND) == "final"


@dataclass(frozen=True)
class CellConfig:
    """An ablation cell as its trial receives it: its name, key, task label and run-setting updates."""

    CONFIG_KEY: ClassVar[str] = "cell"  # where a trial's config holds it (class constant, not a field)

    name: str
    key: str
    updates: dict[str, Any]
    task_label: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The plain form Tune's grid search carries (a trial config must be plain data)."""
        return asdict(self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "CellConfig | None":
        """The cell in a trial's config; None for a search trial."""
        cell = config.get(cls.CONFIG_KEY)
        return cls(**cell) if cell else None


@dataclass(frozen=True)
class TrialPlan:
    """What every trial of one search or ablation shares; a trial's config adds what varies."""

    base: RunSpec
    seeds: tuple[int, ...] | None = None  # design seeds; None: the spec's own engine.seed
    lm_seeds: tuple[int, ...] | None = None  # default-LM pre-training seeds; None: the spec's own
    report_every: int | None = 5  # None: at each replicate's end (and every few seconds), no step cadence
    # Every offline criterion at every report (a search steered by one needs it at each rung); else
    # only at each replicate's last step, where they are logged (they cost milliseconds a step).
    criteria_each_report: bool = False

    def spec_for(self, config: Mapping[str, Any]) -> RunSpec:
        """The trial's run: the base with the cell's updates or the sampled (dotted) parameters."""
        cell = CellConfig.from_config(config)
        updates = dict(cell.updates) if cell else {k: v for k, v in config.items() if k != CellConfig.CONFIG_KEY}
        return self.base.with_updates(updates) if updates else self.base

    def seeds_of(self, spec: RunSpec) -> list[int]:
        return list(self.seeds) if self.seeds else [spec.engine.seed]

    def lm_seeds_of(self, spec: RunSpec) -> list[int | None]:
        """One entry per LM the trial runs on: None for an explicit LM (hub id or path)."""
        if spec.lm:
            return [None]
        return list(self.lm_seeds) if self.lm_seeds else [spec.lm_pretrain.seed]
