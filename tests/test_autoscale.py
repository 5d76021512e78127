"""GPU trials on an autoscaling cluster whose GPU workers start at zero: accepted when a node type the
autoscaler may add fits one trial, refused in one line when no node type ever could."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bib_ray.distributed.autoscale import cluster_node_types, node_types_of, resource_problem
from bib_ray.distributed.tune_job import check_resources
from bib_ray.errors import BibInputError

SHIPPED = Path(__file__).resolve().parents[1] / "ray_cluster.yaml"
HEAD_ONLY = {"CPU": 8.0}  # what ray.cluster_resources() says on the shipped file before any GPU worker


def test_shipped_cluster_file_lists_its_gpu_workers():
    types = {t.name: t for t in node_types_of(yaml.safe_load(SHIPPED.read_text()))}
    assert types["ray.worker.gpu"].resources == {"CPU": 4.0, "GPU": 1.0} and types["ray.worker.gpu"].max_workers == 4


@pytest.mark.parametrize("want,problem", [
    ({"cpu": 1, "gpu": 0.25}, None),  # four trials per A10G, once the autoscaler adds one
    ({"cpu": 4, "gpu": 1}, None),  # a whole worker
    ({"cpu": 1, "gpu": 2}, ("GPU", 2.0, 0.0)),  # no node type has 2 GPUs
    ({"cpu": 5, "gpu": 1}, ("GPU", 1.0, 0.0)),  # 5 CPUs and a GPU on one node: no node type has both
    ({"cpu": 16, "gpu": 0}, ("CPU", 16.0, 8.0)),
    ({"cpu": 2, "gpu": 0}, None),  # fits the head now
])
def test_requests_against_the_shipped_file(want, problem):
    types = node_types_of(yaml.safe_load(SHIPPED.read_text()))
    assert resource_problem(want, HEAD_ONLY, types) == problem


def test_without_node_types_a_missing_gpu_is_refused_unless_autoscaling_is_declared():
    assert resource_problem({"gpu": 0.25}, HEAD_ONLY, []) == ("GPU", 0.25, 0.0)
    assert resource_problem({"gpu": 0.25}, HEAD_ONLY, [], autoscaling=True) is None
    assert resource_problem({"gpu": 0.25}, {"CPU": 8, "GPU": 1}, []) is None  # there now


def test_a_type_that_may_start_no_worker_does_not_count():
    config = {"max_workers": 0, "head_node_type": "head",
              "available_node_types": {"head": {"resources": {"CPU": 8}},
                                       "gpu": {"resources": {"CPU": 4, "GPU": 1}, "max_workers": 4}}}
    assert [t.name for t in node_types_of(config)] == ["head"]  # the cluster-wide cap is 0
    undeclared = {"available_node_types": {"gpu": {"max_workers": 4, "node_config": {"InstanceType": "g5.xlarge"}}}}
    assert node_types_of(undeclared) == []  # resources not declared: nothing to go by


def test_cluster_config_from_the_environment(tmp_path, monkeypatch):
    (tmp_path / "c.yaml").write_text(SHIPPED.read_text())
    monkeypatch.setenv("BIB_RAY_CLUSTER_CONFIG", str(tmp_path / "c.yaml"))
    types, source = cluster_node_types()
    assert source == str(tmp_path / "c.yaml") and "ray.worker.gpu" in {t.name for t in types}
    monkeypatch.setenv("BIB_RAY_CLUSTER_CONFIG", str(tmp_path / "none.yaml"))
    assert cluster_node_types() == ([], None)


def test_check_resources_names_the_field_and_the_ways_out(monkeypatch):
    monkeypatch.delenv("BIB_RAY_AUTOSCALING", raising=False)
    with pytest.raises(BibInputError) as err:
        check_resources({"cpu": 1, "gpu": 0.25}, total=HEAD_ONLY, node_types=[])
    text = str(err.value)
    assert text.startswith("resources.gpu: each trial asks 0.25 GPU but the cluster has 0")
    assert "BIB_RAY_CLUSTER_CONFIG" in text and "BIB_RAY_AUTOSCALING=1" in text
    types = node_types_of(yaml.safe_load(SHIPPED.read_text()))
    check_resources({"cpu": 1, "gpu": 0.25}, total=HEAD_ONLY, node_types=types)  # accepted
    with pytest.raises(BibInputError, match="no node type of the cluster config"):
        check_resources({"cpu": 1, "gpu": 2}, total=HEAD_ONLY, node_types=types)
    monkeypatch.setenv("BIB_RAY_AUTOSCALING", "1")
    check_resources({"cpu": 1, "gpu": 2}, total=HEAD_ONLY, node_types=types)  # the user vouches for it
