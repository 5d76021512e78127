"""The README's first command, the shipped ablations/quick.yaml unchanged, runs as README shows, and gives
the same verdicts on a second CPU kernel path (slow: two full runs).

Digits differ across CPUs: another kernel path pre-trains the default LM to other weights, and BIB's
straight-through argmax turns rounding differences into other designs. A verdict that changes with the
kernel path is not a verdict, so the README's plan must give the same verdict column on both paths, each on
an empty cache of its own. The comparison reads the two conclusions.csv files with the csv module here,
not through bib-ray's own reader. The first run (this CPU's own path, in a fresh folder with the default
store) is also checked for what README shows of the command: the comparison table with every variant on
its replicates, the paired differences against ``fixed``, and one FINISHED MLflow child per cell.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import assert_no_run_running, run_cli

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "ablations" / "quick.yaml"


def other_kernel_path() -> str | None:
    """AVX2 on an AVX-512 machine, the scalar kernels on an AVX2 one, None where there is no second path."""
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                           capture_output=True, text=True, check=True)
    capability = probe.stdout.strip()
    return "avx2" if "AVX512" in capability else "default" if "AVX2" in capability else None


def _verdicts(path: Path) -> dict[tuple[str, str, str], str]:
    with path.open(newline="") as handle:
        return {(r["task"], r["variant"], r["metric"]): r["verdict"] for r in csv.DictReader(handle)}


def _check_readme_first_command(folder: Path, stdout: str) -> None:
    plan = yaml.safe_load(QUICK.read_text())
    replicates = len(plan["lm_seeds"]) * len(plan["seeds"])
    variants = plan["variants"] + (["grad"] if plan["baseline"] else [])
    for variant in variants:
        assert f"| tfbind8 | {variant} | {len(plan['lm_seeds'])}x{len(plan['seeds'])} |" in stdout \
            or f"| tfbind8 | {variant} | {replicates} |" in stdout, (variant, stdout[-3000:])
    assert "variant - fixed" in stdout
    db = folder / "mlruns.db"  # the default store, in the working folder
    assert assert_no_run_running(db) == len(variants) * replicates + 1  # the cells and their parent
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name(plan["name"])
    children = [c for c in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in c.data.tags]
    assert len(children) == len(variants) * replicates and {c.info.status for c in children} == {"FINISHED"}
    assert len({c.data.tags["lm_seed"] for c in children}) == len(plan["lm_seeds"])


@pytest.mark.slow
def test_quick_plan_runs_as_readme_shows_and_its_verdicts_agree_on_two_kernel_paths(tmp_path):
    other = other_kernel_path()
    results = {}
    for name, env in (("native", {}), (other, {"ATEN_CPU_CAPABILITY": other})):
        if name is None:  # checked above on this CPU's path; the comparison needs a second one
            pytest.skip("this CPU has only the scalar kernel path: no second path to compare")
        folder = tmp_path / name
        folder.mkdir()
        proc = run_cli(["ablate", str(QUICK), "--output", "report"], cwd=folder,
                       env={**env, "BIB_RAY_CACHE": str(folder / "cache")}, timeout=3000)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[name] = _verdicts(folder / "report" / "conclusions.csv")
        assert "| task | variant - reference | metric |" in proc.stdout
        if name == "native":
            _check_readme_first_command(folder, proc.stdout)
    native, second = results["native"], results[other]
    assert set(native) == set(second) and native
    differing = {k: (native[k], second[k]) for k in native if native[k] != second[k]}
    assert not differing, differing
    # The LMs really differed between the paths (else this test would prove nothing).
    fingerprints = {}
    for name in results:
        fingerprints[name] = sorted(p.name for p in (tmp_path / name / "cache" / "lm").iterdir())
    assert fingerprints["native"] == fingerprints[other]  # the same cache keys (same recipes) ...
    weights = [(tmp_path / name / "cache" / "lm" / fingerprints[name][0] / "model.safetensors").read_bytes()
               for name in results]
    assert weights[0] != weights[1]  # ... but other weights: the kernel path changed the numbers
