"""Settings that make no sense are refused or warned, and what a command writes or keeps is visible:
the pre-training floor, repeated plan values, overrides that match nothing, the --output default and
--force, and what ``bib-ray cache list`` says of each LM."""

from __future__ import annotations

import json

import pytest
import yaml

from bib_ray.cli import PRETRAIN_FLOOR, main, unmatched_overrides
from bib_ray.errors import BibInputError
from bib_ray.distributed.plan import parse_plan
from bib_ray.spec import RunSpec

from helpers import TINY_BASE, assert_one_line_error, run_cli


@pytest.mark.parametrize("steps", ["0", str(PRETRAIN_FLOOR - 1)])
def test_pretrain_steps_below_the_floor_is_refused(tmp_path, steps):
    proc = run_cli(["pretrain", "--pretrain-steps", steps], cwd=tmp_path)
    assert_one_line_error(proc, "--pretrain-steps", f"floor of {PRETRAIN_FLOOR}")
    assert not (tmp_path / "cache").exists()  # nothing pre-trained or cached


def test_zero_pretrain_steps_in_a_run_file_is_refused():
    from bib_ray.runner import validate_spec

    spec = RunSpec().with_updates({"lm_pretrain.steps": 0})
    with pytest.raises(BibInputError, match="lm_pretrain.steps: 0 MLM steps would leave the default LM random"):
        validate_spec(spec)
    validate_spec(RunSpec().with_updates({"lm_pretrain.steps": 20}))  # low but trained: the run file's choice


@pytest.mark.parametrize("key,value", [("variants", ["fixed", "fixed"]), ("seeds", [0, 1, 0]),
                                       ("adaptive_eta", [True, True])])
def test_repeated_plan_values_are_refused(key, value):
    with pytest.raises(BibInputError) as err:
        parse_plan({"name": "dup", key: value}, "plan.yaml")
    assert f"{key}:" in str(err.value) and "listed more than once" in str(err.value)


def test_override_matching_no_cell_is_warned(tmp_path):
    plan = {"name": "typo", "base": TINY_BASE, "variants": ["fixed", "learned"], "seeds": [0],
            "adaptive_eta": [False],
            "overrides": [{"match": {"variant": "learned"}, "set": {"engine.lr": 0.05}},
                          {"match": {"variant": "lerned"}, "set": {"engine.lr": 0.05}},
                          {"match": {"seed": 3}, "set": {"engine.lr": 0.2}}]}
    parsed = parse_plan(plan, "plan.yaml")
    assert unmatched_overrides(parsed, parsed.base) == [1, 2]
    # through the CLI: the warnings come first, then the plan's real problem (a missing data file) stops it
    rows = "".join(f"{a}{b}{c}{d},{i}\n" for i, (a, b, c, d) in enumerate(
        (a, b, c, d) for a in "ACGT" for b in "ACGT" for c in "ACGT" for d in "ACGT"))
    (tmp_path / "data.csv").write_text("sequence,score\n" + rows)
    plan["tasks"] = [{"name": "csv", "options": {"path": str(tmp_path / name)}} for name in ("data.csv", "missing.csv")]
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    proc = run_cli(["ablate", "plan.yaml", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"], cwd=tmp_path)
    assert "bib-ray: data: alphabet ACGT (4 letters, inferred from" in proc.stderr  # the plan's own data
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("bib-ray: warning: overrides")]
    assert len(warnings) == 2, proc.stderr
    assert "overrides[1] (match variant=lerned) matches no cell" in warnings[0]
    assert "overrides[2] (match seed=3)" in warnings[1]
    assert proc.returncode == 2 and "missing.csv" in proc.stderr.splitlines()[-1], proc.stderr


def test_run_help_names_the_default_output(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "default: bib_ray_output" in " ".join(text.split()) and "--force" in text


@pytest.fixture()
def dna_lm(tmp_path):
    from bib_ray.proxy.small_lm import SmallLMConfig, build_small_bert

    model, tokenizer = build_small_bert("ACGT", SmallLMConfig(hidden=16, layers=1, heads=2, intermediate=32), 16)
    model.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    return str(tmp_path / "lm")


def test_existing_output_needs_force(tmp_path, dna_lm, capsys):
    out = tmp_path / "out"
    args = ["run", "--lm", dna_lm, "--steps", "1", "--designs", "4", "--no-progress", "--output", str(out)]
    assert main(args) == 0
    first = (out / "result.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args + ["--seed", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bib-ray: error: --output:") and "--force" in err[0]
    assert (out / "result.json").stat().st_mtime_ns == first  # untouched
    assert main(args + ["--seed", "1", "--force"]) == 0
    assert json.loads((out / "result.json").read_text())["seed"] == 1


def test_cache_list_shows_what_each_lm_was_trained_on(capsys):
    from bib_ray.cache_store import manifest_path
    from bib_ray.proxy.small_lm import SmallLMConfig, ensure_default_lm
    from bib_ray.tasks import make_task

    config = SmallLMConfig(hidden=16, layers=1, heads=2, intermediate=32, steps=3, batch_size=8, seed=7)
    path = ensure_default_lm(make_task("tfbind8", tf="FOXC1_REF_R1"), config)
    capsys.readouterr()
    assert main(["cache", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[:8] == ["KIND", "TASK", "OPTIONS", "LM", "SEED", "STEPS", "RECIPE", "LM"]
    row = next(line for line in lines if path.name in line).split()
    from bib_ray.proxy.small_lm import RECIPE_VERSION

    assert row[:6] == ["lm", "tfbind8", "tf=FOXC1_REF_R1", "7", "3", str(RECIPE_VERSION)]
    # an entry written before these were recorded: its manifest has no task options or recipe
    manifest = json.loads(manifest_path(path).read_text())
    manifest["extra"] = {"config": {"seed": 7}}
    manifest_path(path).write_text(json.dumps(manifest))
    assert main(["cache", "list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if path.name in line).split()
    assert row[:6] == ["lm", "tfbind8", "?", "7", "?", "?"]
