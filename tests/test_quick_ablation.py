"""The README's first command, the shipped file itself: ``bib-ray ablate ablations/quick.yaml``.

Slow (about 3 to 5 minutes on 2 CPU cores: three default LMs pre-trained, 24 cells of 100 steps), so
scripts/run_slow_tests.sh runs it. The other tests only validate the file; this one runs it unchanged in
a fresh folder and cache, and checks what the README shows: the comparison table with every variant on
6 replicates, the paired differences against ``fixed``, and one FINISHED MLflow child per cell.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers import assert_no_run_running, run_cli

QUICK = Path(__file__).resolve().parents[1] / "ablations" / "quick.yaml"


@pytest.mark.slow
def test_the_readme_first_command_runs_the_shipped_plan(tmp_path):
    plan = yaml.safe_load(QUICK.read_text())
    proc = run_cli(["ablate", str(QUICK)], cwd=tmp_path, env={"BIB_RAY_CACHE": str(tmp_path / "cache")},
                   timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    replicates = len(plan["lm_seeds"]) * len(plan["seeds"])
    variants = plan["variants"] + (["grad"] if plan["baseline"] else [])
    for variant in variants:
        assert f"| tfbind8 | {variant} | {len(plan['lm_seeds'])}x{len(plan['seeds'])} |" in proc.stdout \
            or f"| tfbind8 | {variant} | {replicates} |" in proc.stdout, (variant, proc.stdout[-3000:])
    assert "variant - fixed" in proc.stdout
    db = tmp_path / "mlruns.db"  # the default store, in the working folder
    assert assert_no_run_running(db) == len(variants) * replicates + 1  # the cells and their parent
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name(plan["name"])
    children = [c for c in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in c.data.tags]
    assert len(children) == len(variants) * replicates and {c.info.status for c in children} == {"FINISHED"}
    assert len({c.data.tags["lm_seed"] for c in children}) == len(plan["lm_seeds"])
