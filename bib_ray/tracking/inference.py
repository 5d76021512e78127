"""Inference for verdicts that replicate: multiplicity control, two-stage sample sizes, power, pooling.

Why a module of its own: a report states a verdict ("learned is better than fixed") only when it
survives every comparison the report makes, and a verdict has to come out the same on another machine.
Three LMs and nine unadjusted 95% intervals give at least one false star in about a third of reports
(1 - 0.95**9); these functions are the formulas that prevent that, in plain numpy/scipy, free of MLflow,
so the tests check each one against an independent implementation (statsmodels, scipy).

The unit everywhere is the **LM seed** (see :mod:`bib_ray.tracking.stats`): a comparison has one value
per LM seed, the mean over that LM's design seeds of the paired differences.

* :func:`holm_adjust`: Holm's step-down adjusted p-values for one family (the family-wise error rate of
  Bonferroni, never less powerful).
* :func:`bonferroni_t_interval`: the simultaneous interval printed beside it (Bonferroni-adjusted t over
  LM-seed means); it can only be wider than one consistent with Holm.
* :func:`stein_total` / :func:`stein_interval`: Stein's two-stage procedure. The number of LM seeds is
  chosen from the stage-one spread, and the interval keeps its coverage because its degrees of freedom
  and spread are stage one's ("add seeds until significant" has no such guarantee).
* :func:`lm_seeds_for_power`: how many LM seeds an effect of the observed size would need (an estimate
  from a noisy difference, and said to be one).
* :func:`random_effects`: DerSimonian-Laird pooling of per-task effects, with the Hartung-Knapp-Sidik-
  Jonkman interval (t with K - 1 df), tau^2, I^2 and Q.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

ALPHA = 0.05
POWER = 0.8


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order; NaN p-values stay NaN and do not count in m."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    if m == 0:
        return out.tolist()
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return out.tolist()


def t_critical(alpha: float, df: int) -> float:
    """The two-sided critical value t(1 - alpha / 2, df)."""
    from scipy import stats

    return float(stats.t.ppf(1 - alpha / 2, df))


@dataclass(frozen=True)
class UnitEstimate:
    """A comparison's estimate over LM-seed values: mean, sample std (ddof 1), and how many LM seeds."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "UnitEstimate":
        x = np.asarray(values, dtype=float)
        mean = float(x.mean()) if x.size else math.nan
        std = float(x.std(ddof=1)) if x.size > 1 else math.nan
        return cls(mean, std, int(x.size))

    def t_p_value(self) -> float:
        """Two-sided one-sample t-test of mean 0 (n - 1 df); NaN below two LM seeds. A spread of exactly 0
        with a non-zero mean gives p = 0 (every LM moved by the same amount)."""
        from scipy import stats

        if self.n < 2 or math.isnan(self.std):
            return math.nan
        if self.std == 0:
            return 1.0 if self.mean == 0 else 0.0
        t = self.mean / (self.std / math.sqrt(self.n))
        return float(2 * stats.t.sf(abs(t), self.n - 1))


def bonferroni_t_interval(estimate: UnitEstimate, m: int, alpha: float = ALPHA) -> tuple[float, float]:
    """d +/- t(1 - alpha / (2m), n - 1) s / sqrt(n): covers all m true differences at once with probability
    at least 1 - alpha. NaN bounds below two LM seeds."""
    if estimate.n < 2 or math.isnan(estimate.std):
        return math.nan, math.nan
    half = t_critical(alpha / m, estimate.n - 1) * estimate.std / math.sqrt(estimate.n)
    return estimate.mean - half, estimate.mean + half


# --- Stein's two-stage procedure -------------------------------------------------------------------
def stein_total(n0: int, s0: float, half_width: float, alpha: float) -> int:
    """Total LM seeds N = max(n0, ceil((t(1 - alpha/2, n0 - 1) s0 / h)^2)) for a half-width <= h at level
    1 - alpha (pass alpha / m for a family of m). ``n0`` >= 2."""
    if n0 < 2:
        raise ValueError("Stein's procedure needs at least two stage-one LM seeds")
    if half_width <= 0:
        raise ValueError("the target half-width must be positive")
    if math.isnan(s0):
        return n0
    need = (t_critical(alpha, n0 - 1) * s0 / half_width) ** 2
    # A relative tolerance: (t s / h)^2 that is a whole number up to rounding must not gain a seed.
    return max(n0, math.ceil(need * (1 - 1e-12)))


@dataclass(frozen=True)
class SteinResult:
    """A two-stage comparison: mean over all N LM seeds, the stage-one spread and its interval."""

    mean: float
    s0: float
    n0: int
    n: int
    low: float
    high: float
    p_value: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def stein_interval(values: Sequence[float], n0: int, alpha: float) -> SteinResult:
    """Stein's interval from the LM-seed values in run order (the first ``n0`` are stage one):
    mean over all N +/- t(1 - alpha/2, n0 - 1) s0 / sqrt(N), and the p-value of T = mean sqrt(N) / s0,
    which is exactly t with n0 - 1 df whatever N the data chose."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    s0 = float(x[:n0].std(ddof=1)) if n0 >= 2 and x.size >= n0 else math.nan
    mean, n = float(x.mean()), int(x.size)
    if math.isnan(s0):
        return SteinResult(mean, s0, n0, n, math.nan, math.nan, math.nan)
    half = t_critical(alpha, n0 - 1) * s0 / math.sqrt(n)
    if s0 == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(mean) * math.sqrt(n) / s0, n0 - 1))
    return SteinResult(mean, s0, n0, n, mean - half, mean + half, p)


# --- power -------------------------------------------------------------------------------------------
def lm_seeds_for_power(effect: float, std: float, alpha: float, power: float = POWER,
                       cap: int = 10_000) -> int | None:
    """The smallest n >= 2 with n >= ((t(1 - alpha/2, n - 1) + t(power, n - 1)) s / |d|)^2: the LM seeds a
    two-sided t test at level ``alpha`` needs for ``power`` against an effect of the observed size. Searched
    upward from the normal-quantile answer (the t answer is never smaller); None when the effect is 0 or
    undefined; ``cap`` bounds the search. An estimate from a noisy d and s: say so where it is shown."""
    from scipy import stats

    if math.isnan(effect) or math.isnan(std) or effect == 0:
        return None
    ratio = std / abs(effect)
    n = max(2, math.ceil(((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * ratio) ** 2 * (1 - 1e-12)))
    while n < cap:
        if n >= ((stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * ratio) ** 2:
            return n
        n += 1
    return cap


# --- random effects ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RandomEffects:
    """A DerSimonian-Laird pooled effect over K tasks."""

    mu: float
    se: float
    low: float  # Hartung-Knapp-Sidik-Jonkman interval (t, K - 1 df) at the level asked
    high: float
    z_low: float  # the normal-quantile (Wald) interval, for reference
    z_high: float
    p_value: float  # HKSJ t test of mu = 0
    tau2: float
    i2: float
    q: float
    k: int


def random_effects(effects: Sequence[float], variances: Sequence[float], alpha: float = ALPHA) -> RandomEffects:
    """DerSimonian-Laird random-effects pooling of per-task effects y_i with within-task variances v_i."""
    from scipy import stats

    y = np.asarray(effects, dtype=float)
    v = np.asarray(variances, dtype=float)
    k = int(y.size)
    nan = math.nan
    if k == 0:
        return RandomEffects(nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, 0)
    if np.any(v <= 0):
        # A task whose LM seeds all moved alike has no within-task variance; a tiny floor keeps the weights
        # finite without letting one task claim infinite precision.
        v = np.maximum(v, 1e-12)
    w = 1 / v
    y_fe = float(np.sum(w * y) / np.sum(w))
    q = float(np.sum(w * (y - y_fe) ** 2))
    c = float(np.sum(w) - np.sum(w ** 2) / np.sum(w))
    tau2 = max(0.0, (q - (k - 1)) / c) if k > 1 and c > 0 else 0.0
    i2 = max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0
    w_re = 1 / (v + tau2)
    mu = float(np.sum(w_re * y) / np.sum(w_re))
    se = float(1 / math.sqrt(np.sum(w_re)))
    z = float(stats.norm.ppf(1 - alpha / 2))
    if k > 1:
        se_hksj = math.sqrt(float(np.sum(w_re * (y - mu) ** 2)) / ((k - 1) * float(np.sum(w_re))))
        half = t_critical(alpha, k - 1) * se_hksj
        p = float(2 * stats.t.sf(abs(mu) / se_hksj, k - 1)) if se_hksj > 0 else (0.0 if mu else 1.0)
        low, high = mu - half, mu + half
    else:
        low = high = p = nan
    return RandomEffects(mu, se, low, high, mu - z * se, mu + z * se, p, tau2, i2, q, k)
