"""Ehrlich functions: closed-form sequence-design test functions with a known optimum of exactly 1.0.

Stanton et al. 2024, "Closed-Form Test Functions for Biophysical Sequence Design" (arXiv
2407.00236). Written here from the paper's definition in NumPy (the reference ``pytorch-holo``
package needs botorch, wandb, hydra and numpy<2, too heavy for one test function):

* Feasibility: a discrete Markov process (DMP) over the ``v`` states with a random sparse transition
  matrix ``A``. Each state may be followed only by the states of a cyclic band of ``v - 2 * (v // 5)``
  states (the sparsity the poli implementation takes from the paper; band centres shuffled) plus
  itself, so self-repeats are always allowed and the chain is ergodic (checked). A sequence is
  feasible iff every transition ``x[l] -> x[l+1]`` has ``A > 0``; infeasible sequences score 0.
  (With ``v < 5`` the band covers every state, so every sequence is feasible.)
* Motifs: ``c`` motifs ``a(i)`` of length ``k``, drawn as one DMP trajectory of length ``c * k`` cut
  into ``c`` pieces, so every transition inside and between motifs is feasible.
* Spacings: motif ``i`` places element ``j`` at offset ``s(i)_j`` from its start, ``s_1 = 0 < s_2 <
  ... < s_k <= L // c - 1`` (``k - 1`` distinct offsets drawn uniformly), so the ``c`` spaced motifs
  fit side by side in ``L`` positions.
* Objective: ``f(x) = prod_i h_q(x, a(i), s(i))`` for feasible ``x``, where ``h_q = max_l
  floor(q * m_l / k) / q`` and ``m_l`` counts the motif elements present at ``x[l + s_j]``. The
  quantisation ``q`` must divide ``k`` (``q = k`` means no quantisation), so partial credit comes in
  steps of ``1/q``.

A sequence that holds every spaced motif (filled in between with repeats, which are feasible) scores
exactly 1.0; :meth:`EhrlichFunction.optimal_solution` constructs one.
"""

from __future__ import annotations

import numpy as np

from bib_ray.errors import BibInputError
from bib_ray.tasks.base import Task, validate_offline

LETTERS = "ACDEFGHIKLMNPQRSTVWY" + "BJOUXZ"  # the 20 amino acids, then the other capitals
MAX_VOCAB = len(LETTERS)


def _feasibility_mask(vocab: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean (v, v) allowed-transition matrix: shuffled cyclic bands plus the diagonal, ergodic."""
    band = max(1, vocab - 2 * (vocab // 5))
    offsets = np.arange(band) - band // 2
    for _ in range(100):
        centres = rng.permutation(vocab)
        mask = np.zeros((vocab, vocab), dtype=bool)
        mask[np.arange(vocab)[:, None], (centres[:, None] + offsets[None, :]) % vocab] = True
        mask |= np.eye(vocab, dtype=bool)
        reach = mask.copy()
        for _ in range(vocab):  # transitive closure: is every state reachable from every state?
            reach = reach | ((reach.astype(np.int64) @ reach.astype(np.int64)) > 0)
        if reach.all():  # irreducible, and aperiodic through the self-loops: ergodic
            return mask
    raise RuntimeError("could not draw an ergodic feasibility matrix")  # pragma: no cover


class EhrlichFunction:
    """One Ehrlich function, fully determined by its sizes and ``seed``; scores integer arrays."""

    def __init__(self, length: int, vocab: int, motifs: int, motif_length: int, quantization: int,
                 seed: int) -> None:
        """Draw the feasibility DMP, the motifs and their spacings from ``numpy.random.default_rng(seed)``."""
        self.length, self.vocab, self.quantization = length, vocab, quantization
        rng = np.random.default_rng(seed)
        self.mask = _feasibility_mask(vocab, rng)
        logits = rng.standard_normal((vocab, vocab)) / 0.5
        weights = np.where(self.mask, np.exp(logits - logits.max(axis=1, keepdims=True)), 0.0)
        self.transition = weights / weights.sum(axis=1, keepdims=True)
        chain = self.sample(1, rng, length=motifs * motif_length)[0]
        self.motifs = chain.reshape(motifs, motif_length)
        span = length // motifs
        self.spacings = np.stack([
            np.concatenate([[0], np.sort(rng.choice(np.arange(1, span), size=motif_length - 1, replace=False))])
            for _ in range(motifs)
        ]).astype(np.int64) if motif_length > 1 else np.zeros((motifs, 1), dtype=np.int64)
        for array in (self.mask, self.transition, self.motifs, self.spacings):
            array.setflags(write=False)

    def sample(self, n: int, rng: np.random.Generator, length: int | None = None) -> np.ndarray:
        """``n`` feasible sequences from the DMP (uniform first state): the task's offline data."""
        length = self.length if length is None else length
        cumulative = np.cumsum(self.transition, axis=1)
        out = np.empty((n, length), dtype=np.int64)
        out[:, 0] = rng.integers(0, self.vocab, size=n)
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
        """Quantised fraction of each spaced motif present at its best position, (m, L) -> (m, c)."""
        k, q = self.motifs.shape[1], self.quantization
        out = np.empty((len(x), len(self.motifs)), dtype=np.float64)
        for i, (motif, spacing) in enumerate(zip(self.motifs, self.spacings)):
            starts = np.arange(self.length - spacing[-1])
            windows = x[:, starts[:, None] + spacing[None, :]]  # (m, positions, k)
            present = (windows == motif).sum(axis=2).max(axis=1)  # best number of elements present
            out[:, i] = ((q * present) // k) / q
        return out

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """f(x): product of quantised motif presences if feasible, else 0; exactly 1.0 at the optimum."""
        value = self.motif_presence(x).prod(axis=1)
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


class EhrlichTask(Task):
    """An Ehrlich function as an offline task: feasible DMP samples, lower half kept, range [0, 1].

    Offline data: ``n_samples`` feasible sequences drawn from the DMP with ``default_rng(seed)``
    (the same seed also draws the function), scored; the lower half by score (stable order) is kept,
    so a method must improve on what it saw. If that lower half would carry no signal (all its
    scores equal, as when most random sequences score 0 under coarse quantisation) every sample is
    kept instead. ``y_min`` is 0 (infeasible or no motif element) and ``y_max`` 1 (all motifs).
    """

    name = "ehrlich"
    default_steps = 25
    y_min = 0.0
    y_max = 1.0

    def __init__(self, length: int = 32, vocab: int = 20, motifs: int = 2, motif_length: int = 4,
                 quantization: int = 4, n_samples: int = 5000, seed: int = 0) -> None:
        """Check the sizes as the paper requires, draw the function and the offline data."""
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
        if not 1 <= quantization <= motif_length or motif_length % quantization:
            raise BibInputError("quantization", f"quantization {quantization} does not divide motif_length "
                                f"{motif_length}", "use a divisor of motif_length (motif_length = none)")
        if n_samples < 16:
            raise BibInputError("n_samples", f"{n_samples} samples are too few", "use at least 16")
        if seed < 0:
            raise BibInputError("seed", f"seed {seed} is negative", "use a seed >= 0")
        self.length = length
        self.alphabet = LETTERS[:vocab]
        self.options = dict(length=length, vocab=vocab, motifs=motifs, motif_length=motif_length,
                            quantization=quantization, n_samples=n_samples, seed=seed)
        self.function = EhrlichFunction(length, vocab, motifs, motif_length, quantization, seed)
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
        """Exact Ehrlich values of encoded sequences (m, L); 0 for infeasible ones."""
        return self.function(self.check_encoded(x))

    def optimal_solution(self) -> np.ndarray:
        """An encoded sequence (L,) that scores exactly 1.0, for tests and regret reports."""
        return self.function.optimal_solution()
