"""The README's first command gives the same verdicts on a second CPU kernel path (slow: two full runs).

Digits differ across CPUs: another kernel path pre-trains the default LM to other weights, and BIB's
straight-through argmax turns rounding differences into other designs. A verdict that changes with the
kernel path is not a verdict, so the README's plan must give the same verdict column on both paths, each on
an empty cache of its own. The comparison reads the two conclusions.csv files with the csv module here,
not through bib-ray's own reader.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_cli

REPO = Path(__file__).resolve().parents[1]


def other_kernel_path() -> str | None:
    """AVX2 on an AVX-512 machine, the scalar kernels on an AVX2 one, None where there is no second path."""
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                           capture_output=True, text=True, check=True)
    capability = probe.stdout.strip()
    return "avx2" if "AVX512" in capability else "default" if "AVX2" in capability else None


def _verdicts(path: Path) -> dict[tuple[str, str, str], str]:
    with path.open(newline="") as handle:
        return {(r["task"], r["variant"], r["metric"]): r["verdict"] for r in csv.DictReader(handle)}


@pytest.mark.slow
def test_quick_plan_verdicts_agree_on_two_kernel_paths(tmp_path):
    other = other_kernel_path()
    if other is None:
        pytest.skip("this CPU has only the scalar kernel path: no second path to compare")
    results = {}
    for name, env in (("native", {}), (other, {"ATEN_CPU_CAPABILITY": other})):
        folder = tmp_path / name
        folder.mkdir()
        proc = run_cli(["ablate", str(REPO / "ablations" / "quick.yaml"), "--output", "report"], cwd=folder,
                       env={**env, "BIB_RAY_CACHE": str(folder / "cache")}, timeout=3000)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[name] = _verdicts(folder / "report" / "conclusions.csv")
        assert "| task | variant - reference | metric |" in proc.stdout
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
