"""A task from the user's own measured sequences: offline data only, no oracle.

Accepted files (the extension decides the format):

* ``.csv``: a header line, then one row per sequence; the sequence column is ``sequence`` and the
  score column ``score`` unless ``sequence_column`` / ``score_column`` name others. Other columns
  are ignored; blank lines are skipped; cells are stripped of surrounding spaces.
* ``.npz``: a NumPy archive (``np.savez``) with a string array ``sequences`` and a numeric array
  ``scores`` of the same length, e.g. ``np.savez("data.npz", sequences=np.array(seqs, dtype=str),
  scores=np.array(ys))``. Arrays named by ``sequence_column`` / ``score_column`` are accepted too.
* ``.npy``: one structured array with a string field ``sequence`` and a numeric field ``score``
  (or the fields named by the column options), e.g. ``np.save("data.npy", np.array(list(zip(seqs,
  ys)), dtype=[("sequence", "U64"), ("score", "f8")]))``.

Files are read without pickle, so object arrays are refused (save strings as ``dtype=str``).
All sequences must have one length. Letters are used as written (case matters); the alphabet is
either given or the sorted set of letters seen. ``y_min`` / ``y_max`` are the offline min / max.

A CSV must be UTF-8 text (a BOM is allowed); a file in another encoding (Latin-1, say) or a binary
file is refused in one line, since guessing an encoding would silently change letters.

What the reader warns about (:attr:`UserDataTask.warnings`; the CLI prints them), or refuses with
``strict=true``, when the alphabet is inferred: lowercase letters (``a`` and ``A`` would be two
letters, so ``CaaaNaaa`` designs appear) and letters seen at fewer than 1% of positions (an ``N`` or
``X`` of one row becomes a letter BIB designs with).

Duplicate sequences are kept once, with the mean of their scores, and a warning when the scores
differ. Why average rather than refuse: in assay data a sequence measured twice is usually a
replicate measurement, whose mean is the better estimate of its score; keeping both rows would give
the forward ridge fit two contradicting targets at one input and weight that sequence twice.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from pathlib import Path

import numpy as np

from bib_ray.errors import BibInputError
from bib_ray.tasks.base import Task, validate_offline

CSV_EXTENSIONS = (".csv",)
NUMPY_EXTENSIONS = (".npz", ".npy")
RARE_LETTER_SHARE = 0.01  # a letter at fewer than 1% of all positions is reported (an N, an X, a typo)


def _csv_text(path: Path) -> str:
    """The file as text, or one input error saying it is binary or not UTF-8 (never a guessed encoding)."""
    data = path.read_bytes()
    if b"\0" in data:
        raise BibInputError("path", f"{path} is a binary file, not CSV text",
                            "give a UTF-8 CSV with a header line (sequence,score), or a .npz/.npy file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise BibInputError("path", f"{path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
                            f"{err.start}; Latin-1 or another encoding?)",
                            "save it as UTF-8, e.g. iconv -f latin1 -t utf-8 in.csv > out.csv") from None


def _read_csv(path: Path, sequence_column: str, score_column: str) -> tuple[list[str], list[float]]:
    """Sequences and scores from a CSV with a header; every problem names the file, row and column."""
    text = _csv_text(path)
    rows = [row for row in csv.reader(io.StringIO(text, newline="")) if any(cell.strip() for cell in row)]
    if not rows:
        raise BibInputError("path", f"{path} is empty", "give a CSV with a header line and one row per sequence")
    header = [cell.strip() for cell in rows[0]]
    for column, option in ((sequence_column, "sequence_column"), (score_column, "score_column")):
        if column not in header:
            raise BibInputError(option, f"column {column!r} not in the header of {path} (columns: "
                                f"{', '.join(header)})", f"name the column {column!r} or set {option}")
    i_seq, i_score = header.index(sequence_column), header.index(score_column)
    sequences: list[str] = []
    scores: list[float] = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) <= max(i_seq, i_score):
            raise BibInputError(score_column, f"row {line} of {path} has {len(row)} cells, fewer than the header",
                                "give every row all columns")
        text = row[i_score].strip()
        try:
            score = float(text)
        except ValueError:
            raise BibInputError(score_column, f"row {line} of {path} has score {text!r}, not a number",
                                "fix or drop that row") from None
        if not math.isfinite(score):
            raise BibInputError(score_column, f"row {line} of {path} has score {text!r} (NaN or infinite)",
                                "drop or fix that row")
        sequences.append(row[i_seq].strip())
        scores.append(score)
    return sequences, scores


def _pick(arrays: dict[str, np.ndarray], names: tuple[str, ...], option: str, path: Path) -> np.ndarray:
    """The first array of ``names`` present, else an error listing what the file holds."""
    for name in names:
        if name in arrays:
            return arrays[name]
    raise BibInputError(option, f"{path} has no array/field named {' or '.join(map(repr, names))} (it has: "
                        f"{', '.join(arrays) or 'nothing'})", f"store it under {names[0]!r} or set {option}")


def _read_numpy(path: Path, sequence_column: str, score_column: str) -> tuple[list[str], list[float]]:
    """Sequences and scores from an .npz archive or a structured .npy array (no pickle)."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise BibInputError("path", f"cannot read {path} without pickle ({err})",
                            "save sequences as a string array (dtype=str), not objects") from None
    except (OSError, EOFError) as err:
        raise BibInputError("path", f"{path} is not a readable NumPy file ({err})",
                            "write it with np.savez or np.save") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            try:
                arrays = {key: loaded[key] for key in loaded.files}
            except ValueError as err:
                raise BibInputError("path", f"cannot read {path} without pickle ({err})",
                                    "save sequences as a string array (dtype=str), not objects") from None
        seq_names, score_names = ("sequences", sequence_column), ("scores", score_column)
    else:
        fields = loaded.dtype.names or ()
        arrays = {name: loaded[name] for name in fields}
        seq_names, score_names = (sequence_column,), (score_column,)
    seqs = np.asarray(_pick(arrays, seq_names, "sequence_column", path))
    scores = np.asarray(_pick(arrays, score_names, "score_column", path))
    if seqs.size == 0 and scores.size == 0:
        raise BibInputError("path", f"{path} holds no sequences", "give at least a few scored sequences")
    if seqs.dtype.kind not in "US" or seqs.ndim != 1:
        raise BibInputError("sequence_column", f"sequences in {path} must be a 1-D string array, got "
                            f"{seqs.dtype} of shape {seqs.shape}", "save them with dtype=str")
    if scores.dtype.kind not in "iuf" or scores.ndim != 1:
        raise BibInputError("score_column", f"scores in {path} must be a 1-D numeric array, got "
                            f"{scores.dtype} of shape {scores.shape}", "save them as floats")
    if len(seqs) != len(scores):
        raise BibInputError("score_column", f"{path} has {len(seqs)} sequences but {len(scores)} scores",
                            "give one score per sequence")
    decoded = [s.decode() if isinstance(s, bytes) else str(s) for s in seqs.tolist()]
    values = scores.astype(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise BibInputError("score_column", f"{int(bad.sum())} scores in {path} are NaN or infinite (first at "
                            f"index {first})", "drop or fix those entries")
    return [s.strip() for s in decoded], values.tolist()


def merge_duplicates(sequences: list[str], scores: list[float]) -> tuple[list[str], list[float], str | None]:
    """Each sequence once (first-seen order) with the mean of its scores, and a warning naming how many
    sequences repeat with different scores (None when none does). Why the mean: see the module text."""
    groups: dict[str, list[float]] = {}
    for seq, score in zip(sequences, scores):
        groups.setdefault(seq, []).append(score)
    if len(groups) == len(sequences):
        return sequences, scores, None
    conflicting = [seq for seq, values in groups.items() if len(set(values)) > 1]
    warning = None
    if conflicting:
        example = conflicting[0]
        warning = (f"{len(conflicting)} sequences appear more than once with different scores (e.g. {example} "
                   f"scored {', '.join(f'{v:g}' for v in groups[example][:4])}); each is used once with the "
                   "mean of its scores, as replicate measurements")
    return list(groups), [float(np.mean(values)) for values in groups.values()], warning


def alphabet_problems(sequences: list[str], alphabet: str) -> list[str]:
    """What looks wrong in an inferred alphabet: lowercase letters, letters rarer than 1% of positions."""
    counts = Counter("".join(sequences))
    total = sum(counts.values())
    problems = []
    lower = [letter for letter in alphabet if letter.islower()]
    if lower:
        problems.append(f"lowercase letters {''.join(lower)!r} in the alphabet {alphabet!r} (case matters: "
                        "'a' and 'A' are two letters)")
    rare = [letter for letter in alphabet if counts[letter] < RARE_LETTER_SHARE * total]
    if rare:
        shown = ", ".join(f"{letter!r} at {counts[letter]} of {total} positions" for letter in rare)
        problems.append(f"letters rarer than {RARE_LETTER_SHARE:.0%} of positions in the alphabet {alphabet!r}: "
                        f"{shown} (an N or X placeholder?)")
    return problems


class UserDataTask(Task):
    """Offline data from a user's file; ``has_oracle`` is False, so designs cannot be scored exactly.

    ``name`` is the registry name of the format (``"csv"``, or ``"npy"`` for ``.npz``/``.npy``).
    ``warnings`` holds one line per doubtful thing in the data (the CLI prints them); with ``strict``
    an alphabet problem is an input error instead. ``alphabet_inferred`` says whether the alphabet was
    read off the data.
    """

    def __init__(self, path: str | Path, alphabet: str | None = None, sequence_column: str = "sequence",
                 score_column: str = "score", strict: bool = False) -> None:
        """Read, check and encode the file so every later step can trust the data."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise BibInputError("path", f"data file {str(path)!r} does not exist" if not path.exists()
                                else f"{str(path)!r} is not a file", "check the path")
        suffix = path.suffix.lower()
        if suffix in CSV_EXTENSIONS:
            sequences, scores = _read_csv(path, sequence_column, score_column)
            self.name = "csv"
        elif suffix in NUMPY_EXTENSIONS:
            sequences, scores = _read_numpy(path, sequence_column, score_column)
            self.name = "npy"
        else:
            raise BibInputError("path", f"unknown data file extension {path.suffix!r} of {path}",
                                "use a .csv, .npz or .npy file")
        if not sequences:
            raise BibInputError("path", f"{path} has a header but no data rows", "add scored sequences")
        lengths = {len(s) for s in sequences}
        if 0 in lengths:
            row = [len(s) for s in sequences].index(0)
            raise BibInputError(sequence_column, f"sequence {row} in {path} is empty", "drop or fix that row")
        if len(lengths) > 1:
            first = len(sequences[0])
            row = next(i for i, s in enumerate(sequences) if len(s) != first)
            raise BibInputError(sequence_column, f"sequences in {path} have unequal lengths ({sorted(lengths)}); "
                                f"sequence {row} has length {len(sequences[row])}, sequence 0 has {first}",
                                "give sequences of one length (pad or trim them)")
        sequences, scores, duplicates = merge_duplicates(sequences, scores)
        self.warnings: list[str] = [duplicates] if duplicates else []
        self.alphabet_inferred = alphabet is None
        if alphabet is None:
            alphabet = "".join(sorted(set("".join(sequences))))
            problems = alphabet_problems(sequences, alphabet)
            if problems and strict:
                raise BibInputError("alphabet", f"{path}: {problems[0]}",
                                    "fix the data, or state the letters with alphabet= to accept them")
            self.warnings += [f"{path}: {problem}" for problem in problems]
        elif not alphabet or len(set(alphabet)) != len(alphabet):
            raise BibInputError("alphabet", f"alphabet {alphabet!r} is empty or repeats a letter",
                                "give each letter once, e.g. ACGT")
        self.path = path
        self.alphabet = alphabet
        self.length = lengths.pop()
        self.default_steps = 100 if len(alphabet) <= 4 else 25
        x = self.encode(sequences, field=sequence_column)
        y = np.asarray(scores, dtype=np.float64)
        validate_offline(x, y, field=str(path))
        x.setflags(write=False)
        y.setflags(write=False)
        self.offline_x, self.offline_y = x, y
        self.y_min = float(y.min())
        self.y_max = float(y.max())

    @property
    def has_oracle(self) -> bool:
        """User data have no ground-truth function: designs can be proposed but not scored exactly."""
        return False

    def oracle(self, x: np.ndarray) -> np.ndarray:
        """Always an input error: there is nothing to score designs with for user data."""
        raise BibInputError("task", f"the {self.name!r} task from {self.path} has no oracle, so designs "
                            "cannot be scored", "score the designs in the lab, or use a benchmark task "
                            "(tfbind8, aav, ehrlich) to measure a method")
