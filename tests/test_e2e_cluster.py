"""`ray up` for real on two namespace hosts: runs scripts/e2e_cluster.sh (slow, root only).

The script launches ray_cluster_onprem.yaml over SSH, runs a search and an ablation across both hosts,
loses the worker host mid-search and the head host (with its driver) mid-ablation, and prints
``runs_lost=<n>`` as its last line. Run it with ``python -m pytest -q -m slow tests/test_e2e_cluster.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "e2e_cluster.sh"


@pytest.mark.slow
def test_ray_up_two_hosts_loses_no_run():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (network namespaces, sshd)")
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "runs_lost=0", proc.stdout[-3000:]
    text = proc.stdout
    assert "ray status: 2 nodes" in text
    assert '"retried": 0' not in text.split("search after worker loss:")[1].splitlines()[0]
    assert "ablation resumed after head loss:" in text
