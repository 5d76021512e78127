"""Python half of scripts/e2e_cluster.sh: derive the test's cluster file, write its specs, watch MLflow
while the script kills hosts, and verify what MLflow and Tune kept.

The shell script owns hosts, processes and `ray up`; everything that reads YAML, MLflow or Tune state
is here, so that each check is one command that prints one line and exits non-zero when it fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

SEARCH_STEPS = 6  # the happy-path jobs: tiny, a few seconds per trial
LONG_STEPS = 600  # the jobs a host is killed in: 15-30 s a trial, long enough to be caught mid-run


def _tiny_base(steps: int) -> dict[str, Any]:
    """The tests' tiny LM and engine (tests/helpers.py TINY_BASE) with `steps` design steps."""
    return {"task": "tfbind8",
            "lm_pretrain": {"hidden": 16, "layers": 1, "heads": 2, "intermediate": 32, "steps": 20, "batch_size": 32},
            "engine": {"designs": 16, "steps": steps, "aux_hidden": 8, "aux_epochs": 20}}


def _merge(base: Any, override: Any) -> Any:
    """Mappings merge key by key; anything else (lists included) is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in override.items()}}
    return override


def derive_config(args: argparse.Namespace) -> None:
    """The shipped on-prem file with the run's addresses, key, setup check and small nodes.

    Only what a test host cannot do is replaced: the setup commands (the hosts have no route to PyPI;
    they already share this machine's environment, activated in their ~/.bashrc) become a check that
    the synced tree is what Python imports and that Ray matches the shipped pin; the `ray start` lines
    keep the shipped flags and gain `--append` (CPU count, object store size).
    """
    shipped = yaml.safe_load(Path(args.shipped).read_text())
    pin = next(c for c in shipped["setup_commands"] if "ray[default]==" in c).split("==")[1].strip("\"' ")
    check = ("python -c \"import os, bib_ray, ray, torch, mlflow; "
             "assert bib_ray.__file__.startswith(os.path.expanduser('~/bib_ray/')), bib_ray.__file__; "
             f"assert ray.__version__ == '{pin}', ray.__version__; print('env ok', ray.__version__)\"")
    override = {"cluster_name": args.name,
                "provider": {"head_ip": args.head, "worker_ips": [args.worker]},
                "max_workers": 1,
                "auth": {"ssh_user": "root", "ssh_private_key": args.key},
                "setup_commands": [check]}
    config = _merge(shipped, override)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        config[key] = [f"{c} {args.append}" if "ray start" in c else c for c in config[key]]
    Path(args.out).write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"cluster file {args.out}: head {args.head}, worker {args.worker}, ray pin {pin}")


def write_specs(args: argparse.Namespace) -> None:
    """The four jobs: a search and an ablation that must span both hosts, and the two that lose one."""
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    lr = {"engine.lr": {"type": "loguniform", "low": 0.01, "high": 1.0}}
    specs = {
        "search": {"name": "e2e_search", "base": _tiny_base(SEARCH_STEPS), "params": lr, "trials": 6,
                   "concurrency": 2, "scheduler": {"type": "none"}, "resources": {"cpu": 1, "gpu": 0}},
        "ablation": {"name": "e2e_ablation", "base": _tiny_base(SEARCH_STEPS), "variants": ["forward", "fixed", "learned"],
                     "adaptive_eta": [False], "baseline": False, "seeds": [0], "concurrency": 2,
                     "resources": {"cpu": 1, "gpu": 0}},
        "node_loss": {"name": "e2e_node_loss", "base": _tiny_base(LONG_STEPS), "params": lr, "trials": 6,
                      "concurrency": 2, "scheduler": {"type": "none"}, "resources": {"cpu": 1, "gpu": 0},
                      "max_failures": 2, "report_every": 10},
        "head_loss": {"name": "e2e_head_loss", "base": _tiny_base(LONG_STEPS), "variants": ["forward", "fixed", "learned"],
                      "adaptive_eta": [False], "baseline": False, "seeds": [0, 1], "concurrency": 2,
                      "resources": {"cpu": 1, "gpu": 0}, "max_failures": 2},
    }
    for key, spec in specs.items():
        (folder / f"{key}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    print(f"specs in {folder}: " + ", ".join(specs))


def _children(uri: str, experiment: str) -> tuple[list, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parents, children


def _steps(uri: str, run_id: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    return [m.step for m in MlflowClient(uri).get_metric_history(run_id, "forward_loss")]


def _host(run) -> str:
    return (run.data.tags.get("node") or "?").split("/")[0]


def wait_for(args: argparse.Namespace) -> None:
    """Poll MLflow until the moment to kill: a RUNNING child tagged with `--host` (its trial has
    reported from there: it is mid-run), with `--min-steps` steps already in MLflow (the driver writes
    them in batches) and, with --finished, that many children FINISHED. Prints the trial ids."""
    deadline = time.time() + args.timeout
    while time.time() < deadline:
        try:
            _, children = _children(args.uri, args.experiment)
            finished = [c for c in children if c.info.status == "FINISHED"]
            running = [c for c in children if c.info.status == "RUNNING" and _host(c) == args.host
                       and len(_steps(args.uri, c.info.run_id)) >= args.min_steps]
            if running and len(finished) >= args.finished:
                print(" ".join(sorted(c.data.tags["trial_id"] for c in running)))
                return
        except Exception:  # noqa: BLE001 - the store may be mid-creation
            pass
        time.sleep(1)
    sys.exit(f"e2e: timed out waiting for a running trial on {args.host} in {args.experiment}")


def verify(args: argparse.Namespace) -> None:
    """One FINISHED parent; one FINISHED child per trial (or cell); every step logged once; figures.

    Prints one JSON line: trials per host, retried trials (Tune's failure count per trial), runs lost
    (expected trials without exactly one FINISHED child). Exits 1 when anything is off.
    """
    from ray.tune import ExperimentAnalysis

    spec = yaml.safe_load(Path(args.spec).read_text())
    experiment, steps = spec["name"], spec["base"]["engine"]["steps"]
    parents, children = _children(args.uri, experiment)
    problems: list[str] = []
    if len(parents) != 1 or parents[0].info.status != "FINISHED":
        problems.append(f"parents: {[p.info.status for p in parents]}")
    key = "cell" if args.cells else "trial_id"
    by_key: dict[str, list] = {}
    for child in children:
        by_key.setdefault(child.data.tags.get(key, "?"), []).append(child)
    finished = {k for k, runs in by_key.items() if len(runs) == 1 and runs[0].info.status == "FINISHED"}
    lost = max(0, args.expected - len(finished))
    if len(by_key) != args.expected or lost:
        problems.append(f"{len(by_key)} {key}s, {len(finished)} with one FINISHED child, expected {args.expected}")
    for k, runs in by_key.items():
        for run in runs:
            logged = _steps(args.uri, run.info.run_id)
            if sorted(logged) != list(range(1, steps + 1)) + [steps]:  # each step once, the final at the last
                problems.append(f"{k}: {len(logged)} steps logged, {len(set(logged))} distinct (want 1..{steps}, "
                                "each once, and the final record at the last step)")
    hosts: dict[str, int] = {}
    for child in children:
        hosts[_host(child)] = hosts.get(_host(child), 0) + 1
    trials = ExperimentAnalysis(str(Path(args.storage) / experiment)).trials
    retried = sorted(t.trial_id for t in trials if getattr(t, "num_failures", 0) > 0)
    if args.hosts and len([h for h in hosts if h.startswith("bibe2e-")]) < args.hosts:
        problems.append(f"trials ran on {sorted(hosts)}, expected {args.hosts} hosts")
    if args.lost_trials:
        missed = sorted(set(args.lost_trials.split()) - set(retried)) if not args.cells else []
        if missed:
            problems.append(f"trials running on the lost host but not retried: {missed}")
        if not retried:
            problems.append("no trial was retried after the host was lost")
    print(json.dumps({"experiment": experiment, "trials": len(by_key), "finished": len(finished),
                      "per_host": hosts, "retried": len(retried), "runs_lost": lost}))
    if problems:
        sys.exit("e2e: " + "; ".join(problems))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("config")
    for flag in ("--shipped", "--out", "--name", "--head", "--worker", "--key", "--append"):
        p.add_argument(flag, required=True)
    p.set_defaults(func=derive_config)
    p = sub.add_parser("specs")
    p.add_argument("--dir", required=True)
    p.set_defaults(func=write_specs)
    p = sub.add_parser("wait")
    for flag in ("--uri", "--experiment", "--host"):
        p.add_argument(flag, required=True)
    p.add_argument("--min-steps", type=int, default=0)
    p.add_argument("--finished", type=int, default=0)
    p.add_argument("--timeout", type=float, default=300)
    p.set_defaults(func=wait_for)
    p = sub.add_parser("verify")
    for flag in ("--uri", "--spec", "--storage"):
        p.add_argument(flag, required=True)
    p.add_argument("--expected", type=int, required=True)
    p.add_argument("--cells", action="store_true")
    p.add_argument("--hosts", type=int, default=0)
    p.add_argument("--lost-trials", default="")
    p.set_defaults(func=verify)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
