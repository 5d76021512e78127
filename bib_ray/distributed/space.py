"""Search spaces: YAML validated into typed objects, then into Ray Tune distributions.

A space names a base run (task, LM, engine defaults), the parameters to sample (dotted paths into the
run spec with a distribution each), what to optimise, and how to run the trials.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bib_ray.criteria import CRITERIA_BY_NAME, CRITERIA_NAMES
from bib_ray.errors import BibInputError
from bib_ray.spec import RunSpec, load_yaml, parse_run_spec, validate_mapping

ORACLE_METRICS = ("oracle_max", "oracle_median", "oracle_mean")
OFFLINE_METRICS = CRITERIA_NAMES  # offline-safe criteria (bib_ray.criteria): never call the oracle
METRICS = ORACLE_METRICS + OFFLINE_METRICS
RESULT_KEYS = {"oracle_max": "normalized_max", "oracle_median": "normalized_median",
               "oracle_mean": "normalized_mean", **{name: name for name in OFFLINE_METRICS}}
"""Search metric name -> the key of the per-step result that carries it."""


def check_lm_seeds(value: list[int] | None) -> list[int] | None:
    """LM seeds are distinct, non-negative, and at least one (shared by ablation plans and search spaces)."""
    if value is None:
        return value
    if not value:
        raise ValueError("must list at least one seed, e.g. [0, 1, 2]; omit it for the one default LM")
    if any(seed < 0 for seed in value):
        raise ValueError("seeds must be 0 or more")
    if len(set(value)) != len(value):
        raise ValueError(f"duplicate seeds in {value}; list each LM seed once")
    return value


def lm_seed_list(lm_seeds: list[int] | None, base: RunSpec) -> list[int | None]:
    """The LM replicates: the given seeds, else the base's one pre-training seed; [None] for an explicit LM."""
    if base.lm:
        if lm_seeds is not None:
            raise BibInputError("lm_seeds", f"cannot be combined with the explicit lm {base.lm!r} (one LM, no "
                                "pre-training seeds)", "remove lm_seeds, or set lm: null to use the default LM")
        return [None]
    return list(lm_seeds) if lm_seeds is not None else [base.lm_pretrain.seed]


class _Dist(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Interval(_Dist):
    """A continuous range [low, high] with low < high."""

    low: float
    high: float

    @model_validator(mode="after")
    def _check(self) -> "_Interval":
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class LogUniform(_Interval):
    """Log-uniform on [low, high], both > 0."""

    type: Literal["loguniform"]

    @model_validator(mode="after")
    def _positive(self) -> "LogUniform":
        if self.low <= 0 or self.high <= 0:
            raise ValueError("log-uniform bounds must be above zero; use type uniform for ranges touching 0")
        return self


class Uniform(_Interval):
    """Uniform on [low, high]."""

    type: Literal["uniform"]


class IntRange(_Dist):
    """Integers low..high (inclusive) in steps of ``step``."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "IntRange":
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class Categorical(_Dist):
    """One of ``values``."""

    type: Literal["categorical"]
    values: list[Any] = Field(min_length=1)


def samples_to_check(dist: "LogUniform | Uniform | IntRange | Categorical") -> list[Any]:
    """The values that stand for everything ``dist`` can give a trial: each categorical value; the
    bounds of a range, and a fractional point inside a continuous one (its sampled type)."""
    if isinstance(dist, Categorical):
        return list(dist.values)
    if isinstance(dist, IntRange):
        return [dist.low, dist.high]
    inside = dist.low + (dist.high - dist.low) * 0.371
    return [dist.low, dist.high, inside]


Distribution = Annotated[Union[LogUniform, Uniform, IntRange, Categorical], Field(discriminator="type")]


class Scheduler(BaseModel):
    """Early stopping: ``asha`` cuts trials whose per-step metric lags; ``none`` runs all to the end."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(5, ge=1, description="steps every trial runs before it can be cut")
    reduction_factor: float = Field(2.0, gt=1)


class Resources(BaseModel):
    """Per-trial resources; fractions share a device (gpu: 0.25 runs four trials per GPU)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class SearchSpace(BaseModel):
    """A hyperparameter search of BIB."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="MLflow experiment and Tune run name")
    base: RunSpec = Field(default_factory=RunSpec)
    params: dict[str, Distribution] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="design seeds per trial")
    lm_seeds: list[int] | None = Field(None, description="pre-training seeds of the default LM per trial (the "
                                                         "metric is the mean over LM seeds x seeds)")
    trials: int = Field(16, ge=1, le=100_000)
    concurrency: int = Field(2, ge=1, le=10_000)
    metric: str = "oracle_max"
    mode: Literal["max", "min"] = "max"
    scheduler: Scheduler = Field(default_factory=Scheduler)
    resources: Resources = Field(default_factory=Resources)
    sampler_seed: int = Field(0, ge=0)
    max_failures: int = Field(2, ge=0, description="retries of a trial whose worker dies")
    report_every: int = Field(5, ge=1, description="steps per report to Tune, for the scheduler's rungs (every step "
                              "still reaches MLflow); with scheduler none, trials report at each seed's end")

    @field_validator("base", mode="before")
    @classmethod
    def _base(cls, value: Any) -> Any:
        return parse_run_spec(value, "base") if not isinstance(value, RunSpec) else value

    @field_validator("lm_seeds")
    @classmethod
    def _lm_seeds(cls, value: list[int] | None) -> list[int] | None:
        return check_lm_seeds(value)

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        if value not in METRICS:
            raise ValueError(f"unknown metric {value!r}; choose one of {', '.join(METRICS)}")
        return value

    @model_validator(mode="after")
    def _mode_fits_criterion(self) -> "SearchSpace":
        criterion = CRITERIA_BY_NAME.get(self.metric)
        if criterion is not None and criterion.direction == "min" and self.mode == "max":
            raise ValueError(f"{self.metric} is to be minimised (designs that stray from the offline data); "
                             "set mode: min")
        return self

    @model_validator(mode="after")
    def _params_are_run_settings(self) -> "SearchSpace":
        """Every value a trial can be given is a valid run setting, checked here, before Ray starts: a
        bad one would otherwise fail inside a worker, once per retry, with the search half-run."""
        for key, dist in self.params.items():
            for sample in samples_to_check(dist):
                try:  # the run spec's types decide: a fraction for an integer setting is refused
                    self.base.with_updates({key: sample})
                except BibInputError as err:
                    raise ValueError(f"params.{key} value {sample!r} is not a valid run setting: {err}") from None
        return self

    @property
    def result_key(self) -> str:
        """The per-step result key Tune optimises."""
        return RESULT_KEYS[self.metric]

    @property
    def steered_by_full_criterion(self) -> bool:
        """The metric is an offline criterion computed only when asked (not the additive scorer's
        mean and max, which every step carries): trials must then compute it at every report."""
        return self.metric in OFFLINE_METRICS and self.result_key not in ("offline_proxy_mean", "offline_proxy_max")

    @property
    def uses_oracle(self) -> bool:
        """Benchmark mode: the metric reads the task's oracle."""
        return self.metric in ORACLE_METRICS

    def tune_space(self) -> dict[str, Any]:
        """Ray Tune distributions for the sampled params (keys are dotted run-spec paths)."""
        from ray import tune

        space: dict[str, Any] = {}
        for key, dist in self.params.items():
            if isinstance(dist, LogUniform):
                space[key] = tune.loguniform(dist.low, dist.high)
            elif isinstance(dist, Uniform):
                space[key] = tune.uniform(dist.low, dist.high)
            elif isinstance(dist, IntRange):
                space[key] = tune.qrandint(dist.low, dist.high, dist.step) if dist.step > 1 else \
                    tune.randint(dist.low, dist.high + 1)
            else:
                space[key] = tune.choice(list(dist.values))
        return space

    def contains(self, key: str, value: Any) -> bool:
        """Whether ``value`` lies inside the declared distribution of ``key``."""
        dist = self.params[key]
        if isinstance(dist, Categorical):
            return value in dist.values
        ok = dist.low - 1e-12 <= value <= dist.high + 1e-12
        if isinstance(dist, LogUniform):
            ok = ok and math.isfinite(math.log(value))
        if isinstance(dist, IntRange):
            ok = ok and float(value).is_integer() and (int(value) - dist.low) % dist.step == 0
        return ok


def parse_search_space(data: Any, source: str) -> SearchSpace:
    """Validate a mapping into a SearchSpace; errors are one line naming the key."""
    return validate_mapping(SearchSpace, data, source, "search_spaces/bib_default.yaml")


def load_search_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file."""
    return parse_search_space(load_yaml(path, "space"), str(path))
