"""An offline-safe criterion: score designs without the oracle and without the LM that BIB climbs.

A search that picks hyperparameters by the oracle knows the truth (benchmark mode). Real design work
has no oracle, so a search needs a criterion from the offline data alone. Ours: an additive model
(one-hot ridge regression, per-position effects) fit on a held-out half of the offline data. It shares
nothing with the LM embedding BIB optimises through, so designs that only fool the LM kernel do not
score well here.
"""

from __future__ import annotations

import numpy as np


class AdditiveOfflineScorer:
    """One-hot ridge model of z-scored offline labels, fit on a seeded half of the offline set."""

    def __init__(self, x: np.ndarray, y_z: np.ndarray, vocab: int, ridge: float = 1.0, seed: int = 12345) -> None:
        rng = np.random.default_rng(seed)
        n, length = x.shape
        held_out = rng.permutation(n)[: max(n // 2, 1)]
        feats = self._features(x[held_out], vocab)
        gram = feats.T @ feats + ridge * np.eye(feats.shape[1])
        self.vocab = vocab
        self.weights = np.linalg.solve(gram, feats.T @ y_z[held_out])

    @staticmethod
    def _features(x: np.ndarray, vocab: int) -> np.ndarray:
        n, length = x.shape
        feats = np.zeros((n, length * vocab))
        feats[np.arange(n)[:, None], np.arange(length)[None, :] * vocab + x] = 1.0
        return feats

    def score(self, x: np.ndarray) -> np.ndarray:
        """Predicted z-score of each sequence (n,)."""
        return self._features(np.asarray(x), self.vocab) @ self.weights
