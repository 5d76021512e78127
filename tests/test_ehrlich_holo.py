"""Ehrlich instances drawn as holo-bench draws them: band, spacings, start state, quantisation, epistasis.

The facts checked come from holo-bench's ``_ehrlich.py`` and its DMP and motif helpers: a band of
``int(0.4 v)`` states each side of a shuffled centre plus the state itself, gaps ``1 + floor(S w)``
with normalised random weights, the motif chain started from the stationary distribution,
quantisation in steps of ``ceil(k / q)``, and the cubic epistasis response. Each reference below is
written out in the test from those definitions, not taken from the module under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bib_ray.cli import main
from bib_ray.errors import BibInputError
from bib_ray.tasks import make_task
from bib_ray.tasks.ehrlich import EhrlichFunction, EhrlichTask


def _band_centre(row: np.ndarray, state: int, half: int) -> int | None:
    """The centre c whose cyclic band c-half..c+half, plus ``state`` itself, is exactly ``row``'s allowed set."""
    vocab = len(row)
    allowed = set(np.flatnonzero(row).tolist())
    for centre in range(vocab):
        band = {(centre + d) % vocab for d in range(-half, half + 1)}
        if band | {state} == allowed:
            return centre
    return None


@pytest.mark.parametrize("seed", range(6))
def test_v20_band_allows_17_successors_plus_the_state_itself(seed: int) -> None:
    f = EhrlichFunction(length=32, vocab=20, motifs=2, motif_length=4, quantization=4, seed=seed)
    centres = []
    for state, row in enumerate(f.mask):
        centre = _band_centre(row, state, half=8)  # int(0.4 * 20) = 8 each side: 17 band states
        assert centre is not None, (state, np.flatnonzero(row))
        in_band = (state - centre) % 20 <= 8 or (centre - state) % 20 <= 8
        assert row.sum() == (17 if in_band else 18)  # repeats are always allowed on top of the band
        centres.append(centre)
    assert sorted(centres) == list(range(20))  # a row shuffle of the banded matrix: every band once
    # transition probabilities live exactly on the allowed steps, rows sum to one
    assert ((f.transition > 0) == f.mask).all()
    np.testing.assert_allclose(f.transition.sum(1), 1.0)


def test_band_width_follows_holo_for_every_vocabulary() -> None:
    for vocab in range(2, 27):
        f = EhrlichFunction(length=8, vocab=vocab, motifs=1, motif_length=2, quantization=2, seed=vocab)
        band = 2 * int(vocab * 0.4) + 1
        counts = f.mask.sum(1)
        assert set(counts.tolist()) <= {band, band + 1}, (vocab, counts)
        assert f.mask.diagonal().all()


def test_chains_start_from_the_stationary_distribution() -> None:
    f = EhrlichFunction(length=6, vocab=20, motifs=1, motif_length=4, quantization=4, seed=3)
    pi = f.stationary
    np.testing.assert_allclose(pi @ f.transition, pi, atol=1e-12)
    assert abs(pi.sum() - 1) < 1e-12 and (pi > 0).all()
    assert np.abs(pi - 1 / 20).max() > 0.03  # far enough from uniform that the check below can tell
    x = f.sample(40_000, np.random.default_rng(9))
    for position in (0, 5):  # stationary at the start, so stationary at every position
        freq = np.bincount(x[:, position], minlength=20) / len(x)
        assert np.abs(freq - pi).max() < 0.012, (position, np.abs(freq - pi).max())
    # the motif chain is one feasible DMP trajectory, cut into motifs
    g = EhrlichFunction(length=64, vocab=20, motifs=4, motif_length=8, quantization=8, seed=4)
    assert g.feasible(g.motifs.reshape(1, -1))[0]


def test_spacings_follow_holo_construction() -> None:
    length, motifs, k = 32, 2, 4
    block, slack = length // motifs, (length - motifs * k) // motifs  # 16 and 12
    offsets = np.concatenate([EhrlichFunction(length, 20, motifs, k, k, seed).spacings for seed in range(300)])
    assert (offsets[:, 0] == 0).all()
    assert (np.diff(offsets, axis=1) >= 1).all()  # strictly increasing
    assert (offsets[:, -1] < block).all()
    # gaps 1 + floor(S w) with sum(w) = 1 lose less than 1 each to the floor: the motif spans its block
    assert (offsets[:, -1] >= slack + 1).all() and (offsets[:, -1] <= slack + k - 1).all()
    assert len(np.unique(offsets[:, 1])) >= 10  # the first gap takes most values in 1..13
    # the same construction simulated independently: gap means agree
    rng = np.random.default_rng(123)
    w = rng.random((20_000, k - 1))
    gaps = 1 + np.floor(slack * w / w.sum(1, keepdims=True))
    np.testing.assert_allclose(np.diff(offsets, axis=1).mean(0), gaps.mean(0), atol=0.6)
    # one element per motif: offset 0 only
    assert EhrlichFunction(8, 4, 2, 1, 1, 0).spacings.tolist() == [[0], [0]]


def _near_optimal(f: EhrlichFunction, rng: np.random.Generator, n: int) -> np.ndarray:
    """Feasible sequences with many motif elements present: the optimum with a few letters changed."""
    best = f.optimal_solution()
    out = []
    while len(out) < n:
        x = best.copy()
        where = rng.choice(len(x), size=rng.integers(1, 6), replace=False)
        x[where] = rng.integers(0, f.vocab, size=len(where))
        if f.feasible(x[None])[0]:
            out.append(x)
    return np.array(out)


def _previous_formula(f: EhrlichFunction, x: np.ndarray) -> np.ndarray:
    """bib-ray's formula before this change: prod floor(q m / k) / q, 0 if infeasible (q divides k)."""
    k, q = f.motifs.shape[1], f.quantization
    value = np.ones(len(x))
    for motif, spacing in zip(f.motifs, f.spacings):
        best = np.zeros(len(x))
        for start in range(f.length - spacing[-1]):
            present = (x[:, start + spacing] == motif).sum(1)
            best = np.maximum(best, np.floor(q * present / k) / q)
        value *= best
    feasible = np.array([all(f.mask[a, b] for a, b in zip(row[:-1], row[1:])) for row in x])
    return np.where(feasible, value, 0.0)


@pytest.mark.parametrize("options", [dict(), dict(motif_length=4, quantization=2, seed=2),
                                     dict(length=40, motifs=3, motif_length=6, quantization=3, seed=5)])
def test_epistasis_zero_leaves_the_objective_unchanged(options: dict) -> None:
    sizes = dict(length=32, vocab=20, motifs=2, motif_length=4, quantization=4, seed=0) | options
    f = EhrlichFunction(**sizes)
    rng = np.random.default_rng(1)
    x = np.concatenate([f.sample(3000, rng), _near_optimal(f, rng, 500), f.optimal_solution()[None]])
    assert f.feasible(x).all()
    y = f(x)
    np.testing.assert_array_equal(y, _previous_formula(f, x))
    assert len(np.unique(y)) >= 3  # the sample reaches several score levels, not only 0
    assert f.epistasis == 0.0 and y.max() == 1.0


def test_epistasis_is_holo_cubic_response() -> None:
    plain = EhrlichFunction(32, 20, 2, 4, 4, seed=0)
    bent = EhrlichFunction(32, 20, 2, 4, 4, seed=0, epistasis=2.5)
    np.testing.assert_array_equal(plain.motifs, bent.motifs)  # epistasis draws nothing
    rng = np.random.default_rng(2)
    x = np.concatenate([plain.sample(500, rng), _near_optimal(plain, rng, 300)])
    h = plain.motif_presence(x)
    expected = ((2.5 * h * (h - 1.0) + 1.0) * h).prod(1)
    np.testing.assert_allclose(bent(x), expected, rtol=0, atol=1e-15)
    assert (bent(x) <= plain(x)).all() and (bent(x) < plain(x)).any()
    assert bent(bent.optimal_solution()[None])[0] == 1.0


def test_quantisation_rounds_as_holo() -> None:
    """k = 4, q = 3: holo steps by ceil(4/3) = 2 elements, levels 0, 0.5, 1, and rounds the share of
    elements present *down*: 1 element scores 0, 3 score 0.5. The sequence holds no motif letter but the
    ``present`` ones placed in one window, so that window's count is the best count exactly."""
    f = EhrlichFunction(16, 20, 1, 4, 3, seed=1)
    motif, spacing = f.motifs[0], f.spacings[0]
    assert len(set(motif.tolist())) == 4  # distinct letters: no other window can match a placed one
    filler = next(s for s in range(20) if s not in set(motif.tolist()))
    x = np.full((5, 16), filler)
    for present in range(5):
        x[present, spacing[:present]] = motif[:present]
    h = f.motif_presence(x)[:, 0]
    step = math.ceil(4 / 3)
    holo = [math.floor(m / step) / (4 / step) for m in range(5)]
    assert holo == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert h.tolist() == holo


@pytest.mark.parametrize("options", [
    dict(motif_length=4, quantization=3),
    dict(length=24, motif_length=6, quantization=4, epistasis=3.9),
    dict(length=12, motifs=3, motif_length=1, quantization=1),
    dict(length=64, vocab=26, motifs=4, motif_length=8, quantization=5, seed=7, epistasis=1.0),
])
def test_optimal_sequence_scores_one(options: dict) -> None:
    task = make_task("ehrlich", n_samples=400, **options)
    best = task.optimal_solution()
    assert task.oracle(best[None])[0] == 1.0
    assert 0.0 <= task.offline_y.min() and task.offline_y.max() <= 1.0 and task.offline_y.std() > 0


def test_cli_text_options_are_numbers() -> None:
    task = make_task("ehrlich", n_samples="3000", epistasis="0.5", quantization="3")
    assert task.function.epistasis == 0.5 and task.options["epistasis"] == 0.5


@pytest.mark.parametrize(("options", "field"), [
    (dict(quantization=0), "quantization"),
    (dict(quantization=5), "quantization"),  # above motif_length 4
    (dict(motif_length=5, quantization=3), "quantization"),  # ceil(5/3) = 2 does not divide 5
    (dict(epistasis=-0.1), "epistasis"),
    (dict(epistasis=4.5), "epistasis"),
    (dict(epistasis="strong"), "epistasis"),
    (dict(epistasis=float("nan")), "epistasis"),
    (dict(epistasis=True), "epistasis"),
])
def test_bad_options_name_the_option(options: dict, field: str) -> None:
    with pytest.raises(BibInputError, match=field) as err:
        EhrlichTask(n_samples=100, **options)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("command", "option", "field"), [
    ("pretrain", "epistasis=-1", "epistasis"),
    ("pretrain", "quantization=9", "quantization"),
    ("run", "epistasis=five", "epistasis"),
    ("run", "quantization=0", "quantization"),
])
def test_bad_options_exit_2_via_the_cli(command, option, field, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    argv = [command, "--task", "ehrlich", "--task-option", option]
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("bib-ray: error:") and field in err[0], err
