"""The Ray cluster launcher files, checked with Ray's own `ray up` code.

`ray up FILE` calls ``ray.autoscaler._private.commands.create_or_update_cluster``,
which loads the YAML, looks up the node provider, reads ``cluster_name`` and
then runs ``_bootstrap_config``:

1. ``prepare_config`` -- for ``provider.type: local`` first ``prepare_local``
   (builds the single ``local.cluster.node`` type, min/max workers from
   ``worker_ips``); then ``fillout_defaults`` (provider's defaults.yaml),
   ``merge_setup_commands``, ``validate_docker_config``,
   ``fill_node_type_min_max_workers``;
2. ``provider.fillout_available_node_types_resources`` (AWS: calls EC2
   DescribeInstanceTypes);
3. ``validate_config`` -- JSON schema ``ray/autoscaler/ray-schema.json`` plus
   Ray's cross-field checks (head type exists, sum of min_workers, ...);
4. ``provider.bootstrap_config`` (AWS: IAM role, key pair, VPC, subnets,
   security groups);

then ``try_logging_config`` (prints what step 4 resolved on AWS) and
``get_or_create_head_node`` (launches / SSHes into machines).

The ``ray_up`` fixture runs that very function on the files. Only what needs
the network is replaced: the AWS provider by Ray's base ``NodeProvider``
(whose steps 2 and 4 return the config unchanged -- the files declare
resources explicitly), ``try_logging_config`` by a no-op and
``get_or_create_head_node`` by a function that records the final config. The
local provider runs unmodified (its steps 2 and 4 need no network). A spy on
``validate_config`` proves step 3 ran. Nothing contacts AWS or any machine.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")  # Ray's validate_config needs it

from ray.autoscaler._private import commands  # noqa: E402
from ray.autoscaler._private.providers import _NODE_PROVIDERS  # noqa: E402
from ray.autoscaler._private.util import validate_config  # noqa: E402
from ray.autoscaler.node_provider import NodeProvider  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AWS = ROOT / "ray_cluster.yaml"
ONPREM = ROOT / "ray_cluster_onprem.yaml"
FILES = {"aws": AWS, "onprem": ONPREM}

TORCH_INSTALL = "pip install torch==2.13.0"
PROJECT_MOUNT = "~/bib_ray"
PROJECT_INSTALL = f"pip install -e {PROJECT_MOUNT}"
HEAD_START = (
    "ray start --head --port=6379 --dashboard-host=0.0.0.0 "
    "--autoscaling-config=~/ray_bootstrap_config.yaml"
)
WORKER_START = "ray start --address=$RAY_HEAD_IP:6379"

# vCPUs / GPUs of the EC2 instance types a node type may use. A node type must
# not advertise more than its instance has (a trial would wait forever for a
# GPU that is not there). Add a row when switching to another instance type.
EC2_CAPACITY = {
    "m5.xlarge": {"CPU": 4},
    "m5.2xlarge": {"CPU": 8},
    "m5.4xlarge": {"CPU": 16},
    "g4dn.xlarge": {"CPU": 4, "GPU": 1},
    "g5.xlarge": {"CPU": 4, "GPU": 1},
    "g5.2xlarge": {"CPU": 8, "GPU": 1},
    "g6.xlarge": {"CPU": 4, "GPU": 1},
}


def load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


@pytest.fixture
def ray_up(monkeypatch):
    """``ray up`` up to (not including) launching the head node; returns the
    config that would be launched."""
    seen: dict = {}

    def record_head_launch(config, *args, **kwargs):
        seen["launched"] = config

    def spy_validate_config(config):
        seen["validated"] = True
        return validate_config(config)

    monkeypatch.setattr(commands, "get_or_create_head_node", record_head_launch)
    monkeypatch.setattr(commands, "try_logging_config", lambda config: None)
    monkeypatch.setattr(commands, "validate_config", spy_validate_config)
    monkeypatch.setitem(_NODE_PROVIDERS, "aws", lambda provider_config: NodeProvider)

    def run(path: Path) -> dict:
        seen.clear()
        try:
            config = commands.create_or_update_cluster(
                str(path),
                override_min_workers=None,
                override_max_workers=None,
                no_restart=False,
                restart_only=False,
                yes=True,
                no_config_cache=True,  # no cache file read or written in /tmp
            )
        finally:
            run.validated = seen.get("validated", False)
        assert run.validated, "ray up's validate_config did not run"
        assert seen["launched"] is config
        return config

    run.validated = False
    return run


# --------------------------------------------------------------------------
# Both files pass.


@pytest.mark.parametrize("name", FILES)
def test_ray_up_accepts_file(ray_up, name):
    config = ray_up(FILES[name])
    assert config["cluster_name"] == load(FILES[name])["cluster_name"]
    assert config["head_node_type"] in config["available_node_types"]


@pytest.mark.parametrize("name", FILES)
def test_file_as_written_matches_ray_schema(name):
    """Stricter than ray up: the raw file (before Ray fills in defaults) is
    already a complete config by Ray's schema and checks."""
    validate_config(load(FILES[name]))


# --------------------------------------------------------------------------
# Broken copies are not tested here: that Ray's ``validate_config`` rejects a file without
# ``cluster_name``, with ``max_workers: "many"`` or a fractional GPU resource is Ray's behaviour on
# files bib-ray never ships (issue 25: a control of a framework is a comment, not a test). What
# bib-ray ships is held to that schema above, before Ray fills in defaults.


# --------------------------------------------------------------------------
# Install: torch 2.13.0 first, then this project from the synced source.


@pytest.mark.parametrize("name", FILES)
def test_setup_installs_torch_then_project(ray_up, name):
    raw = load(FILES[name])
    setup = raw["setup_commands"]
    assert setup[0] == TORCH_INSTALL
    assert PROJECT_INSTALL in setup
    assert setup.index(TORCH_INSTALL) < setup.index(PROJECT_INSTALL)
    # `pip install -e ~/bib_ray` of the directory `ray up` runs in: the repo
    # root that holds this file and the bib-ray pyproject.toml.
    assert raw["file_mounts"] == {PROJECT_MOUNT: "."}
    assert FILES[name].parent == ROOT
    assert re.search(r'^name\s*=\s*"bib-ray"', (ROOT / "pyproject.toml").read_text(), re.M)
    # After ray up merges the command lists, head and workers both run it.
    config = ray_up(FILES[name])
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert config[key][: len(setup)] == setup


def test_readme_install_matches_cluster_install():
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README.md not written yet")
    text = readme.read_text()
    pins = set(re.findall(r"pip install torch==([0-9][\w.+]*)", text))
    assert pins == {"2.13.0"}, f"README pins torch {pins}; cluster files pin 2.13.0"
    # The cluster runs `pip install -e ~/bib_ray` on the synced repo root,
    # i.e. the README's `pip install -e .` (extras allowed).
    assert re.search(r"""pip install -e ["']?\.(\[[\w,-]+\])?["']?(\s|$)""", text), (
        "README's project install is no longer `pip install -e .`; update "
        "setup_commands of ray_cluster*.yaml to match"
    )


def test_same_ray_version_everywhere():
    aws_docker = load(AWS)["docker"]
    images = [aws_docker["image"], aws_docker["head_image"]]
    versions = {re.match(r"rayproject/ray:(\d+\.\d+\.\d+)-py", i).group(1) for i in images}
    (pin,) = re.findall(r'ray\[default\]==([\d.]+)', " ".join(load(ONPREM)["setup_commands"]))
    assert versions == {pin}
    assert aws_docker["image"].endswith("-gpu") and aws_docker["head_image"].endswith("-cpu")


# --------------------------------------------------------------------------
# Node types and resources.


def _well_formed(resources):
    assert isinstance(resources, dict)
    for key, value in resources.items():
        assert isinstance(key, str) and key
        assert isinstance(value, int) and not isinstance(value, bool) and value >= 0, (
            f"resource {key}={value!r}: Ray wants a whole, non-negative number"
        )


def test_aws_nodes(ray_up):
    config = ray_up(AWS)
    assert config["provider"] == {
        **config["provider"],
        "type": "aws",
        "region": "us-west-2",
    }
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    assert head["max_workers"] == 0

    workers = {n: t for n, t in types.items() if n != config["head_node_type"]}
    gpu_workers = {n: t for n, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu_workers, "no worker node type declares a GPU"
    for node in gpu_workers.values():
        assert node["min_workers"] == 0, "GPU workers scale from zero"
        assert 1 <= node["max_workers"] <= config["max_workers"]
        # four {cpu: 1, gpu: 0.25} trials per GPU need 4 CPUs per GPU
        assert node["resources"]["CPU"] >= 4 * node["resources"]["GPU"]

    for name, node in types.items():
        _well_formed(node["resources"])
        instance = node["node_config"]["InstanceType"]
        assert instance in EC2_CAPACITY, f"{name}: add {instance} to EC2_CAPACITY"
        for key, value in node["resources"].items():
            if key in ("CPU", "GPU"):
                assert value <= EC2_CAPACITY[instance].get(key, 0), (
                    f"{name} advertises {key}={value}, {instance} has "
                    f"{EC2_CAPACITY[instance].get(key, 0)}"
                )
        assert node["node_config"]["ImageId"], f"{name}: no AMI"


def test_onprem_nodes(ray_up):
    raw = load(ONPREM)
    config = ray_up(ONPREM)
    assert config["provider"]["type"] == "local"
    assert raw["provider"]["head_ip"] and raw["provider"]["worker_ips"]
    (node,) = config["available_node_types"].values()
    # resources are left to Ray's own detection on each machine (GPUs included)
    _well_formed(node["resources"])
    assert node["max_workers"] == len(raw["provider"]["worker_ips"])


# --------------------------------------------------------------------------
# Start commands and the documented commands.


@pytest.mark.parametrize("name", FILES)
def test_start_commands(name):
    raw = load(FILES[name])
    head, worker = raw["head_start_ray_commands"], raw["worker_start_ray_commands"]
    assert head[0] == "ray stop" and worker[0] == "ray stop"
    assert any(HEAD_START in cmd for cmd in head[1:])
    assert any(WORKER_START in cmd for cmd in worker[1:])



def test_onprem_head_runs_the_v1_autoscaler():
    """`ray up` (Ray >= 2.50) exports RAY_enable_autoscaler_v2=1 before the head's start command; with the
    local provider v2 never started the worker_ips (scripts/e2e_cluster.sh found it), so the on-prem
    head's `ray start` sets it back to 0 for itself, after ray up's export."""
    head = load(ONPREM)["head_start_ray_commands"]
    start = next(cmd for cmd in head if HEAD_START in cmd)
    assert "RAY_enable_autoscaler_v2=0 ray start --head" in start

@pytest.mark.parametrize("name", FILES)
def test_header_lists_the_commands(name):
    path = FILES[name]
    header = path.read_text().split("\ncluster_name:")[0]
    for command in (
        f"ray up {path.name}",
        f"ray dashboard {path.name}",
        "ray job submit --address http://127.0.0.1:8265 --working-dir . --",
        "bib-ray search search_spaces/bib_default.yaml --address auto",
        "--tracking-uri",
        f"ray attach {path.name} -p 5000",
        "mlflow ui --backend-store-uri sqlite:///mlruns.db --host 0.0.0.0",
        f"ray down {path.name}",
    ):
        assert command in header, f"{path.name}: header lacks {command!r}"
