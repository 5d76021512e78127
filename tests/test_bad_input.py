"""One table of bad inputs across run, pretrain, search, ablate and report.

Every case: exit code 2, exactly one line on stderr that starts ``bib-ray: error:`` and names the
field or file, no traceback, and no MLflow run left RUNNING. Each case that passed is recorded, and the
session's closing summary prints the count (conftest.py).
"""

from __future__ import annotations

import pytest
import torch
import yaml

from bib_ray.cli import main

from helpers import TINY_BASE, error_line_problems

GOOD_CSV = "sequence,score\n" + "".join(f"{s},{i}\n" for i, s in enumerate(
    ["ACGT", "AGGT", "ACCT", "TCGT", "ACGA", "GCGT", "ACTT", "AAGT", "CCGT", "ACGG"]))
SPACE = {"name": "bad_space", "base": TINY_BASE, "trials": 2,
         "params": {"engine.lr": {"type": "loguniform", "low": 0.01, "high": 1.0}}}
PLAN = {"name": "bad_plan", "base": TINY_BASE, "variants": ["forward"], "adaptive_eta": [False],
        "baseline": False, "seeds": [0]}


def _yaml(data) -> str:
    return yaml.safe_dump(data)


# (id, argv, files to write, text the error line must contain)
CASES = [
    ("run-unknown-task", ["run", "--task", "tfbind9"], {}, "tfbind9"),
    ("run-unknown-variant", ["run", "--variant", "sideways"], {}, "variant"),
    ("run-letter-outside-alphabet", ["run", "--task", "csv", "--data", "d.csv", "--task-option", "alphabet=ACG"],
     {"d.csv": GOOD_CSV}, "'T'"),
    ("run-nan-score", ["run", "--task", "csv", "--data", "d.csv"], {"d.csv": GOOD_CSV.replace(",3\n", ",nan\n")},
     "NaN"),
    ("run-inf-score", ["run", "--task", "csv", "--data", "d.csv"], {"d.csv": GOOD_CSV.replace(",4\n", ",inf\n")},
     "infinite"),
    ("run-unequal-lengths", ["run", "--task", "csv", "--data", "d.csv"], {"d.csv": GOOD_CSV.replace("ACGG", "ACGGA")},
     "length"),
    ("run-empty-file", ["run", "--task", "csv", "--data", "d.csv"], {"d.csv": ""}, "d.csv"),
    ("run-too-small", ["run", "--task", "csv", "--data", "d.csv"], {"d.csv": "sequence,score\nAC,1\nAG,2\n"},
     "at least"),
    ("run-missing-data-file", ["run", "--task", "csv", "--data", "nope.csv"], {}, "nope.csv"),
    ("run-designs-over-offline", ["run", "--task", "csv", "--data", "d.csv", "--designs", "50"],
     {"d.csv": GOOD_CSV}, "designs"),
    ("run-lm-path-missing", ["run", "--lm", "./no/such/model"], {}, "lm"),
    ("run-config-missing", ["run", "--config", "missing.yaml"], {}, "missing.yaml"),
    ("run-config-unknown-key", ["run", "--config", "c.yaml"], {"c.yaml": _yaml({"engine": {"learning_rate": 1}})},
     "learning_rate"),
    ("run-config-bad-yaml", ["run", "--config", "c.yaml"], {"c.yaml": "engine: [unclosed\n"}, "YAML"),
    ("run-config-bad-type", ["run", "--config", "c.yaml"], {"c.yaml": _yaml({"engine": {"lr": "fast"}})},
     "engine.lr"),
    ("run-steps-zero", ["run", "--steps", "0"], {}, "engine.steps"),
    ("run-steps-not-int", ["run", "--steps", "many"], {}, "--steps"),
    ("run-task-option-format", ["run", "--task", "aav", "--task-option", "start"], {}, "--task-option"),
    ("run-aav-window", ["run", "--task", "aav", "--task-option", "start=900"], {}, "start"),
    ("pretrain-unknown-task", ["pretrain", "--task", "rna9"], {}, "rna9"),
    ("pretrain-negative-budget", ["pretrain", "--pretrain-steps", "-5"], {}, "lm_pretrain.steps"),
    ("search-missing-file", ["search", "nope.yaml"], {}, "nope.yaml"),
    ("search-unknown-key", ["search", "s.yaml"], {"s.yaml": _yaml({**SPACE, "colour": "red"})}, "colour"),
    ("search-low-above-high", ["search", "s.yaml"],
     {"s.yaml": _yaml({**SPACE, "params": {"engine.lr": {"type": "uniform", "low": 1.0, "high": 0.1}}})}, "engine.lr"),
    ("search-loguniform-zero", ["search", "s.yaml"],
     {"s.yaml": _yaml({**SPACE, "params": {"engine.lr": {"type": "loguniform", "low": 0.0, "high": 1.0}}})},
     "engine.lr"),
    ("search-unknown-metric", ["search", "s.yaml"], {"s.yaml": _yaml({**SPACE, "metric": "auc"})}, "metric"),
    ("search-oracle-metric-no-oracle", ["search", "s.yaml"],
     {"s.yaml": _yaml({**SPACE, "base": {**TINY_BASE, "task": {"name": "csv", "options": {"path": "d.csv"}}},
                       "metric": "oracle_max"}), "d.csv": GOOD_CSV}, "metric"),
    ("search-wrong-type", ["search", "s.yaml"], {"s.yaml": _yaml({**SPACE, "trials": "lots"})}, "trials"),
    ("ablate-unknown-variant", ["ablate", "p.yaml"], {"p.yaml": _yaml({**PLAN, "variants": ["sideways"]})},
     "variants"),
    ("ablate-bad-override", ["ablate", "p.yaml"],
     {"p.yaml": _yaml({**PLAN, "overrides": [{"set": {"engine.warp": 9}}]})}, "overrides"),
    ("ablate-base-from-missing", ["ablate", "p.yaml"], {"p.yaml": _yaml({**PLAN, "base_from": "best.yaml"})},
     "best.yaml"),
    ("report-unknown-name", ["report", "never_ran", "--tracking-uri", "sqlite:///m.db"], {"m.db": None}, "never_ran"),
    ("report-store-folder-missing", ["report", "x", "--tracking-uri", "sqlite:///no/such/dir/m.db"], {},
     "tracking-uri"),
]
if not torch.cuda.is_available():
    CASES.append(("run-cuda-without-gpu", ["run", "--device", "cuda"], {}, "device"))

@pytest.mark.parametrize("case_id,argv,files,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case_id, argv, files, needle, tmp_path, monkeypatch, capsys, observed):
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        if text is None:
            from bib_ray.tracking.store import Store

            Store(f"sqlite:///{tmp_path / name}", "existing")  # an existing, empty store
        else:
            (tmp_path / name).write_text(text)
    argv = argv + ([] if argv[0] in ("run", "pretrain", "report") else ["--tracking-uri", f"sqlite:///{tmp_path}/t.db"])
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    problems = error_line_problems(code, err, needle)
    for db in tmp_path.glob("*.db"):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{db}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        if [r for r in runs if r.info.status == "RUNNING"]:
            problems.append(f"a run left RUNNING in {db.name}")
    observed.record_case("bad-input cases", argv[0], problems)  # counted before the verdict, so it can fail
    assert not problems, (case_id, problems)

