"""A real two-node Ray cluster on this machine: `ray start --head`, a second node with
`ray start --address`, a search submitted with `ray job submit`, trials found on both nodes.

Each node runs as `ray start --block` in its own process, so the test stops exactly the nodes it
started, by their own process ids (SIGTERM makes `ray start --block` stop what it launched), and
never touches another Ray on the machine. Token authentication is off for this throw-away cluster.
Slow (two Ray nodes started and polled for up to 120 s each on a machine of 2 cores):
scripts/run_slow_tests.sh runs it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from helpers import TINY_BASE

RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate, timeout: float, what: str) -> None:
    start = time.time()
    while time.time() - start < timeout:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _node_ids(env: dict, gcs: str) -> dict[str, str]:
    """Custom resource name -> node id, read from the cluster itself."""
    code = ("import json, ray; ray.init(address=%r, logging_level='ERROR'); "
            "print(json.dumps({k: n['NodeID'] for n in ray.nodes() if n['Alive'] "
            "for k in n['Resources'] if k.endswith('_node')}))" % gcs)
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, text=True, capture_output=True, timeout=45)
    except subprocess.TimeoutExpired:
        return {}  # the node is not up yet
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


@pytest.fixture()
def two_nodes(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "BIB_RAY_CACHE": str(tmp_path / "cache")}
    port, dashboard = _free_port(), _free_port()
    gcs = f"127.0.0.1:{port}"
    head = subprocess.Popen([RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
                             "--resources", json.dumps({"head_node": 1}), "--include-dashboard=true",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}"], env=env, stdout=open(tmp_path / "head.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    nodes = [head]
    try:
        _wait(lambda: "head_node" in _node_ids(env, gcs), 120, "the head node")
        worker = subprocess.Popen([RAY, "start", "--block", f"--address={gcs}", "--num-cpus=1",
                                   "--resources", json.dumps({"second_node": 1})], env=env,
                                  stdout=open(tmp_path / "worker.log", "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        nodes.append(worker)
        _wait(lambda: "second_node" in _node_ids(env, gcs), 120, "the second node")
        yield env, gcs, f"http://127.0.0.1:{dashboard}", _node_ids(env, gcs)
    finally:
        for proc in reversed(nodes):  # stop the nodes this test started, by their own pids
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in nodes:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        current = Path("/tmp/ray/ray_current_cluster")  # forget our head if Ray still names it
        if current.exists() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()


@pytest.mark.slow
def test_search_spans_two_nodes(two_nodes, tmp_path):
    env, gcs, dashboard, node_ids = two_nodes
    space = {"name": "two_node_search", "base": {**TINY_BASE, "engine": {**TINY_BASE["engine"], "steps": 30}},
             "params": {"engine.lr": {"type": "loguniform", "low": 0.01, "high": 1.0}}, "trials": 4,
             "concurrency": 2, "scheduler": {"type": "none"}, "resources": {"cpu": 1, "gpu": 0}}
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "space.yaml").write_text(yaml.safe_dump(space))
    # Not --working-dir: both nodes share this machine's /tmp/ray, so the second node's clean-up of
    # its unpacked copy would delete the driver's folder too (on a real cluster nodes don't share it).
    command = (f"cd {job_dir} && bib-ray search space.yaml --address auto --tracking-uri {uri} "
               f"--storage {tmp_path / 'runs'}")
    job = subprocess.run([RAY, "job", "submit", "--address", dashboard, "--runtime-env-json",
                          json.dumps({"env_vars": {"BIB_RAY_CACHE": env["BIB_RAY_CACHE"]}}), "--", "bash", "-c",
                          command], env=env, text=True, capture_output=True, timeout=600)
    assert job.returncode == 0, job.stdout[-6000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("two_node_search")
    children = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    used = {c.data.tags["node"].split("/")[-1] for c in children}
    expected = {node_ids["head_node"][:12], node_ids["second_node"][:12]}
    assert used == expected, (used, expected)  # trials ran on both nodes
