"""The offline-safe criterion (``AdditiveOfflineScorer``) against an independent computation.

It promises: a one-hot ridge model (ridge 1, no intercept) of the z-scored labels, fit on a seeded half
of the offline set and nothing else. Checked three ways: equal to scikit-learn's Ridge on one-hot
features of that half; only that half's labels move it; and on an exactly additive landscape it ranks
sequences it never saw as the truth does.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.linear_model import Ridge
from sklearn.preprocessing import OneHotEncoder

from bib_ray.evaluation import AdditiveOfflineScorer


def _data(n: int = 60, length: int = 5, vocab: int = 4, seed: int = 0, noise: float = 0.5):
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(length, vocab))
    x = rng.integers(0, vocab, size=(n, length))
    y = weights[np.arange(length), x].sum(1) + noise * rng.normal(size=n)
    return x, (y - y.mean()) / y.std(), weights


def test_equals_sklearn_ridge_on_the_seeded_half():
    x, y_z, _ = _data()
    scorer = AdditiveOfflineScorer(x, y_z, vocab=4, ridge=1.0, seed=7)
    half = np.random.default_rng(7).permutation(len(x))[: len(x) // 2]
    encoder = OneHotEncoder(categories=[list(range(4))] * x.shape[1]).fit(x)
    reference = Ridge(alpha=1.0, fit_intercept=False).fit(encoder.transform(x[half]).toarray(), y_z[half])
    probe = np.random.default_rng(1).integers(0, 4, size=(30, x.shape[1]))
    np.testing.assert_allclose(scorer.score(probe), reference.predict(encoder.transform(probe).toarray()),
                               rtol=1e-9, atol=1e-12)


def test_only_half_of_the_labels_move_it():
    x, y_z, _ = _data(n=40)
    probe = np.random.default_rng(2).integers(0, 4, size=(20, x.shape[1]))
    base = AdditiveOfflineScorer(x, y_z, vocab=4).score(probe)
    moved = 0
    for i in range(len(x)):
        y2 = y_z.copy()
        y2[i] += 5.0
        moved += not np.allclose(AdditiveOfflineScorer(x, y2, vocab=4).score(probe), base, atol=1e-12)
    assert moved == len(x) // 2


@pytest.mark.parametrize("seed", [0, 1])
def test_ranks_unseen_sequences_of_an_additive_landscape(seed):
    x, y_z, weights = _data(n=400, length=6, seed=seed, noise=0.0)
    scorer = AdditiveOfflineScorer(x, y_z, vocab=4)
    unseen = np.random.default_rng(100 + seed).integers(0, 4, size=(300, 6))
    truth = weights[np.arange(6), unseen].sum(1)
    assert spearmanr(scorer.score(unseen), truth).statistic > 0.98
