"""Offline-safe model-selection criteria: score a trial without the oracle, from the offline data alone.

Why several: a user with their own data has no oracle, so a search must be steered by something fit on
the offline set. Which such criterion agrees with the truth is an open question of offline model-based
optimisation (Beckham et al. 2024; Tan et al. 2025, "RaM"), so bib-ray logs them all for every trial and
``bib-ray report`` measures their agreement with the oracle on tasks that have one.

Every model here is fit once per workbench (task + LM) on a seeded "fit" part of the offline data; the
rest ("held-out" part, ``criteria.holdout`` of it) validates the LM ridge for the ranking criterion.
None of them reads the oracle, and all but :meth:`OfflineCriteria.proxy_ranking` are independent of the
LM that BIB climbs, so designs that only fool the LM kernel do not score well on them.

The criteria (metric names as logged and as ``metric:`` of a search):

* ``offline_proxy_mean`` / ``offline_proxy_max``: additive model (one-hot ridge), mean/max over designs.
* ``offline_pairwise_mean`` / ``offline_pairwise_max``: pairwise-epistatic model (kernel ridge with the
  degree-2 polynomial kernel (1 + matches/L)^2 on one-hot sequences: constant, per-position and every
  position-pair feature), mean/max over designs.
* ``offline_conservative_mean``: per design, mean minus ``k`` standard deviations over an ensemble of
  pairwise models fit on bootstrap resamples; averaged over designs (penalises designs the data do not
  pin down).
* ``proxy_heldout_spearman``: RaM-style ranking quality of BIB's own proxy: Spearman correlation of the
  LM-kernel ridge (at the trial's ``beta_scale``) fit on the fit part and scored on the held-out part.
  Depends on the LM and ``beta_scale`` only, not on the designs: a trial-level criterion.
* ``offline_nearest_distance``: mean Hamming distance of the designs to their nearest offline sequence:
  how far designs stray from the data. Lower is safer; minimise it or use it as a filter.
* ``proxy_mean``: the LM ridge's own mean prediction of the designs (what BIB climbs): a baseline that is
  offline-safe but optimistic by construction.

Plain numpy (and torch for the LM ridge); no Ray, no MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from bib_ray.errors import BibInputError

MIN_SPLIT_POINTS = 4
"""Fewest offline points either part of the split may keep: every data set a task accepts (8 points or more)
works at the default holdout of 0.5; a holdout that leaves fewer is refused."""


@dataclass(frozen=True)
class Criterion:
    """One offline-safe criterion: its metric name, direction and what it measures (one line)."""

    name: str
    direction: Literal["max", "min"]
    level: Literal["design", "trial"]  # computed from the designs, or from the trial's proxy only
    doc: str


CRITERIA: tuple[Criterion, ...] = (
    Criterion("offline_proxy_mean", "max", "design",
              "additive one-hot ridge fit on the offline data (not the LM): mean predicted z-score of the designs"),
    Criterion("offline_proxy_max", "max", "design", "the same additive model: best design's predicted z-score"),
    Criterion("offline_pairwise_mean", "max", "design",
              "pairwise-epistatic kernel ridge on one-hot sequences (not the LM): mean predicted z-score"),
    Criterion("offline_pairwise_max", "max", "design", "the same pairwise model: best design's predicted z-score"),
    Criterion("offline_conservative_mean", "max", "design",
              "bootstrap ensemble of pairwise models: mean over designs of (ensemble mean - k * ensemble std)"),
    Criterion("proxy_heldout_spearman", "max", "trial",
              "RaM-style: Spearman of the LM ridge (trial's beta_scale) fit on part of the offline data, on the rest"),
    Criterion("offline_nearest_distance", "min", "design",
              "mean Hamming distance of the designs to the nearest offline sequence: how far they stray (minimise)"),
    Criterion("proxy_mean", "max", "design",
              "baseline: the LM ridge's own mean prediction of the designs (what BIB climbs; optimistic)"),
)
CRITERIA_BY_NAME: dict[str, Criterion] = {c.name: c for c in CRITERIA}
CRITERIA_NAMES: tuple[str, ...] = tuple(c.name for c in CRITERIA)


class CriteriaConfig(BaseModel):
    """How the offline criteria are fit (part of a run spec: ``criteria:``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    holdout: float = Field(0.5, gt=0.0, lt=1.0, description="share of the offline data held out from the "
                           "criterion models, to validate the LM ridge (proxy_heldout_spearman)")
    seed: int = Field(12345, ge=0, description="seed of the split, the kernel subsample and the bootstraps")
    ridge: float = Field(1.0, gt=0.0, description="ridge of the additive and pairwise models (kernel units)")
    ensemble: int = Field(8, ge=2, le=64, description="bootstrap members of the conservative score")
    k: float = Field(1.0, ge=0.0, description="standard deviations the conservative score subtracts")
    max_kernel_points: int = Field(1500, ge=MIN_SPLIT_POINTS, le=20_000,
                                   description="fit points of the pairwise models (a seeded subsample above it)")


def split_offline(n: int, config: CriteriaConfig) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, held-out indices) of a seeded permutation of n points; both parts must keep
    MIN_SPLIT_POINTS points, else a one-line input error naming ``criteria.holdout``."""
    held = int(round(n * config.holdout))
    fit = n - held
    if min(fit, held) < MIN_SPLIT_POINTS:
        raise BibInputError("criteria.holdout", f"{config.holdout} of {n} offline points leaves {fit} to fit and "
                            f"{held} held out; each part needs at least {MIN_SPLIT_POINTS}",
                            "choose a holdout nearer 0.5 or add offline data")
    perm = np.random.default_rng(config.seed).permutation(n)
    return perm[:fit], perm[fit:]


def one_hot(x: np.ndarray, vocab: int) -> np.ndarray:
    """Integer sequences (n, L) to flat one-hot float64 features (n, L * vocab)."""
    x = np.asarray(x, dtype=np.int64)
    n, length = x.shape
    feats = np.zeros((n, length * vocab))
    feats[np.arange(n)[:, None], np.arange(length)[None, :] * vocab + x] = 1.0
    return feats


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho with average ranks for ties (scipy's definition); NaN if either side is constant."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


class AdditiveModel:
    """One-hot ridge regression (per-position effects): the additive criterion's model."""

    def __init__(self, x: np.ndarray, y: np.ndarray, vocab: int, ridge: float) -> None:
        feats = one_hot(x, vocab)
        gram = feats.T @ feats + ridge * np.eye(feats.shape[1])
        self.vocab = vocab
        self.weights = np.linalg.solve(gram, feats.T @ np.asarray(y, dtype=np.float64))
        self.length = x.shape[1]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted z-score of each sequence (n,)."""
        x = np.asarray(x, dtype=np.int64)
        return self.weights.reshape(self.length, self.vocab)[np.arange(self.length), x].sum(1)


def pairwise_kernel(a: np.ndarray, b: np.ndarray, length: int) -> np.ndarray:
    """(1 + matches / L)^2 between one-hot rows: the inner product of constant, per-position and
    position-pair indicator features, i.e. a ridge over every pairwise (epistatic) term."""
    return (1.0 + (a @ b.T) / length) ** 2


class PairwiseEnsemble:
    """Kernel ridge with the pairwise kernel: one model on the support set and ``members`` models on
    bootstrap resamples of it. All share the support points, so one kernel row per design scores all."""

    def __init__(self, x: np.ndarray, y: np.ndarray, vocab: int, ridge: float, members: int,
                 rng: np.random.Generator) -> None:
        from scipy.linalg import solve

        self.vocab = vocab
        self.length = x.shape[1]
        self.support = one_hot(x, vocab)
        y = np.asarray(y, dtype=np.float64)
        n = len(y)
        gram = pairwise_kernel(self.support, self.support, self.length)
        eye = np.eye(n)
        self.alpha = solve(gram + ridge * eye, y, assume_a="pos")
        cols = []
        for _ in range(members):
            idx = rng.integers(0, n, size=n)
            sub = gram[np.ix_(idx, idx)] + ridge * np.eye(n)
            coef = solve(sub, y[idx], assume_a="pos")
            cols.append(np.bincount(idx, weights=coef, minlength=n))  # duplicates add up on their support row
        self.members = np.stack(cols, axis=1)  # (n, members)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pairwise model's prediction (m,), each ensemble member's prediction (m, members))."""
        k = pairwise_kernel(one_hot(x, self.vocab), self.support, self.length)
        return k @ self.alpha, k @ self.members


def nearest_distance(designs: np.ndarray, offline_onehot: np.ndarray, vocab: int) -> np.ndarray:
    """Hamming distance of each design to its nearest offline sequence, (m,).

    Matches are one-hot inner products (float32 is exact for counts this small); repeated designs are
    scored once.
    """
    designs = np.asarray(designs, dtype=np.int64)
    unique, inverse = np.unique(designs, axis=0, return_inverse=True)
    matches = one_hot(unique, vocab).astype(np.float32) @ offline_onehot.T
    dist = designs.shape[1] - matches.max(axis=1)
    return np.rint(dist).astype(np.float64)[np.asarray(inverse).reshape(-1)]


@dataclass
class OfflineCriteria:
    """Every criterion's fitted models for one task's offline data (and one LM, for the ranking)."""

    config: CriteriaConfig
    vocab: int
    fit_index: np.ndarray
    held_index: np.ndarray
    additive: AdditiveModel
    pairwise: PairwiseEnsemble
    offline_onehot: np.ndarray  # float32 (n, L * vocab), all offline sequences
    y_z: np.ndarray
    _ranking: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, x: np.ndarray, y_z: np.ndarray, vocab: int, config: CriteriaConfig | None = None) -> "OfflineCriteria":
        """Fit the additive model, the pairwise model and its bootstrap ensemble on the fit part."""
        config = config or CriteriaConfig()
        x = np.asarray(x, dtype=np.int64)
        y_z = np.asarray(y_z, dtype=np.float64)
        fit_index, held_index = split_offline(len(y_z), config)
        rng = np.random.default_rng(config.seed + 1)
        support = fit_index
        if len(support) > config.max_kernel_points:
            support = np.sort(rng.choice(support, size=config.max_kernel_points, replace=False))
        return cls(config=config, vocab=vocab, fit_index=fit_index, held_index=held_index,
                   additive=AdditiveModel(x[fit_index], y_z[fit_index], vocab, config.ridge),
                   pairwise=PairwiseEnsemble(x[support], y_z[support], vocab, config.ridge, config.ensemble, rng),
                   offline_onehot=one_hot(x, vocab).astype(np.float32), y_z=y_z)

    def design_metrics(self, designs: np.ndarray) -> dict[str, float]:
        """The design-level criteria of one batch of designs (int (m, L))."""
        designs = np.asarray(designs, dtype=np.int64)
        additive = self.additive.predict(designs)
        pair, members = self.pairwise.predict(designs)
        conservative = members.mean(1) - self.config.k * members.std(1, ddof=1)
        return {"offline_proxy_max": float(additive.max()), "offline_proxy_mean": float(additive.mean()),
                "offline_pairwise_max": float(pair.max()), "offline_pairwise_mean": float(pair.mean()),
                "offline_conservative_mean": float(conservative.mean()),
                "offline_nearest_distance": float(nearest_distance(designs, self.offline_onehot, self.vocab).mean())}

    def proxy_ranking(self, phi, beta_scale: float) -> float:
        """proxy_heldout_spearman: the LM ridge (BIB's forward fit at ``beta_scale``) fit on the fit part
        of the offline embeddings ``phi`` (n, d), Spearman of its predictions on the held-out part
        (memoised per ``beta_scale`` and embeddings)."""
        import torch

        from bib_ray.core.ridge import OfflineFit, forward_prediction

        phi = torch.as_tensor(phi)
        key = (float(beta_scale), tuple(phi.shape), float(phi.sum()))  # the embeddings' identity, cheaply
        if key not in self._ranking:
            fit_idx = torch.as_tensor(self.fit_index)
            held_idx = torch.as_tensor(self.held_index)
            fit = OfflineFit.fit(phi[fit_idx], torch.as_tensor(self.y_z)[fit_idx], float(beta_scale))
            pred = forward_prediction(phi[held_idx], fit).cpu().numpy()
            self._ranking[key] = spearman(pred, self.y_z[self.held_index])
        return self._ranking[key]
