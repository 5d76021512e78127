"""The task interface: one object owns a problem's alphabet, offline data, oracle and normalisation.

Modelled on design-bench's task objects, so every method and every variant reports numbers on the
same scale. Sequences travel as integer arrays of shape (n, L) indexing ``alphabet``; strings are
only for files and people.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Callable

import numpy as np

from bib_ray.errors import BibInputError


class Task(ABC):
    """An offline sequence-design problem.

    Subclasses set ``name``, ``alphabet``, ``length``, ``offline_x`` (int64, (n, L)), ``offline_y``
    (float64, (n,)), ``default_steps`` and the normalisation range ``y_min``/``y_max`` (over the
    whole design space where the task knows it, else over the offline data).
    """

    name: str
    alphabet: str
    length: int
    offline_x: np.ndarray
    offline_y: np.ndarray
    y_min: float
    y_max: float
    default_steps: int = 100

    @property
    def has_oracle(self) -> bool:
        """Whether :meth:`oracle` scores sequences exactly (benchmark tasks) or not (user data)."""
        return True

    @abstractmethod
    def oracle(self, x: np.ndarray) -> np.ndarray:
        """Exact scores of integer-encoded sequences ``x`` of shape (m, L), float64 (m,)."""

    def normalize(self, y: np.ndarray) -> np.ndarray:
        """Map raw scores to [0, 1] over the task's score range: (y - y_min) / (y_max - y_min)."""
        return (np.asarray(y, dtype=np.float64) - self.y_min) / (self.y_max - self.y_min)

    def encode(self, sequences: list[str], field: str = "sequence") -> np.ndarray:
        """Strings to an int64 array (n, L); a letter outside the alphabet is a clear input error."""
        index = {c: i for i, c in enumerate(self.alphabet)}
        out = np.empty((len(sequences), self.length), dtype=np.int64)
        for row, seq in enumerate(sequences):
            if len(seq) != self.length:
                raise BibInputError(field, f"sequence {row} has length {len(seq)}, expected {self.length}",
                                    "give sequences of one length")
            for col, letter in enumerate(seq):
                if letter not in index:
                    raise BibInputError(field, f"sequence {row} has letter {letter!r} outside the alphabet "
                                        f"{self.alphabet!r}", "fix the sequence or the alphabet")
                out[row, col] = index[letter]
        return out

    def check_encoded(self, x: np.ndarray) -> np.ndarray:
        """Oracle input as int64 (m, L) with letters in range, so a bad batch fails loudly."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.length:
            raise BibInputError("sequences", f"expected an integer array of shape (m, {self.length}), got {x.shape}",
                                "encode sequences with task.encode")
        if x.size and (x.min() < 0 or x.max() >= len(self.alphabet)):
            raise BibInputError("sequences", f"letter indices must lie in [0, {len(self.alphabet)})",
                                "encode with task.encode")
        return x.astype(np.int64, copy=False)

    def decode(self, x: np.ndarray) -> list[str]:
        """Integer array (n, L) back to strings."""
        letters = np.array(list(self.alphabet))
        return ["".join(row) for row in letters[np.asarray(x)]]

    def fingerprint(self) -> str:
        """A short hash of the offline data and alphabet: the key of per-task caches (LM, embeddings)."""
        digest = hashlib.sha256()
        digest.update(self.name.encode())
        digest.update(self.alphabet.encode())
        digest.update(np.ascontiguousarray(self.offline_x, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(self.offline_y, dtype=np.float64).tobytes())
        return digest.hexdigest()[:16]

    def top_offline(self, m: int) -> np.ndarray:
        """Indices of the ``m`` best offline sequences (the paper's start designs), best last."""
        n = len(self.offline_y)
        if m > n:
            raise BibInputError("designs", f"{m} designs asked but the offline set has only {n} sequences",
                                f"use --designs {n} or fewer")
        order = np.argsort(self.offline_y, kind="stable")
        return order[n - m:]


def lower_half_offline(x: np.ndarray, oracle: Callable[[np.ndarray], np.ndarray], field: str
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The design-bench protocol for drawn data: drop repeated sequences (keeping draw order), score them,
    keep the lower-scoring half (stable on ties, in draw order), frozen and checked."""
    _, first = np.unique(x, axis=0, return_index=True)
    x = x[np.sort(first)]
    y = oracle(x)
    keep = np.sort(np.argsort(y, kind="stable")[: len(y) // 2])
    x, y = x[keep], y[keep]
    x.setflags(write=False)
    y.setflags(write=False)
    validate_offline(x, y, field=field)
    return x, y


def validate_offline(x: np.ndarray, y: np.ndarray, field: str, min_size: int = 8) -> None:
    """Checks shared by every task's offline data: finite scores, matching sizes, enough points."""
    if x.ndim != 2:
        raise BibInputError(field, "sequences must form a 2-D array (n, L)", "give one sequence per row")
    if len(x) != len(y):
        raise BibInputError(field, f"{len(x)} sequences but {len(y)} scores", "give one score per sequence")
    if len(y) < min_size:
        raise BibInputError(field, f"only {len(y)} offline points; at least {min_size} are needed",
                            "add data")
    bad = ~np.isfinite(y)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise BibInputError(field, f"{int(bad.sum())} scores are NaN or infinite (first at row {first})",
                            "drop or fix those rows")
    if float(np.std(y)) == 0.0:
        raise BibInputError(field, "all offline scores are equal", "the data carry no signal to learn from")
