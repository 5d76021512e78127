"""`bib-ray run` end to end with a tiny default LM: the table, result.json and designs.csv."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from bib_ray.cli import main

from helpers import TINY_BASE

REQUIRED = ("normalized_max", "normalized_median", "normalized_mean", "best_offline_normalized",
            "mean_edit_distance", "variant", "task", "seed", "config", "trajectory")


@pytest.mark.parametrize("variant,eta", [("learned", True), ("grad", False)])
def test_run_writes_result_and_designs(tmp_path, capsys, variant, eta):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_BASE))
    args = ["run", "--config", str(tmp_path / "tiny.yaml"), "--variant", variant, "--seed", "3",
            "--output", str(tmp_path / "out"), "--no-progress"] + (["--adaptive-eta"] if eta else [])
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "normalized max" in table and "mean edit distance" in table
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    for key in REQUIRED:
        assert key in result, key
    assert result["variant"] == variant and result["seed"] == 3 and result["config"]["engine"]["adaptive_eta"] is eta
    assert len(result["trajectory"]) == 6
    for step in result["trajectory"]:
        for key in ("normalized_max", "normalized_median", "mean_edit_distance", "gamma", "eta"):
            assert key in step
    assert 0.0 <= result["normalized_median"] <= result["normalized_max"] <= 1.0
    rows = list(csv.DictReader((tmp_path / "out" / "designs.csv").open()))
    assert len(rows) == 16 and all(len(r["design"]) == 8 and r["oracle_score"] for r in rows)
    from bib_ray.tasks import make_task

    task = make_task("tfbind8")
    scores = task.oracle(task.encode([r["design"] for r in rows]))
    assert result["normalized_max"] == pytest.approx(float(task.normalize(scores).max()))


def test_run_on_user_data_without_oracle(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGT"), 6)) for _ in range(60)]
    (tmp_path / "data.csv").write_text("sequence,score\n" + "".join(f"{s},{s.count('G')}\n" for s in seqs))
    base = {**TINY_BASE, "engine": {**TINY_BASE["engine"], "designs": 8}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(base))
    code = main(["run", "--config", str(tmp_path / "tiny.yaml"), "--task", "csv", "--data", str(tmp_path / "data.csv"),
                 "--output", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    assert "no oracle" in capsys.readouterr().out
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["has_oracle"] is False and "normalized_max" not in result and "proxy_max" in result


@pytest.mark.parametrize("command", ["run", "pretrain", "search", "ablate", "report", "bench"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out
