"""Ehrlich functions: closed-form sequence-design test functions with a known optimum of exactly 1.0.

Defined by Stanton et al. 2024, "Closed-Form Test Functions for Biophysical Sequence Design" (arXiv
2407.00236); instances are drawn from the same distributions as the reference implementation,
prescient-design/holo-bench (``holo/test_functions/closed_form/_ehrlich.py`` and its DMP and motif
helpers). Written here independently in NumPy, because holo-bench needs botorch and an older NumPy,
too heavy for one test function. The random streams differ from holo's, so a seed gives a different
instance than holo's seed; the distributions are the same:

* Feasibility: a discrete Markov process (DMP) over the ``v`` states. Each state ``s`` may be
  followed by the ``2 * int(0.4 * v) + 1`` cyclically consecutive states of a band (a banded 0/1
  matrix whose rows are shuffled, so the band of ``s`` is centred on a random state) and always by
  itself: 17 band states at ``v = 20``, 18 successors for a state that falls outside its own band.
  Transition probabilities: a softmax of standard normals at temperature 0.5, restricted to the
  allowed entries and renormalised. The matrix must be ergodic; holo raises when a draw is not,
  here the band shuffle is drawn again. A sequence is feasible iff every step ``x[l] -> x[l+1]`` is
  allowed.
* Motifs: ``c`` motifs of length ``k``, one DMP trajectory of length ``c * k`` started from the
  stationary distribution and cut into ``c`` pieces, so every step inside and between motifs is
  feasible.
* Spacings: motif ``i`` places element ``j`` at offset ``s(i)_j`` from its start. With the slack
  ``S = (L - c * k) // c`` of each motif's block of ``L // c`` positions, the ``k - 1`` gaps are
  ``1 + floor(S * w_j)`` for uniform random weights ``w`` normalised to sum 1, and the offsets are
  their running sum from 0: they spread over the whole block, and the last offset is below ``L // c``.
* Objective: ``f(x) = prod_i r(h_q(x, a(i), s(i)))`` for feasible ``x``. ``h_q`` is the best over
  positions of the quantised share of motif elements present: with ``m`` elements present and step
  ``t = ceil(k / q)``, ``h_q = floor(m / t) / (k / t)``. When ``q`` divides ``k`` this is
  ``floor(q * m / k) / q``; any ``q`` with ``t`` dividing ``k`` is accepted (holo takes any ``q``,
  but when ``t`` does not divide ``k`` a complete motif scores below 1, so the optimum is not 1).
  ``r(h) = (e * h * (h - 1) + 1) * h`` is holo's epistasis response; ``e = 0`` (the default) gives
  ``r(h) = h``, the paper's product. ``e`` is limited to ``[0, 4]``, where ``r`` stays in ``[0, h]``,
  so scores stay in ``[0, 1]``.
* Infeasible sequences: holo scores them ``-inf``; here they score 0, because BIB fits a kernel ridge
  regression to the offline labels and normalises scores to ``[0, 1]``, both of which need finite
  numbers. 0 is also the lowest feasible score, so the ranking of designs is unchanged.

A sequence that holds every spaced motif (filled in between with repeats, which are feasible) scores
exactly 1.0; :meth:`EhrlichFunction.optimal_solution` constructs one.
"""

from __future__ import annotations

import math

import numpy as np

from bib_ray.errors import BibInputError
from bib_ray.tasks.base import Task, validate_offline

LETTERS = "ACDEFGHIKLMNPQRSTVWY" + "BJOUXZ"  # the 20 amino acids, then the other capitals
MAX_VOCAB = len(LETTERS)
MAX_EPISTASIS = 4.0  # above it the response r(h) turns negative for some h in (0, 1)
SOFTMAX_TEMPERATURE = 0.5  # of the transition probabilities, as holo draws them


def band_half_width(vocab: int) -> int:
    """States allowed on each side of a band's centre: holo's ``int(0.4 * v)``."""
    return int(vocab * 0.4)


def quantization_step(motif_length: int, quantization: int) -> int:
    """Motif elements per quantisation level, ``ceil(k / q)``, as holo rounds them."""
    return math.ceil(motif_length / quantization)


def _irreducible(mask: np.ndarray) -> bool:
    """Whether every state reaches every state along allowed steps."""
    reach = mask.copy()
    for _ in range(len(mask)):  # transitive closure by repeated squaring
        reach = reach | ((reach.astype(np.int64) @ reach.astype(np.int64)) > 0)
    return bool(reach.all())


def _feasibility_mask(vocab: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean (v, v) allowed-step matrix: a row-shuffled cyclic band plus the diagonal, ergodic."""
    half = band_half_width(vocab)
    offsets = np.arange(-half, half + 1)
    for _ in range(100):
        centres = rng.permutation(vocab)  # the band of state s is centred on centres[s]
        mask = np.zeros((vocab, vocab), dtype=bool)
        mask[np.arange(vocab)[:, None], (centres[:, None] + offsets[None, :]) % vocab] = True
        mask |= np.eye(vocab, dtype=bool)  # repeats are always allowed: aperiodic
        if _irreducible(mask):
            return mask
    raise RuntimeError("could not draw an ergodic feasibility matrix")  # pragma: no cover


def stationary_distribution(transition: np.ndarray) -> np.ndarray:
    """The distribution ``pi`` with ``pi @ P = pi`` of an ergodic transition matrix ``P``, (v,)."""
    vocab = len(transition)
    system = np.vstack([(np.eye(vocab) - transition).T, np.ones((1, vocab))])
    rhs = np.zeros(vocab + 1)
    rhs[-1] = 1.0
    pi = np.linalg.lstsq(system, rhs, rcond=None)[0]
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def draw_spacing(motif_length: int, slack: int, rng: np.random.Generator) -> np.ndarray:
    """Offsets (k,) of one motif's elements: gaps ``1 + floor(slack * w)``, ``w`` random and summing to 1."""
    if motif_length == 1:
        return np.zeros(1, dtype=np.int64)
    weights = rng.random(motif_length - 1)
    total = weights.sum()
    weights = weights / total if total > 0 else np.full(motif_length - 1, 1.0 / (motif_length - 1))
    gaps = 1 + np.floor(slack * weights).astype(np.int64)
    return np.concatenate([[0], np.cumsum(gaps)]).astype(np.int64)


class EhrlichFunction:
    """One Ehrlich function, fully determined by its sizes and ``seed``; scores integer arrays."""

    def __init__(self, length: int, vocab: int, motifs: int, motif_length: int, quantization: int,
                 seed: int, epistasis: float = 0.0) -> None:
        """Draw the feasibility DMP, the motifs and their spacings from ``numpy.random.default_rng(seed)``."""
        self.length, self.vocab, self.quantization = length, vocab, quantization
        self.epistasis = float(epistasis)
        self.step = quantization_step(motif_length, quantization)
        self.levels = motif_length // self.step  # equals quantization when it divides motif_length
        rng = np.random.default_rng(seed)
        self.mask = _feasibility_mask(vocab, rng)
        logits = rng.standard_normal((vocab, vocab)) / SOFTMAX_TEMPERATURE
        weights = np.where(self.mask, np.exp(logits - logits.max(axis=1, keepdims=True)), 0.0)
        self.transition = weights / weights.sum(axis=1, keepdims=True)
        self.stationary = stationary_distribution(self.transition)
        chain = self.sample(1, rng, length=motifs * motif_length)[0]
        self.motifs = chain.reshape(motifs, motif_length)
        slack = (length - motifs * motif_length) // motifs
        self.spacings = np.stack([draw_spacing(motif_length, slack, rng) for _ in range(motifs)])
        for array in (self.mask, self.transition, self.stationary, self.motifs, self.spacings):
            array.setflags(write=False)

    def sample(self, n: int, rng: np.random.Generator, length: int | None = None) -> np.ndarray:
        """``n`` feasible sequences from the DMP, first state from the stationary distribution."""
        length = self.length if length is None else length
        cumulative = np.cumsum(self.transition, axis=1)
        out = np.empty((n, length), dtype=np.int64)
        out[:, 0] = rng.choice(self.vocab, size=n, p=self.stationary)
        for t in range(1, length):
            u = rng.random(n)[:, None]
            nxt = (u < cumulative[out[:, t - 1]]).argmax(axis=1)
            # guard against round-off at the top of a row: fall back to the last allowed state
            out[:, t] = np.where(self.mask[out[:, t - 1], nxt], nxt, out[:, t - 1])
        return out

    def feasible(self, x: np.ndarray) -> np.ndarray:
        """Whether every transition of each sequence is allowed by the DMP, (m, L) -> bool (m,)."""
        if x.shape[1] < 2:
            return np.ones(len(x), dtype=bool)
        return self.mask[x[:, :-1], x[:, 1:]].all(axis=1)

    def motif_presence(self, x: np.ndarray) -> np.ndarray:
        """Quantised share of each spaced motif present at its best position, (m, L) -> (m, c)."""
        out = np.empty((len(x), len(self.motifs)), dtype=np.float64)
        for i, (motif, spacing) in enumerate(zip(self.motifs, self.spacings)):
            starts = np.arange(self.length - spacing[-1])
            windows = x[:, starts[:, None] + spacing[None, :]]  # (m, positions, k)
            present = (windows == motif).sum(axis=2).max(axis=1)  # best number of elements present
            out[:, i] = (present // self.step) / self.levels
        return out

    def response(self, presence: np.ndarray) -> np.ndarray:
        """holo's epistasis response ``(e h (h - 1) + 1) h``; the identity at ``e = 0``."""
        e = self.epistasis
        return (e * presence * (presence - 1.0) + 1.0) * presence

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """f(x): product of the motif responses if feasible, else 0; exactly 1.0 at the optimum."""
        value = self.response(self.motif_presence(x)).prod(axis=1)
        return np.where(self.feasible(x), value, 0.0)

    def optimal_solution(self) -> np.ndarray:
        """A sequence (L,) scoring 1.0: each spaced motif in its own block, gaps filled with repeats."""
        block = self.length // len(self.motifs)
        x = np.empty(self.length, dtype=np.int64)
        pos = 0
        for i, (motif, spacing) in enumerate(zip(self.motifs, self.spacings)):
            begin = i * block
            x[pos:begin] = x[pos - 1] if pos else motif[0]  # repeat the previous state up to the block
            for j, offset in enumerate(spacing):
                stop = begin + (spacing[j + 1] if j + 1 < len(spacing) else offset + 1)
                x[begin + offset:stop] = motif[j]
            pos = begin + spacing[-1] + 1
        x[pos:] = x[pos - 1]
        return x


def _check_quantization(quantization: int, motif_length: int) -> None:
    """A quantisation holo accepts and whose complete motif still scores exactly 1."""
    if not 1 <= quantization <= motif_length:
        raise BibInputError("quantization", f"quantization {quantization} is outside 1..motif_length "
                            f"({motif_length})", f"use 1 <= quantization <= {motif_length} "
                            "(quantization = motif_length: none)")
    step = quantization_step(motif_length, quantization)
    if motif_length % step:
        valid = [q for q in range(1, motif_length + 1) if motif_length % quantization_step(motif_length, q) == 0]
        raise BibInputError("quantization", f"quantization {quantization} rounds motif_length {motif_length} "
                            f"in steps of ceil({motif_length}/{quantization}) = {step}, so a complete motif "
                            "scores below 1", f"use one of {', '.join(map(str, valid))}")


def _check_epistasis(epistasis: object) -> float:
    """The epistasis factor as a float in [0, MAX_EPISTASIS] (CLI options arrive as text)."""
    try:
        value = float(epistasis)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = None
    if value is None or isinstance(epistasis, bool):
        raise BibInputError("epistasis", f"epistasis {epistasis!r} is not a number", "give a number such as 0.5")
    if not 0.0 <= value <= MAX_EPISTASIS:  # NaN fails here too
        raise BibInputError("epistasis", f"epistasis {epistasis!r} is outside 0..{MAX_EPISTASIS:g}",
                            f"use 0 <= epistasis <= {MAX_EPISTASIS:g} (0: no epistasis; scores stay in [0, 1])")
    return value


class EhrlichTask(Task):
    """An Ehrlich function as an offline task: feasible DMP samples, lower half kept, range [0, 1].

    Offline data: ``n_samples`` feasible sequences drawn from the DMP (first state from its
    stationary distribution) with ``default_rng([seed, 1])``, while ``default_rng(seed)`` draws the
    function; scored; the lower half by score (stable order) is kept, so a method must improve on
    what it saw. If that lower half would carry no signal (all its scores equal, as when most random
    sequences score 0 under coarse quantisation) every sample is kept instead. ``y_min`` is 0
    (infeasible, or a motif with no element present; holo gives infeasible sequences ``-inf``, BIB
    needs finite labels) and ``y_max`` 1 (all motifs).
    """

    name = "ehrlich"
    default_steps = 25
    y_min = 0.0
    y_max = 1.0

    def __init__(self, length: int = 32, vocab: int = 20, motifs: int = 2, motif_length: int = 4,
                 quantization: int = 4, epistasis: float = 0.0, n_samples: int = 5000, seed: int = 0) -> None:
        """Check the sizes as the paper and holo require, draw the function and the offline data."""
        if not 2 <= vocab <= MAX_VOCAB:
            raise BibInputError("vocab", f"vocabulary size {vocab} is outside 2..{MAX_VOCAB}",
                                f"use 2 <= vocab <= {MAX_VOCAB}")
        if motifs < 1:
            raise BibInputError("motifs", f"{motifs} motifs", "use at least 1 motif")
        if motif_length < 1:
            raise BibInputError("motif_length", f"motif length {motif_length}", "use at least 1")
        if length // motifs < motif_length:
            raise BibInputError("length", f"length {length} cannot hold {motifs} motifs of length {motif_length}",
                                f"use length >= motifs * motif_length = {motifs * motif_length}")
        _check_quantization(quantization, motif_length)
        epistasis = _check_epistasis(epistasis)
        if n_samples < 16:
            raise BibInputError("n_samples", f"{n_samples} samples are too few", "use at least 16")
        if seed < 0:
            raise BibInputError("seed", f"seed {seed} is negative", "use a seed >= 0")
        self.length = length
        self.alphabet = LETTERS[:vocab]
        self.options = dict(length=length, vocab=vocab, motifs=motifs, motif_length=motif_length,
                            quantization=quantization, epistasis=epistasis, n_samples=n_samples, seed=seed)
        self.function = EhrlichFunction(length, vocab, motifs, motif_length, quantization, seed, epistasis)
        rng = np.random.default_rng([seed, 1])  # offline draws, independent of the function's draws
        x = self.function.sample(n_samples, rng)
        y = self.function(x)
        keep = np.sort(np.argsort(y, kind="stable")[: n_samples // 2])
        if np.ptp(y[keep]) > 0:
            x, y = x[keep], y[keep]
        x.setflags(write=False)
        y.setflags(write=False)
        self.offline_x, self.offline_y = x, y
        try:
            validate_offline(x, y, field=self.name)
        except BibInputError as err:
            raise BibInputError("ehrlich", f"{err.problem} in {n_samples} random feasible samples",
                                "use a smaller quantization, shorter motifs or more n_samples") from err

    def oracle(self, x: np.ndarray) -> np.ndarray:
        """Exact Ehrlich values of encoded sequences (m, L); 0 for infeasible ones (holo: -inf)."""
        return self.function(self.check_encoded(x))

    def optimal_solution(self) -> np.ndarray:
        """An encoded sequence (L,) that scores exactly 1.0, for tests and regret reports."""
        return self.function.optimal_solution()
