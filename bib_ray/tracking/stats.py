"""Statistics of replicated BIB runs: intervals that respect the LM, paired differences, ranks.

A replicate of a cell is one (LM seed, design seed) pair. Replicates on the same LM are not
independent draws of what a variant does: they share one pre-trained LM, and on TFBind8 the LM's
pre-training seed moves the median score by up to 0.29 where design seeds move it by about 0.02. So
an interval over all replicates as if independent would be far too narrow for the question a reader
asks ("will this hold with another LM?").

The interval used everywhere here is a **t interval over LM-seed means**: average the design seeds of
each LM, then a Student t interval (k - 1 degrees of freedom) over the k LM means. It treats the LM as
the unit that varies, with design seeds nested inside it, and it stays exact for small k, where a
bootstrap over three LMs has only ten distinct resamples. With a single LM (an explicit ``lm``, or one
LM seed) the unit falls back to the design seed, and :attr:`Interval.unit` says so.

Paired differences (variant minus reference, on the same task, LM seed and design seed) get the same
interval over LM-seed means of the differences, and an exact two-sided **sign-flip permutation test**
over all replicate pairs: under "the two variants are exchangeable on each replicate" every pair's
difference is as likely to have either sign. The test answers "do they differ on these LMs"; the
interval answers "by how much on a new LM", and a difference is marked only when its interval excludes 0.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np

LEVEL = 0.95
EXACT_PERMUTATION_MAX = 20  # 2**20 sign patterns; above this a seeded Monte Carlo sample is used
MONTE_CARLO_DRAWS = 200_000


@dataclass(frozen=True)
class Interval:
    """A 95% interval and what it was computed over."""

    center: float
    low: float
    high: float
    unit: str  # "lm_seed" (t over LM-seed means) or "seed" (t over replicates, one LM)
    units: int  # how many LM seeds (or replicates) the interval is over

    @property
    def excludes_zero(self) -> bool:
        """Whether 0 lies outside the interval (False when the interval is undefined)."""
        return bool(self.low > 0 or self.high < 0)


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """Mean and Student t interval of ``values`` (NaN bounds for fewer than two values)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def unit_means(values: Sequence[float], lm_seeds: Sequence[Hashable]) -> dict[Hashable, float]:
    """Mean of the values of each LM seed, in first-seen order."""
    groups: dict[Hashable, list[float]] = {}
    for value, lm_seed in zip(values, lm_seeds):
        groups.setdefault(lm_seed, []).append(float(value))
    return {lm_seed: float(np.mean(group)) for lm_seed, group in groups.items()}


def replicate_interval(values: Sequence[float], lm_seeds: Sequence[Hashable], level: float = LEVEL) -> Interval:
    """The 95% interval of a cell's replicates: t over LM-seed means, or over replicates with one LM."""
    means = unit_means(values, lm_seeds)
    if len(means) >= 2:
        center, low, high = t_interval(list(means.values()), level)
        return Interval(center, low, high, "lm_seed", len(means))
    center, low, high = t_interval(values, level)
    return Interval(center, low, high, "seed", len(values))


def sign_flip_p_value(differences: Sequence[float], seed: int = 0) -> float:
    """Two-sided p-value of the paired sign-flip permutation test on the mean difference.

    Exact (all 2**n sign patterns) up to n = 20 pairs; a seeded Monte Carlo estimate above that. The
    observed pattern counts among those at least as extreme, so p is never 0. NaN without pairs.
    """
    d = np.asarray(differences, dtype=float)
    n = d.size
    if n == 0:
        return math.nan
    observed = abs(d.mean())
    tolerance = 1e-12 * max(1.0, float(np.abs(d).max()))
    if n <= EXACT_PERMUTATION_MAX:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        means = np.abs(signs @ d) / n
        return float(np.mean(means >= observed - tolerance))
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(MONTE_CARLO_DRAWS, n))
    extreme = int(np.sum(np.abs(signs @ d) / n >= observed - tolerance))
    return (extreme + 1) / (MONTE_CARLO_DRAWS + 1)


@dataclass(frozen=True)
class PairedDifference:
    """Variant minus reference over matched replicates."""

    pairs: int
    mean: float
    interval: Interval
    p_value: float


def paired_difference(variant: dict[tuple, float], reference: dict[tuple, float]) -> PairedDifference:
    """Differences on the replicates both have; keys are (lm_seed, seed) and the LM seed is the unit."""
    keys = sorted(set(variant) & set(reference), key=repr)
    diffs = [variant[k] - reference[k] for k in keys]
    interval = replicate_interval(diffs, [k[0] for k in keys])
    mean = float(np.mean(diffs)) if diffs else math.nan
    return PairedDifference(len(diffs), mean, interval, sign_flip_p_value(diffs))


def mean_ranks(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per variant, its mean rank across tasks (1 = best score on a task; ties share the mean rank).

    ``scores`` maps task -> variant -> score; a variant is ranked on the tasks where it has a score.
    """
    from scipy.stats import rankdata

    ranks: dict[str, list[float]] = {}
    for by_variant in scores.values():
        names = [v for v, s in by_variant.items() if not math.isnan(s)]
        if not names:
            continue
        task_ranks = rankdata([-by_variant[v] for v in names], method="average")
        for name, rank in zip(names, task_ranks):
            ranks.setdefault(name, []).append(float(rank))
    return {name: float(np.mean(r)) for name, r in ranks.items()}
