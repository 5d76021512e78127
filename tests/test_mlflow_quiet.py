"""bib-ray commands do not print MLflow's own "View run ... / View experiment at ..." lines (two per run
ended on a tracking server), checked against a real server on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from mlflow_server import mlflow_server  # noqa: F401  (pytest finds it by name)

SCRIPT = textwrap.dedent("""
    import sys
    from bib_ray.tracking.store import Store
    if sys.argv[2] == "cli":
        from bib_ray.cli import main
        main(["tasks"])  # any bib-ray command sets up the process the same way
    store = Store(sys.argv[1], "quiet")
    store.set_status(store.create_run("one", {}), "FINISHED")
    print("done")
""")


def _ended_run_output(uri: str, mode: str, cwd) -> str:
    # An earlier in-process bib-ray command may have set MLflow's switch in this process: the child starts
    # without it, so "plain" is MLflow left alone whatever ran before.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, uri, mode], text=True, capture_output=True, cwd=cwd,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_no_view_run_lines_from_bib_ray(mlflow_server, tmp_path):
    plain = _ended_run_output(mlflow_server, "plain", tmp_path)
    assert "View run one at" in plain  # MLflow's client prints them when left alone
    quiet = _ended_run_output(mlflow_server, "cli", tmp_path)
    assert "done" in quiet and "View run" not in quiet and "View experiment" not in quiet
