"""Ablation plans: YAML validated into typed objects, expanded into cells.

A plan crosses tasks x variants x Adaptive-eta (on/off) x LM seeds x design seeds, optionally adds
the ``grad`` baseline, and lets cells override any run setting by matching on task, variant, eta or a
seed. Each cell is one replicate, a dotted-path update of the base run spec; its key (a hash of the
plan name and the cell's full run spec) is how a re-run recognises a cell that already finished.

Why LM seeds are an axis: the default LM is pre-trained by bib-ray, and its pre-training seed moves
the scores more than the choice of variant does. A comparison that holds the LM fixed reports a spread
over design seeds only and a ranking the next LM can overturn; each LM seed is its own pre-trained LM.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bib_ray.core.config import VARIANTS
from bib_ray.distributed.space import Resources, check_lm_seeds, lm_seed_list
from bib_ray.errors import BibInputError
from bib_ray.spec import RunSpec, TaskSpec, load_run_spec, load_yaml, parse_run_spec, validate_mapping
from bib_ray.trial_records import CellConfig


MATCH_KEYS = ("task", "variant", "adaptive_eta", "seed", "lm_seed")


class Override(BaseModel):
    """Run settings for the cells that match (every given field must match)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: dict[str, Any] = Field(default_factory=dict,
                                  description="keys: task, variant, adaptive_eta, seed, lm_seed")
    set: dict[str, Any] = Field(min_length=1, description="dotted run settings, e.g. engine.gamma_lr: 0.05")

    @field_validator("match")
    @classmethod
    def _known_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = set(value) - set(MATCH_KEYS)
        if unknown:
            raise ValueError(f"unknown match key(s) {sorted(unknown)}; use {', '.join(MATCH_KEYS)}")
        return value


class Replication(BaseModel):
    """Adaptive LM replication by Stein's two-stage procedure.

    Stage one runs every cell on ``initial_lm_seeds`` LMs (seeds 0..n0-1). From stage one's spread of each
    primary comparison, the driver computes the total N of LM seeds that gives a family-adjusted interval
    no wider than ``target_half_width`` (capped at ``max_lm_seeds``), pre-trains the extra LMs once each and
    runs the extra cells in the same job. Why Stein's: its interval keeps its coverage although N was chosen
    from the data (degrees of freedom and spread are stage one's); "add LMs until significant" does not.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_half_width: float = Field(gt=0, description="the adjusted interval's half-width to reach, in metric units")
    initial_lm_seeds: int = Field(3, ge=2, description="stage one's LM seeds (at least 2: Stein needs a spread)")
    max_lm_seeds: int = Field(12, ge=2, description="never more LM seeds than this per comparison")

    @model_validator(mode="after")
    def _bounds(self) -> "Replication":
        if self.max_lm_seeds < self.initial_lm_seeds:
            raise ValueError(f"max_lm_seeds ({self.max_lm_seeds}) is below initial_lm_seeds "
                             f"({self.initial_lm_seeds}); set max_lm_seeds >= initial_lm_seeds")
        return self


class PanelSample(BaseModel):
    """A seeded draw of ``n`` values of a task option that has a list of names (tfbind8's ``tf``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    option: str = Field(description="the option to draw, e.g. tf")
    n: int = Field(ge=1, description="how many values")
    seed: int = Field(0, ge=0, description="seed of the draw")
    contains: str = Field("", description="keep only names containing this text, e.g. _REF_R1")


def expand_panel(item: dict[str, Any]) -> list[dict[str, Any]]:
    """One task entry of a plan as task specs: ``{name, options, sample}`` plus options written at the top
    level; every list-valued option gives one task per value (crossed), ``sample`` draws values."""
    import numpy as np

    from bib_ray.tasks import option_choices

    item = dict(item)
    name = item.pop("name", None)
    if not isinstance(name, str):
        raise ValueError("each task needs a name, e.g. {name: tfbind8, tf: [SIX6_REF_R1, ...]}")
    options = dict(item.pop("options", None) or {})
    sample = item.pop("sample", None)
    options.update(item)  # the short form: options at the top level
    lists = {k: v for k, v in options.items() if isinstance(v, list)}
    if sample is not None:
        draw = PanelSample.model_validate(sample)
        if draw.option in options:
            raise ValueError(f"{draw.option} is both listed and sampled; keep one")
        names = [v for v in option_choices(name, draw.option) if draw.contains in v]
        if draw.n > len(names):
            raise ValueError(f"sample.n = {draw.n} but only {len(names)} {draw.option} values match "
                             f"{draw.contains!r}; ask for at most {len(names)}")
        rng = np.random.default_rng(draw.seed)
        lists[draw.option] = sorted(names[i] for i in rng.choice(len(names), size=draw.n, replace=False))
    fixed = {k: v for k, v in options.items() if k not in lists}
    keys = list(lists)
    return [{"name": name, "options": {**fixed, **dict(zip(keys, combo))}}
            for combo in itertools.product(*(lists[k] for k in keys))]


class AblationPlan(BaseModel):
    """An ablation study of BIB."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="MLflow experiment and parent run name")
    base: RunSpec = Field(default_factory=RunSpec)
    base_from: str | None = Field(None, description="a run file (e.g. a search's best.yaml) to use as base")
    tasks: list[TaskSpec] = Field(default_factory=list, description="default: the base task; an entry with "
                                  "list-valued options or a sample is a panel of tasks")
    variants: list[str] = Field(default_factory=lambda: ["forward", "backward", "fixed", "learned"], min_length=1)
    adaptive_eta: list[bool] = Field(default_factory=lambda: [False, True], min_length=1)
    baseline: bool = Field(True, description="add the grad baseline (with each adaptive_eta value)")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1, description="design seeds")
    lm_seeds: list[int] | None = Field(None, description="pre-training seeds of the default LM, one LM each "
                                                         "(default: the base's lm_pretrain.seed, i.e. [0])")
    reference: str | None = Field(None, description="variant label the paired differences compare against "
                                                    "(default: fixed, else the first variant)")
    overrides: list[Override] = Field(default_factory=list)
    primary_metric: str = Field("normalized_median", min_length=1,
                                description="the metric verdicts are stated for (its own family); others are secondary")
    replication: Replication | None = Field(None, description="adaptive LM seeds by Stein's two-stage procedure")
    concurrency: int = Field(2, ge=1)
    resources: Resources = Field(default_factory=Resources)
    max_failures: int = Field(2, ge=0)

    @field_validator("base", mode="before")
    @classmethod
    def _base(cls, value: Any) -> Any:
        return parse_run_spec(value, "base") if not isinstance(value, RunSpec) else value

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks(cls, value: Any) -> Any:
        """A task name, a task mapping, or a panel (list-valued options, ``sample``); a single mapping
        stands for a one-entry list."""
        items = [value] if isinstance(value, dict) else value
        if not isinstance(items, list):
            return value
        out: list[Any] = []
        for item in items:
            if isinstance(item, str):
                out.append({"name": item})
            elif isinstance(item, dict):
                try:
                    out += expand_panel(item)
                except BibInputError as err:
                    raise ValueError(str(err)) from None
            else:
                out.append(item)
        return out

    @field_validator("variants")
    @classmethod
    def _variants(cls, value: list[str]) -> list[str]:
        for variant in value:
            if variant not in VARIANTS:
                raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        return value

    @field_validator("variants", "adaptive_eta", "seeds")
    @classmethod
    def _no_repeats(cls, value: list) -> list:
        """A value listed twice would run the same cells twice and report them as one (n = 1)."""
        repeated = sorted({str(v) for v in value if value.count(v) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} listed more than once; list each once "
                             "(replicates come from seeds and lm_seeds)")
        return value

    @field_validator("lm_seeds")
    @classmethod
    def _lm_seeds(cls, value: list[int] | None) -> list[int] | None:
        return check_lm_seeds(value)

    @property
    def variant_labels(self) -> list[str]:
        """Every variant label the plan produces (``learned``, ``learned+eta``, ``grad``, ...)."""
        variants = list(self.variants) + (["grad"] if self.baseline and "grad" not in self.variants else [])
        return [f"{v}{'+eta' if eta else ''}" for v in variants for eta in self.adaptive_eta]

    @property
    def reference_label(self) -> str:
        """The variant label paired differences are taken against (checked: one of the plan's labels)."""
        labels = self.variant_labels
        if self.reference is None:
            return "fixed" if "fixed" in labels else labels[0]
        if self.reference not in labels:
            raise BibInputError("reference", f"{self.reference!r} is not among the plan's variants "
                                f"({', '.join(labels)})", "name one of them, or omit it for fixed")
        return self.reference

    @model_validator(mode="after")
    def _replication_owns_the_lm_seeds(self) -> "AblationPlan":
        if self.replication is not None and self.lm_seeds is not None:
            raise ValueError("replication chooses the LM seeds (0, 1, ... up to max_lm_seeds); remove lm_seeds")
        return self

    def stage_one_lm_seeds(self) -> list[int] | None:
        """The LM seeds every cell runs on first: ``lm_seeds``, or stage one of ``replication``."""
        if self.replication is not None:
            return list(range(self.replication.initial_lm_seeds))
        return self.lm_seeds

    @model_validator(mode="after")
    def _overrides_are_run_settings(self) -> "AblationPlan":
        for i, override in enumerate(self.overrides):
            try:
                self.base.with_updates(override.set)
            except BibInputError as err:
                raise ValueError(f"overrides[{i}].set: {err}") from None
        return self


@dataclass(frozen=True)
class Cell:
    """One run of the plan."""

    name: str
    key: str
    updates: dict[str, Any]
    spec: RunSpec
    task_label: str = ""
    variant_label: str = ""
    lm_seed: int | None = None

    def config(self) -> CellConfig:
        """What the cell's trial receives (its run is the plan's base with these updates)."""
        return CellConfig(name=self.name, key=self.key, updates=self.updates, task_label=self.task_label)


def task_labels(tasks: list[TaskSpec]) -> list[str]:
    """A short, distinct label per task: its name, plus the values of the options in which it differs from
    the plan's other tasks of that name (``tfbind8:FOXC1_REF_R1``), so a panel's tables never merge."""
    labels = []
    for task in tasks:
        same = [t for t in tasks if t.name == task.name]
        keys = sorted({k for t in same for k in t.options if any(o.options.get(k) != t.options.get(k) for o in same)})
        labels.append(task.name + (":" + ",".join(str(task.options.get(k)) for k in keys) if keys else ""))
    return labels


def _matches(match: dict[str, Any], values: dict[str, Any]) -> bool:
    return all(values[k] == v for k, v in match.items())


def expand_cells(plan: AblationPlan, base: RunSpec, lm_seeds: list[int] | None = None) -> list[Cell]:
    """Every cell (replicate) of the plan, in a stable order: task, variant, eta, LM seed, design seed.

    ``lm_seeds``: these LM seeds instead of the plan's stage one (a replicated plan's second stage)."""
    tasks = plan.tasks or [base.task]
    variants = list(plan.variants) + (["grad"] if plan.baseline and "grad" not in plan.variants else [])
    if plan.replication is not None and base.lm:
        raise BibInputError("replication", f"needs the default LM's pre-training seeds, but the plan names the "
                            f"explicit lm {base.lm!r}", "remove replication, or set lm: null")
    lm_seeds = lm_seed_list(lm_seeds if lm_seeds is not None else plan.stage_one_lm_seeds(), base)
    plan.reference_label  # noqa: B018 - a bad reference fails here, before Ray or MLflow start
    cells = []
    labels = dict(zip((t.key() for t in tasks), task_labels(list(tasks))))
    for task, variant, eta, lm_seed, seed in itertools.product(tasks, variants, plan.adaptive_eta, lm_seeds,
                                                               plan.seeds):
        updates: dict[str, Any] = {"task.name": task.name, "task.options": dict(task.options),
                                   "engine.variant": variant, "engine.adaptive_eta": eta, "engine.seed": seed}
        if lm_seed is not None:
            updates["lm_pretrain.seed"] = lm_seed
        values = {"task": task.name, "variant": variant, "adaptive_eta": eta, "seed": seed, "lm_seed": lm_seed}
        for override in plan.overrides:
            if _matches(override.match, values):
                updates.update(override.set)
        spec = base.with_updates(updates)
        digest = hashlib.sha256(json.dumps([plan.name, spec.model_dump(mode="json")],
                                           sort_keys=True).encode()).hexdigest()[:16]
        lm_part = "" if lm_seed is None else f"/lm{lm_seed}"
        label = f"{labels[task.key()]}/{variant}{'+eta' if eta else ''}{lm_part}/seed{seed}"
        cells.append(Cell(name=label, key=digest, updates=updates, spec=spec, task_label=labels[task.key()],
                          variant_label=f"{variant}{'+eta' if eta else ''}", lm_seed=lm_seed))
    return cells


def parse_plan(data: Any, source: str) -> AblationPlan:
    """Validate a mapping into an AblationPlan; errors are one line naming the key."""
    return validate_mapping(AblationPlan, data, source, "ablations/bib_variants.yaml")


def load_plan(path: str | Path) -> tuple[AblationPlan, RunSpec]:
    """Read a plan file; returns the plan and its effective base (``base_from`` applied)."""
    plan = parse_plan(load_yaml(path, "plan"), str(path))
    base = plan.base
    if plan.base_from:
        source = Path(plan.base_from)
        if not source.is_absolute():
            source = Path(path).parent / source
        base = load_run_spec(source)
    return plan, base
