"""Can the cluster ever run a trial of this size? Now, or once the autoscaler adds a node.

Why: a trial asking ``gpu: 0.25`` on a cluster whose GPU workers start at zero (``min_workers: 0``, as
``ray_cluster.yaml`` has it) sees 0 GPUs in ``ray.cluster_resources()``; refusing it would make the
shipped cluster file unusable for GPU searches, while accepting anything would let a request that no
node could ever satisfy wait forever. Ray has no public API that tells a driver which node types its
autoscaler may add, so bib-ray reads them from the autoscaling config the cluster was started with:
``$BIB_RAY_CLUSTER_CONFIG``, else ``~/ray_bootstrap_config.yaml`` (where ``ray up`` puts the cluster
file on the head node, and which the head's ``ray start --autoscaling-config`` reads). A node type
counts when it declares its ``resources`` and may start at least one worker (``max_workers`` > 0).

``BIB_RAY_AUTOSCALING=1`` skips the check (an autoscaler configured some other way, e.g. KubeRay).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

RAY_KEYS = {"cpu": "CPU", "gpu": "GPU"}
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"


@dataclass(frozen=True)
class NodeType:
    """A node type the autoscaler may start: what one node offers, and how many it may add."""

    name: str
    resources: dict[str, float]
    max_workers: int


def node_types_of(config: Mapping[str, Any]) -> list[NodeType]:
    """The node types of a Ray cluster config (``available_node_types``) that declare resources and may
    start a node; the cluster-wide ``max_workers`` caps each type's own."""
    cap = config.get("max_workers")
    types = []
    for name, spec in (config.get("available_node_types") or {}).items():
        spec = spec or {}
        resources = {str(k): float(v) for k, v in (spec.get("resources") or {}).items()}
        most = int(spec.get("max_workers", cap if cap is not None else 0) or 0)
        if cap is not None:
            most = min(most, int(cap))
        if name == config.get("head_node_type"):
            most = max(most, 1)  # the head runs anyway
        if resources and most > 0:
            types.append(NodeType(name, resources, most))
    return types


def cluster_node_types() -> tuple[list[NodeType], str | None]:
    """The node types of this cluster's autoscaling config, and the file they came from (None: no file)."""
    import yaml

    named = os.environ.get("BIB_RAY_CLUSTER_CONFIG")
    path = Path(named or BOOTSTRAP_CONFIG).expanduser()
    if not path.is_file():
        return [], None
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return [], str(path)
    return (node_types_of(config) if isinstance(config, dict) else []), str(path)


def resource_problem(want: Mapping[str, float], have: Mapping[str, float], node_types: list[NodeType],
                     autoscaling: bool = False) -> tuple[str, float, float] | None:
    """The first resource a trial asks for that the cluster cannot give, as (key, wanted, had), or None.

    ``have`` is what the cluster has now (``ray.cluster_resources()``). A request the cluster cannot
    meet now is fine when one node type the autoscaler may add offers all of the trial's resources
    on one node (a trial runs on one node), or when ``autoscaling`` says to trust the autoscaler."""
    asked = {RAY_KEYS[k]: float(v) for k, v in want.items() if k in RAY_KEYS and float(v) > 0}
    short = [(key, value, float(have.get(key, 0))) for key, value in asked.items()
             if value > float(have.get(key, 0))]
    if not short or autoscaling:
        return None
    if any(all(node.resources.get(key, 0.0) >= value for key, value in asked.items()) for node in node_types):
        return None
    return short[0]
