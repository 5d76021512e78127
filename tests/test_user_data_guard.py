"""A user's CSV that is not text, or whose letters or scores look wrong: one clear line, never a guess.

Not UTF-8 (Latin-1, a binary file): one line naming the file, exit 2. An inferred alphabet is printed
and recorded in result.json; lowercase and rare letters are warned about (refused with --strict);
duplicate sequences are averaged, with a warning when their scores conflict.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bib_ray.cli import main
from bib_ray.errors import BibInputError
from bib_ray.tasks import make_task
from bib_ray.tasks.user_data import UserDataTask

from helpers import assert_one_line_error, run_cli


def _rows(n: int = 40, seed: int = 0) -> list[tuple[str, float]]:
    rng = np.random.default_rng(seed)
    seqs = {"".join(rng.choice(list("ACGT"), 6)) for _ in range(4 * n)}
    return [(s, float(i) / 3) for i, s in enumerate(sorted(seqs)[:n])]


def _write(path, rows, encoding: str = "utf-8") -> str:
    path.write_bytes(("sequence,score\n" + "".join(f"{s},{v}\n" for s, v in rows)).encode(encoding))
    return str(path)


def test_latin1_csv_is_one_line_exit_2(tmp_path):
    rows = _rows()
    rows[3] = ("ACGTAC", 1.5)
    path = tmp_path / "latin1.csv"
    path.write_bytes(("sequence,score,note\n" + "".join(f"{s},{v},caf\u00e9\n" for s, v in rows)).encode("latin-1"))
    with pytest.raises(BibInputError, match="not UTF-8 text"):
        UserDataTask(path)
    proc = run_cli(["run", "--task", "csv", "--data", str(path)], cwd=tmp_path)
    assert_one_line_error(proc, "latin1.csv", "not UTF-8", "0xe9", "iconv")


def test_binary_file_is_one_line_exit_2(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"sequence,score\n" + bytes(range(256)) * 4)
    proc = run_cli(["pretrain", "--task", "csv", "--data", str(path)], cwd=tmp_path)
    assert_one_line_error(proc, "data.csv", "binary file")


def test_utf8_with_bom_still_reads(tmp_path):
    path = _write(tmp_path / "bom.csv", _rows(), encoding="utf-8-sig")
    assert UserDataTask(path).alphabet == "ACGT"


def test_lowercase_and_rare_letters_are_warned(tmp_path):
    rows = _rows(60)
    rows[0] = ("CaaaNa", 0.0)  # one row with lowercase and an N: 'N' at 1 of 360 positions
    task = UserDataTask(_write(tmp_path / "mixed.csv", rows))
    assert task.alphabet_inferred and task.alphabet == "ACGNTa"
    text = " | ".join(task.warnings)
    assert "lowercase letters 'a'" in text
    assert "'N' at 1 of 360 positions" in text
    assert "'a' at" not in text  # 4 of 360 positions: above 1%
    clean = UserDataTask(_write(tmp_path / "clean.csv", _rows(60)))
    assert clean.warnings == []


def test_strict_refuses_what_is_otherwise_warned(tmp_path):
    rows = _rows(60)
    rows[0] = ("ACGTNA", 0.0)
    path = _write(tmp_path / "rare.csv", rows)
    with pytest.raises(BibInputError, match="rarer than 1%"):
        make_task("csv", path=path, strict="true")
    assert make_task("csv", path=path, strict="false").alphabet == "ACGNT"
    with pytest.raises(BibInputError, match="true or false"):
        make_task("csv", path=path, strict="maybe")
    # a given alphabet is the user's statement of the letters: no complaint
    assert make_task("csv", path=path, alphabet="ACGTN", strict=True).warnings == []
    proc = run_cli(["run", "--task", "csv", "--data", path, "--strict"], cwd=tmp_path)
    assert_one_line_error(proc, "alphabet", "'N' at 1 of 360 positions")


def test_duplicates_with_conflicting_scores_are_averaged(tmp_path):
    rows = _rows(20)
    rows += [(rows[0][0], 10.0), (rows[1][0], rows[1][1])]  # one conflicting, one identical duplicate
    task = UserDataTask(_write(tmp_path / "dup.csv", rows))
    assert len(task.offline_y) == 20
    seqs = task.decode(task.offline_x)
    assert task.offline_y[seqs.index(rows[0][0])] == pytest.approx((rows[0][1] + 10.0) / 2)
    assert task.offline_y[seqs.index(rows[1][0])] == pytest.approx(rows[1][1])
    assert len(task.warnings) == 1 and "1 sequences appear more than once with different scores" in task.warnings[0]
    assert "mean" in task.warnings[0]


def test_run_prints_and_records_the_inferred_alphabet(tmp_path, capsys):
    from bib_ray.proxy.small_lm import SmallLMConfig, build_small_bert

    rows = _rows(60)
    rows[0] = ("ACGTNA", 0.0)
    path = _write(tmp_path / "data.csv", rows)
    lm_dir = tmp_path / "lm"
    model, tokenizer = build_small_bert("ACGNT", SmallLMConfig(hidden=16, layers=1, heads=2, intermediate=32), 16)
    model.save_pretrained(lm_dir)
    tokenizer.save_pretrained(lm_dir)
    out = tmp_path / "out"
    code = main(["run", "--task", "csv", "--data", path, "--lm", str(lm_dir), "--steps", "2", "--designs", "4",
                 "--output", str(out), "--no-progress"])
    assert code == 0
    err = capsys.readouterr().err
    assert "bib-ray: data: alphabet ACGNT (5 letters, inferred from" in err
    assert "bib-ray: warning:" in err and "'N' at 1 of 360" in err
    result = json.loads((out / "result.json").read_text())
    assert result["alphabet"] == "ACGNT"
