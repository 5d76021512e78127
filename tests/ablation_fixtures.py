"""A synthetic ablation in MLflow, laid out as the ablation driver logs one, with known numbers.

Why synthetic: the report must be checked against values we chose, fast, without running BIB; a real
``bib-ray ablate`` run is the end-to-end check.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from bib_ray.tracking.store import Store, flatten

STEPS = 5
NO_ORACLE = {"csv", "npy"}


def local_store(uri: str, name: str, artifact_root: str | Path) -> Store:
    """A Store whose experiment keeps artifacts under ``artifact_root``.

    Why: an experiment created on a SQLite URI by the client puts its artifacts in ``./mlruns`` of the
    working folder, which in a test is the repository.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    if client.get_experiment_by_name(name) is None:
        client.create_experiment(name, artifact_location=Path(artifact_root).resolve().as_uri())
    return Store(uri, name)


def parse_label(label: str) -> tuple[str, bool]:
    """``learned+eta`` -> ("learned", True)."""
    return (label[:-4], True) if label.endswith("+eta") else (label, False)


def cell_values(task_index: int, variant_index: int, seed: int, step: int, oracle: bool = True) -> dict[str, float]:
    """Hand-made metrics of one cell at one step: distinct per task, variant, seed and step."""
    base = 0.30 + 0.11 * variant_index + 0.037 * seed * (variant_index + 1) + 0.05 * task_index
    grow = 0.013 * step * (1 + 0.5 * variant_index)
    out = {
        "proxy_max": 2.0 + 3 * base + grow, "proxy_median": 1.0 + 2 * base + grow / 2, "proxy_mean": 1.1 + 2 * base,
        "offline_proxy_mean": 0.5 + base / 3 + 0.001 * step, "mean_edit_distance": 1.0 + 0.25 * step + 0.3 * seed,
        "gamma": 0.5 + 0.01 * step, "eta": 0.1, "forward_loss": 1.0 / step, "backward_loss": 0.5 / step,
        "unique_designs": 16.0 - seed,
    }
    if oracle:
        out.update({"normalized_max": base + grow, "normalized_median": base / 2 + grow / 3,
                    "normalized_mean": base / 2 + grow / 4})
    return out


def make_synthetic_ablation(store: Store, name: str, variants: Sequence[str], seeds: Sequence[int],
                            tasks: Sequence[str] = ("tfbind8",), steps: int = STEPS, failed: bool = True,
                            killed: bool = False) -> str:
    """A FINISHED parent run tagged as ablation ``name`` with one FINISHED child per (task, variant, seed).

    Each child has params, per-step metrics at steps 1..``steps``, then a final record at step ``steps``
    as a trial logs it (values = the last step's + 0.001, so a report that reads a step instead of the
    final is caught),
    ``design_seconds`` and a designs.csv. With ``failed`` a FAILED child with huge metrics is added (and
    with ``killed`` a KILLED one): both must be left out of every report. Returns the parent run id.
    """
    parent = store.create_run(name, {"bib_ray.kind": "ablation", "bib_ray.name": name})
    store.log_params(parent, {"plan.name": name, "plan.seeds": ",".join(map(str, seeds))})
    for t, task in enumerate(tasks):
        oracle = task not in NO_ORACLE
        for v, label in enumerate(variants):
            variant, eta = parse_label(label)
            for seed in seeds:
                cell = f"{task}-{label}-s{seed}"
                run = store.create_run(cell, {"task": task, "variant": variant, "adaptive_eta": str(eta).lower(),
                                              "seed": str(seed), "cell": cell, "cell_key": f"k-{cell}"}, parent)
                spec = {"task": {"name": task}, "seed": seed,
                        "engine": {"variant": variant, "adaptive_eta": eta, "lr": 0.1, "steps": steps}}
                store.log_params(run, flatten(spec))
                for step in range(1, steps + 1):
                    store.log_metrics(run, cell_values(t, v, seed, step, oracle), step)
                final = {k: val + 0.001 for k, val in cell_values(t, v, seed, steps, oracle).items()}
                store.log_metrics(run, {**final, "design_seconds": 1.5}, steps)
                store.log_text(run, "sequence,score\nACGT,0.5\n", "designs.csv")
                store.set_status(run, "FINISHED")
    bad_states = (["FAILED"] if failed else []) + (["KILLED"] if killed else [])
    for status in bad_states:
        run = store.create_run(f"{tasks[0]}-{variants[0]}-{status.lower()}",
                               {"task": tasks[0], "variant": parse_label(variants[0])[0],
                                "adaptive_eta": str(parse_label(variants[0])[1]).lower(), "seed": "99",
                                "cell": "bad", "cell_key": "bad",
                                **({"failed_reason": "synthetic failure"} if status == "FAILED" else {})}, parent)
        store.log_metrics(run, {k: 99.0 for k in cell_values(0, 0, 0, 1)}, 1)
        store.set_status(run, status)
    store.set_status(parent, "FINISHED")
    time.sleep(0.002)  # a later parent of the same name gets a later start time
    return parent


def assert_trajectories_are_the_steps(data: dict, variants: Sequence[str], seeds: Sequence[int],
                                      task_index: int = 0) -> None:
    """``trajectory_data`` of a synthetic ablation equals its per-step values at steps 1..STEPS (band over
    seeds), for each variant in ``variants`` (their index is the one the ablation was made with)."""
    import numpy as np

    for v, label in enumerate(variants):
        per_seed = np.array([[cell_values(task_index, v, s, t)["normalized_max"] for t in range(1, STEPS + 1)]
                             for s in seeds])
        assert data[label]["steps"].tolist() == list(range(1, STEPS + 1))
        np.testing.assert_allclose(data[label]["mean"], per_seed.mean(0), rtol=1e-12)
        np.testing.assert_allclose(data[label]["min"], per_seed.min(0), rtol=1e-12)
        np.testing.assert_allclose(data[label]["max"], per_seed.max(0), rtol=1e-12)
