"""An ablation's verdicts: one family per metric, Holm-adjusted, with the LM seeds each rests on.

Why: a report's reader acts on "learned is better than fixed", so that sentence must survive every
comparison the report makes and come out the same on another machine. Here each comparison
(task, variant - reference, metric) gets:

* its estimate over **LM-seed** values (design seeds averaged within each LM; with one LM, the design
  seeds, and the row says so);
* a **family**: the plan's ``primary_metric`` is the primary family (every variant x task comparison of
  that metric); every other metric shown is a secondary family of its own;
* within a family, **Holm-adjusted p-values** (t test over LM-seed values) and **Bonferroni t intervals**
  (simultaneous at 95%); with ``replication`` the primary family uses **Stein's two-stage** interval and
  test at the Bonferroni level instead;
* a ``verdict``: ``better`` or ``worse`` when the adjusted p is below alpha (better = higher, except for
  metrics that are minimised), else ``unresolved``, with the LM seeds an effect of the observed size
  would need (a power estimate from a noisy difference).

Across tasks, each variant's paired effect on the primary metric is pooled by DerSimonian-Laird random
effects (HKSJ interval), one family over the variants.

Everything is a pure function of the rows :func:`bib_ray.tracking.runs.collect_cells` returns.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np

from bib_ray.tracking.inference import (ALPHA, POWER, UnitEstimate, bonferroni_t_interval, holm_adjust,
                                        lm_seeds_for_power, random_effects, stein_interval, stein_total)
from bib_ray.tracking.output import csv_text
from bib_ray.tracking.runs import lm_seed_sort_key, seed_sort_key, variant_sort_key

DEFAULT_PRIMARY = "normalized_median"
POWER_CAP = 10_000  # the power search stops here: an effect this small is no effect to chase
# Metrics where lower is better (a drop is "better"); every other metric is maximised.
MINIMISED_METRICS = frozenset({"offline_nearest_distance", "forward_loss", "backward_loss"})
VERDICTS = ("better", "worse", "unresolved")


@dataclass(frozen=True)
class InferenceSettings:
    """What the verdicts depend on besides the rows (the plan's, recorded on the parent run)."""

    primary_metric: str = DEFAULT_PRIMARY
    secondary_metrics: tuple[str, ...] = ()
    alpha: float = ALPHA
    initial_lm_seeds: int | None = None  # set: the primary family is a Stein two-stage one
    target_half_width: float | None = None
    max_lm_seeds: int | None = None

    @property
    def two_stage(self) -> bool:
        return self.initial_lm_seeds is not None and self.target_half_width is not None

    def metrics(self) -> tuple[str, ...]:
        return (self.primary_metric,) + tuple(m for m in self.secondary_metrics if m != self.primary_metric)


@dataclass(frozen=True)
class Comparison:
    """One verdict: task, variant - reference, metric, and the adjusted inference behind it."""

    task: str
    variant: str
    reference: str
    metric: str
    family: str  # "primary" or "secondary"
    family_size: int
    unit: str  # "lm_seed" or "seed" (one LM: design seeds)
    lm_seeds: tuple  # the LM seeds the comparison rests on (run order)
    units: int  # how many values the estimate is over
    pairs: int
    estimate: float
    std: float
    low: float  # simultaneous (family-adjusted) interval
    high: float
    p_value: float  # unadjusted, from the test the family uses
    p_adjusted: float
    verdict: str
    method: str  # "bonferroni-t + holm" or "stein two-stage + holm"
    lm_seeds_to_resolve: int | None = None
    half_width: float = math.nan
    stage_one_lm_seeds: int | None = None
    lm_seeds_required: int | None = None  # Stein's N for the target, before the cap
    capped: bool | None = None  # max_lm_seeds stopped it

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["lm_seeds"] = ",".join(str(s) for s in self.lm_seeds)
        return row


@dataclass(frozen=True)
class PooledEffect:
    """A variant's primary-metric effect pooled over tasks (random effects)."""

    variant: str
    reference: str
    metric: str
    tasks: int
    estimate: float
    low: float  # HKSJ interval at the family-adjusted level
    high: float
    p_value: float
    p_adjusted: float
    tau2: float
    i2: float
    q: float
    verdict: str

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Conclusions:
    """Every comparison of a report and the pooled effects, with the settings they came from."""

    settings: InferenceSettings
    reference: str
    comparisons: list[Comparison] = field(default_factory=list)
    pooled: list[PooledEffect] = field(default_factory=list)

    def primary(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.family == "primary"]

    def find(self, task: str, variant: str, metric: str) -> Comparison | None:
        for c in self.comparisons:
            if (c.task, c.variant, c.metric) == (task, variant, metric):
                return c
        return None


# --- the values of one comparison ---------------------------------------------------------------------
@dataclass(frozen=True)
class _Values:
    unit: str
    keys: tuple  # LM seeds (or design seeds with one LM), run order
    values: tuple[float, ...]
    pairs: int


def _paired_values(mine: list[dict[str, Any]], ref: list[dict[str, Any]], metric: str) -> _Values:
    def by_replicate(rows: list[dict[str, Any]]) -> dict[tuple, float]:
        return {(r["lm_seed"], r["seed"]): float(r["metrics"][metric]) for r in rows if metric in r["metrics"]}

    a, b = by_replicate(mine), by_replicate(ref)
    keys = sorted(set(a) & set(b), key=lambda k: (lm_seed_sort_key(k[0]), seed_sort_key(k[1])))
    groups: dict[Any, list[float]] = {}
    for key in keys:
        groups.setdefault(key[0], []).append(a[key] - b[key])
    if len([k for k in groups if k is not None]) >= 2:
        lm_keys = tuple(groups)
        return _Values("lm_seed", lm_keys, tuple(float(np.mean(groups[k])) for k in lm_keys), len(keys))
    # One LM (explicit, or a single LM seed): the design seeds are the unit, and say nothing of another LM.
    return _Values("seed", tuple(k[1] for k in keys), tuple(a[k] - b[k] for k in keys), len(keys))


def _verdict(metric: str, estimate: float, p_adjusted: float, alpha: float) -> str:
    if math.isnan(p_adjusted) or p_adjusted >= alpha or estimate == 0 or math.isnan(estimate):
        return "unresolved"
    higher = estimate > 0
    return "better" if higher != (metric in MINIMISED_METRICS) else "worse"


def _group(rows: Iterable[dict[str, Any]], key: str) -> dict[Any, list[dict[str, Any]]]:
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    return groups


def comparison_values(rows: list[dict[str, Any]], reference: str, metric: str) -> dict[tuple[str, str], _Values]:
    """Per (task, variant label other than the reference): its paired values of ``metric``."""
    out: dict[tuple[str, str], _Values] = {}
    for task, task_rows in sorted(_group(rows, "task").items(), key=lambda kv: str(kv[0])):
        groups = _group(task_rows, "variant")
        if reference not in groups:
            continue
        for label in sorted(groups, key=variant_sort_key):
            if label == reference:
                continue
            values = _paired_values(groups[label], groups[reference], metric)
            if values.pairs:
                out[(str(task), label)] = values
    return out


def _family(rows: list[dict[str, Any]], reference: str, metric: str, family: str,
            settings: InferenceSettings) -> list[Comparison]:
    values = comparison_values(rows, reference, metric)
    m = max(1, sum(len(v.values) >= 2 for v in values.values()))
    alpha_each = settings.alpha / m
    stein = family == "primary" and settings.two_stage
    drafts = []
    for (task, label), v in values.items():
        est = UnitEstimate.of(v.values)
        extra: dict[str, Any] = {}
        n0 = int(settings.initial_lm_seeds or 0)
        first = [x for k, x in zip(v.keys, v.values) if isinstance(k, int) and k < n0]
        later = [x for k, x in zip(v.keys, v.values) if not (isinstance(k, int) and k < n0)]
        if stein and v.unit == "lm_seed" and len(first) >= 2:
            result = stein_interval(first + later, len(first), alpha_each)  # stage one's LM seeds first
            low, high, p = result.low, result.high, result.p_value
            required = stein_total(len(first), result.s0, float(settings.target_half_width), alpha_each) \
                if not math.isnan(result.s0) else len(first)
            cap = settings.max_lm_seeds
            extra = {"stage_one_lm_seeds": len(first), "lm_seeds_required": required,
                     "capped": bool(cap is not None and required > cap), "half_width": result.half_width}
            method = "stein two-stage + holm"
        else:
            low, high = bonferroni_t_interval(est, m, settings.alpha)
            p = est.t_p_value()
            method = "bonferroni-t + holm"
            extra = {"half_width": (high - low) / 2 if not math.isnan(low) else math.nan}
        drafts.append(dict(task=task, variant=label, reference=reference, metric=metric, family=family,
                           family_size=m, unit=v.unit, lm_seeds=v.keys, units=len(v.values), pairs=v.pairs,
                           estimate=est.mean, std=est.std, low=low, high=high, p_value=p, method=method, **extra))
    adjusted = holm_adjust([d["p_value"] for d in drafts])
    out = []
    for draft, p_adj in zip(drafts, adjusted):
        verdict = _verdict(metric, draft["estimate"], p_adj, settings.alpha)
        need = None
        if verdict == "unresolved":
            need = lm_seeds_for_power(draft["estimate"], draft["std"], alpha_each, POWER, cap=POWER_CAP)
        out.append(Comparison(**draft, p_adjusted=p_adj, verdict=verdict, lm_seeds_to_resolve=need))
    return out


def pooled_effects(comparisons: list[Comparison], settings: InferenceSettings) -> list[PooledEffect]:
    """Per variant on two or more tasks: the random-effects pooled primary-metric effect, one Holm family
    over the variants, HKSJ intervals at the Bonferroni level."""
    by_variant: dict[str, list[Comparison]] = {}
    for c in comparisons:
        if c.family == "primary" and c.units >= 2 and not math.isnan(c.std):
            by_variant.setdefault(c.variant, []).append(c)
    eligible = {v: cs for v, cs in by_variant.items() if len({c.task for c in cs}) >= 2}
    m = max(1, len(eligible))
    drafts = []
    for label in sorted(eligible, key=variant_sort_key):
        cs = eligible[label]
        fit = random_effects([c.estimate for c in cs], [c.std ** 2 / c.units for c in cs], settings.alpha / m)
        drafts.append((label, cs, fit))
    adjusted = holm_adjust([fit.p_value for _, _, fit in drafts])
    return [PooledEffect(variant=label, reference=cs[0].reference, metric=settings.primary_metric, tasks=fit.k,
                         estimate=fit.mu, low=fit.low, high=fit.high, p_value=fit.p_value, p_adjusted=p_adj,
                         tau2=fit.tau2, i2=fit.i2, q=fit.q,
                         verdict=_verdict(settings.primary_metric, fit.mu, p_adj, settings.alpha))
            for (label, cs, fit), p_adj in zip(drafts, adjusted)]


def conclude(rows: list[dict[str, Any]], reference: str, settings: InferenceSettings) -> Conclusions:
    """Every family's comparisons, then the pooled primary effects (several tasks only)."""
    comparisons: list[Comparison] = []
    for metric in settings.metrics():
        family = "primary" if metric == settings.primary_metric else "secondary"
        comparisons += _family(rows, reference, metric, family, settings)
    return Conclusions(settings, reference, comparisons, pooled_effects(comparisons, settings))


# --- replication: how many LM seeds each primary comparison needs ------------------------------------
def lm_seeds_needed(rows: list[dict[str, Any]], reference: str, settings: InferenceSettings) -> dict[tuple[str, str], int]:
    """Stein's total N per primary comparison (task, variant), capped at ``max_lm_seeds``, from stage one's
    spread (the first ``initial_lm_seeds`` LM seeds), at the Bonferroni level of the primary family."""
    if not settings.two_stage:
        return {}
    n0 = int(settings.initial_lm_seeds or 0)
    values = comparison_values(rows, reference, settings.primary_metric)
    m = max(1, len(values))
    out = {}
    for key, v in values.items():
        stage_one = v.values[:n0]
        s0 = float(np.std(stage_one, ddof=1)) if len(stage_one) >= 2 else math.nan
        need = stein_total(n0, s0, float(settings.target_half_width), settings.alpha / m)
        out[key] = min(need, settings.max_lm_seeds) if settings.max_lm_seeds else need
    return out


# --- text -----------------------------------------------------------------------------------------------
def _f(value: float, fmt: str = ".3f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _p(value: float) -> str:
    if math.isnan(value):
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


CONCLUSION_HEAD = ("task", "variant - reference", "metric", "family", "estimate", "adjusted interval",
                   "adjusted p", "LM seeds", "verdict", "LM seeds to resolve")


def conclusions_markdown(conclusions: Conclusions, machines: Iterable[str] = ()) -> str:
    """The verdicts table (header ``| task | variant - reference | metric | ...``), the pooled effects, and a
    note that says which adjustment was used, what the numbers mean and which machines made them."""
    settings = conclusions.settings
    two_stage = settings.two_stage
    head = list(CONCLUSION_HEAD) + (["half-width", "capped"] if two_stage else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * 4 + ["---", "---:"] +
                                                          (["---:", "---"] if two_stage else [])) + "|"]
    for c in conclusions.comparisons:
        seeds = f"{c.units}" if c.unit == "lm_seed" else f"1 LM ({c.units} seeds)"
        need = "–" if c.verdict != "unresolved" or not c.lm_seeds_to_resolve else \
            (f">{POWER_CAP}" if c.lm_seeds_to_resolve >= POWER_CAP else f"~{c.lm_seeds_to_resolve}")
        cells = [c.task, f"{c.variant} - {c.reference}", c.metric, c.family, _f(c.estimate, "+.3f"),
                 f"[{_f(c.low, '+.3f')}, {_f(c.high, '+.3f')}]", _p(c.p_adjusted), seeds, c.verdict, need]
        if two_stage:
            capped = "–" if c.capped is None else ("yes" if c.capped else "no")
            cells += [_f(c.half_width), capped]
        lines.append("| " + " | ".join(cells) + " |")
    sizes = sorted({(c.metric, c.family_size) for c in conclusions.comparisons})
    family_text = "; ".join(f"{metric}: m = {m}" for metric, m in sizes)
    note = (f"Verdicts at family-wise alpha = {settings.alpha:g}: one family per metric ({family_text}); the "
            f"primary metric is {settings.primary_metric}, the others are secondary. Adjusted p: Holm's step-down "
            "over the family, from a t test over LM-seed means of the paired differences (design seeds averaged "
            "within each LM). Adjusted interval: Bonferroni t interval, simultaneous over the family.")
    if two_stage:
        note += (f" Primary family: Stein's two-stage procedure (stage one: {settings.initial_lm_seeds} LM seeds; "
                 f"target half-width {settings.target_half_width:g}; at most {settings.max_lm_seeds} LM seeds): "
                 "interval mean over all LM seeds +/- t(1 - alpha/(2m), n0 - 1) s0 / sqrt(N), its test with n0 - 1 "
                 "df; capped: max_lm_seeds stopped it short of the target.")
    note += (f" better/worse: adjusted p < {settings.alpha:g} (better = higher"
             + (", lower for " + ", ".join(sorted(MINIMISED_METRICS & {c.metric for c in conclusions.comparisons}))
                if MINIMISED_METRICS & {c.metric for c in conclusions.comparisons} else "")
             + "). LM seeds to resolve: how many LM seeds an effect of the observed size would need for 80% power "
             "at the family's level (an estimate from a noisy difference). Digits differ across CPUs (kernel paths "
             "give other LM weights and other designs); verdicts must not.")
    made_on = sorted(set(machines))
    if made_on:
        note += " Made on: " + "; ".join(made_on) + "."
    text = "\n".join(lines) + "\n\n" + note + "\n"
    if conclusions.pooled:
        text += "\n" + pooled_markdown(conclusions.pooled) + "\n"
    return text


def pooled_markdown(pooled: list[PooledEffect]) -> str:
    """The pooled effects across tasks as Markdown."""
    lines = ["| variant - reference | metric | tasks | pooled estimate | adjusted interval | adjusted p | tau^2 | "
             "I^2 | verdict |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for e in pooled:
        lines.append(f"| {e.variant} - {e.reference} | {e.metric} | {e.tasks} | {_f(e.estimate, '+.3f')} | "
                     f"[{_f(e.low, '+.3f')}, {_f(e.high, '+.3f')}] | {_p(e.p_adjusted)} | {_f(e.tau2, '.4f')} | "
                     f"{_f(e.i2 * 100, '.0f')}% | {e.verdict} |")
    return ("\n".join(lines) + "\n\nPooled across tasks: DerSimonian-Laird random effects over the per-task "
            "paired effects (within-task variance s^2/k over LM seeds); interval: Hartung-Knapp-Sidik-Jonkman (t, "
            "K - 1 df) at alpha / m, m = the variants pooled; adjusted p: Holm over them. tau^2, I^2: heterogeneity "
            "between tasks.\n")


CONCLUSION_CSV = ("task", "variant", "reference", "metric", "family", "family_size", "unit", "lm_seeds", "units",
                  "pairs", "estimate", "std", "low", "high", "p_value", "p_adjusted", "verdict", "method",
                  "lm_seeds_to_resolve", "half_width", "stage_one_lm_seeds", "lm_seeds_required", "capped")
POOLED_CSV = ("variant", "reference", "metric", "tasks", "estimate", "low", "high", "p_value", "p_adjusted", "tau2",
              "i2", "q", "verdict")


def conclusions_csv(conclusions: Conclusions) -> str:
    """Every comparison at full precision."""
    return csv_text([c.as_row() for c in conclusions.comparisons], list(CONCLUSION_CSV))


def pooled_csv(conclusions: Conclusions) -> str:
    """The pooled effects at full precision."""
    return csv_text([p.as_row() for p in conclusions.pooled], list(POOLED_CSV))
