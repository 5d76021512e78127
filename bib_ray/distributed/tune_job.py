"""What searches and ablations share: Ray start-up, a parent MLflow run, a Tune run with the MLflow
callback, resume after a crash, and a clean stop on Ctrl-C.

State lives in two places that agree: Tune's experiment folder (``<storage>/<name>``, restored by
``Tuner.restore``) and MLflow (one parent, one child per trial). The parent run id is written into
the experiment folder, so ``--resume`` continues the same parent and children.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bib_ray.errors import BibInputError, Terminated, first_line
from bib_ray.redact import has_secret, mask_secrets
from bib_ray.tracking.store import Store
from bib_ray.trial_records import TrialPlan, final_of

PARENT_FILE = "bib_ray_parent_run.txt"


@dataclass
class TuneJob:
    """One Tune run of BIB trials, logged under one MLflow parent run."""

    name: str
    kind: str  # "search" or "ablation"
    store: Store
    plan: TrialPlan  # what every trial shares (sent once, through tune.with_parameters)
    param_space: dict[str, Any]  # what varies: sampled parameters, or the cells (grid)
    resources: dict[str, float]
    metric: str
    mode: str
    num_samples: int
    max_concurrent: int
    max_failures: int = 2
    search_alg: Any = None
    scheduler: Any = None
    parent_tags: dict[str, Any] = field(default_factory=dict)
    parent_params: dict[str, Any] = field(default_factory=dict)
    parent_texts: dict[str, str] = field(default_factory=dict)
    resume_command: str = ""
    existing_parent: str | None = None  # reopen this parent run instead of creating one
    expected_trials: int | None = None  # fewer trials than this at the end means the run was cut short
    optuna_study: str | None = None  # a search's study in Optuna's storage, linked trial by trial to MLflow
    trainable: Any = None  # Tune's function trainable, called as trainable(config, plan=...); None: BIB's


@dataclass
class JobOutcome:
    """What a finished (or interrupted) Tune job left."""

    results: Any  # ray.tune.ResultGrid
    parent_id: str
    interrupted: bool
    experiment_path: Path
    experiment_id: str = ""  # the MLflow experiment's id (for the UI's address)
    stopped_by: str = ""  # "SIGTERM" when a batch scheduler (Slurm, Kubernetes) stopped it; "" for Ctrl-C
    unsent_writes: int = 0  # stopped while MLflow was unreachable: writes it never received ...
    unsent_rows: int = 0  # ... and the metric rows among them (all kept in the trials' result.json)

    @property
    def interrupted_by(self) -> str:
        """How the run ended early, in words for the summary line."""
        return "terminated (SIGTERM)" if self.stopped_by == "SIGTERM" else "interrupted"

    def stop_message(self, what: str, resume_command: str) -> str:
        """What the command prints when it ended early (``what``: "ablation", "search"), and the way back."""
        if not (self.unsent_writes or self.unsent_rows):
            return f"{what} {self.interrupted_by}; open MLflow runs marked KILLED. Resume with:\n  {resume_command}"
        return (f"{what} {self.interrupted_by} while MLflow was unreachable: {self.unsent_writes} writes "
                f"({self.unsent_rows} metric rows) not sent, and runs still open stay RUNNING there. Nothing is "
                f"lost: every trial's records are kept in {self.experiment_path} (Tune's result.json per trial), "
                f"and the resume sends what MLflow lacks. Once MLflow answers, resume with:\n  {resume_command}")

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM)."""
        return 128 + (signal.SIGTERM if self.stopped_by == "SIGTERM" else signal.SIGINT)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def handle_sigterm_like_ctrl_c() -> None:
    """SIGTERM (what Slurm, Kubernetes and ``kill`` send) stops the command as Ctrl-C does.

    ``ray.init`` installs its own SIGTERM handler in the driver (``sys.exit`` from wherever the main
    thread is), which ends in a crash dump with Ray's threads alive and runs left RUNNING; so this is
    installed again after Ray starts. Inside Tune's run :func:`execute` swaps in a graceful stop."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def resume_line(command: list[str], address: str | None, tracking_flag: str | None, tracking_uri: str,
                storage: str | None, optuna_storage: str | None = None) -> str:
    """The ``--resume`` command a user can paste, with passwords masked.

    A tracking URI with a password that came from ``$MLFLOW_TRACKING_URI`` is left out (the same shell
    still has it, and it is then never printed); one given as a flag is shown as ``***``, for the user
    to type again."""
    parts = [*command, "--resume"] + (["--address", address] if address else [])
    if tracking_flag or not has_secret(tracking_uri):
        parts += ["--tracking-uri", tracking_uri]
    parts += (["--storage", storage] if storage else []) + (["--optuna-storage", optuna_storage]
                                                            if optuna_storage else [])
    return mask_secrets(" ".join(parts))


def ask_token_auth_for_local_ray() -> None:
    """Ask Ray for token authentication explicitly (``RAY_AUTH_MODE=token``) before it is imported.

    Ray turns token authentication on for every new local cluster anyway, and then prints a notice
    about opting out on every run, which a user cannot act on. Asking for it gives the same protection
    without the notice. It must happen before ``import ray`` (Ray reads the mode once), and only for a
    Ray of our own: a cluster given by ``--address`` keeps whatever mode it was started with.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "token")


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to a cluster (``address``) or start a local Ray on this machine's cores."""
    import ray

    if ray.is_initialized():
        return
    from bib_ray.progress import current

    current().event(f"starting Ray ({'connecting to ' + address if address else 'a local Ray on this machine'}; "
                    "this can take a minute on a busy machine)")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kwargs: dict[str, Any] = {"log_to_driver": True, "configure_logging": False}
    try:
        if address:
            # No runtime_env here: inside `ray job submit --working-dir` it would replace the job's
            # own (and Ray would garbage-collect the working directory the driver runs in).
            ray.init(address=address, **kwargs)
        else:
            # address="local": always a fresh Ray of our own, never a cluster some other command left
            # registered in /tmp/ray (that is what --address auto is for).
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                     runtime_env={"worker_process_setup_hook": "bib_ray.distributed.warmup.import_heavy_modules"},
                     **kwargs)
    except (ConnectionError, RuntimeError) as err:
        first = first_line(err)
        raise BibInputError("address", f"cannot connect to Ray at {address!r}: {first}",
                            "start the cluster (ray up / ray start --head) or omit --address") from None
    import threading

    if threading.current_thread() is threading.main_thread():
        handle_sigterm_like_ctrl_c()  # Ray's own handler replaced ours
    current().event("Ray is up")


def open_store_while_ray_starts(tracking_uri: str, experiment: str, address: str | None) -> Store:
    """Open the MLflow store (a new SQLite file runs its migrations: seconds) while Ray starts."""
    from concurrent.futures import ThreadPoolExecutor

    if address:
        # Joining a cluster (often as a `ray job submit` driver, whose working folder Ray may unpack
        # again while connecting): open the store first, then connect.
        store = Store(tracking_uri, experiment)
        init_ray(address)
        return store
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(Store, tracking_uri, experiment)
        try:
            init_ray(address)
        finally:
            store = future.result()
    return store


def check_resources(resources: dict[str, float], field_name: str = "resources", total: dict[str, float] | None = None,
                    node_types: list | None = None) -> None:
    """Refuse trials that no node of the cluster can ever run (they would wait forever).

    ``total``: the cluster's resources now (default ``ray.cluster_resources()``); ``node_types``: what
    the autoscaler may add (default: read from the cluster's autoscaling config, see
    :mod:`bib_ray.distributed.autoscale`). ``BIB_RAY_AUTOSCALING=1`` trusts the autoscaler."""
    from bib_ray.distributed.autoscale import cluster_node_types, resource_problem

    if total is None:
        import ray

        total = ray.cluster_resources()
    source = "the cluster config"
    if node_types is None:
        node_types, found = cluster_node_types()
        source = found or source
    problem = resource_problem(resources, total, node_types, autoscaling=bool(os.environ.get("BIB_RAY_AUTOSCALING")))
    if problem is None:
        return
    ray_key, want, have = problem
    key = ray_key.lower()
    if node_types:
        why = f"no node type of {source} offers it on one node"
        fix = f"lower {field_name}.{key} (fractions share a device) or add a node type that has it"
    else:
        why = "no autoscaling config names a node type that has it"
        fix = (f"lower {field_name}.{key} (fractions share a device) or add nodes; on an autoscaling cluster "
               "set BIB_RAY_CLUSTER_CONFIG to its cluster file, or BIB_RAY_AUTOSCALING=1")
    raise BibInputError(f"{field_name}.{key}", f"each trial asks {want:g} {ray_key} but the cluster has {have:g} "
                        f"and {why}", fix)


def storage_root(flag: str | None) -> Path:
    """Where Tune keeps experiment state: --storage, else ./bib_ray_runs (absolute)."""
    return Path(flag or "bib_ray_runs").expanduser().resolve()


def _parent_run(job: TuneJob, path: Path, resume: bool) -> str:
    parent_file = path / PARENT_FILE
    if resume and parent_file.exists():
        parent_id = parent_file.read_text().strip()
        job.store.set_status(parent_id, "RUNNING")
        return parent_id
    if job.existing_parent:
        job.store.set_status(job.existing_parent, "RUNNING")
        path.mkdir(parents=True, exist_ok=True)
        parent_file.write_text(job.existing_parent)
        return job.existing_parent
    parent_id = job.store.create_run(job.name, {"bib_ray.kind": job.kind, "bib_ray.name": job.name,
                                                **job.parent_tags})
    job.store.log_params(parent_id, job.parent_params)
    for name, text in job.parent_texts.items():
        job.store.log_text(parent_id, text, name)
    path.mkdir(parents=True, exist_ok=True)
    parent_file.write_text(parent_id)
    return parent_id


def reconcile_children(store: Store, parent_id: str, path: Path, callback) -> dict[str, int]:
    """Before a resume: make MLflow agree with the Tune state that survived the crash.

    * Every trial Tune recorded gets what MLflow lacks of it, from the results Tune wrote to the
      trial's ``result.json`` (:meth:`MLflowTrialCallback.replay`): the writes a driver stopped during a
      tracking outage still held, a run it never managed to create, the final record of a trial that
      finished while no driver was listening. A trial Tune had ended is closed as it ended.
    * A child whose trial Tune never recorded (the driver died between the trial's start and the next
      experiment checkpoint) has no trial to resume: the resumed search samples a new one. Its run is
      tagged ``bib_ray.orphan`` with the reason and moved to MLflow's deleted runs (recoverable there),
      so the experiment keeps exactly one live child per trial.
    """
    from ray.tune import ExperimentAnalysis

    try:
        trials = {t.trial_id: t for t in ExperimentAnalysis(str(path)).trials}
    except Exception:  # noqa: BLE001 - no Tune state: every open child is an orphan
        trials = {}
    counts = {"replayed": 0, "orphaned": 0}
    children = store.children(parent_id)
    closed = {run.data.tags.get("trial_id", "") for run in children if run.info.status == "FINISHED"}
    for run in children:
        if run.info.status != "FINISHED" and run.data.tags.get("trial_id", "") not in trials:
            store.set_tags(run.info.run_id, {"bib_ray.orphan": "driver killed before Tune recorded this trial; "
                                             "the resumed run sampled a new trial instead"})
            store.set_status(run.info.run_id, "KILLED")
            store.client.delete_run(run.info.run_id)
            counts["orphaned"] += 1
    for trial in trials.values():  # a FINISHED run has all its trial's writes: the writer closes it last
        results = [] if trial.trial_id in closed else trial_results(Path(trial.path))
        if results:
            callback.replay(trial, results)
            counts["replayed"] += 1
    callback.flush()
    return counts


def trial_results(trial_dir: Path) -> list[dict]:
    """Every result a trial reported, in order, as Tune's JSON logger wrote them (one JSON per line of
    the trial folder's ``result.json``); a line cut short by a killed driver is left out."""
    from ray.tune.result import EXPR_RESULT_FILE

    results = []
    try:
        lines = (trial_dir / EXPR_RESULT_FILE).read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            results.append(json.loads(line))
        except ValueError:
            continue
    return results


def execute(job: TuneJob, storage: Path, resume: bool) -> JobOutcome:
    """Run (or resume) the Tune job; mark MLflow runs FINISHED, FAILED or KILLED as they ended.

    An interrupted run (Ctrl-C: Tune stops its trials and returns) is told from a finished one by its
    trials: fewer than expected, or some not ended.
    """
    from ray import tune

    from bib_ray.distributed.mlflow_callback import MLflowTrialCallback

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # MLflow is the record: JSON only, no TB/CSV
    path = storage / job.name
    restorable = resume and tune.Tuner.can_restore(str(path))
    if resume and not restorable and not (path / PARENT_FILE).exists():
        raise BibInputError("--resume", f"nothing to resume in {path}", "run once without --resume")
    if not resume and path.exists():
        shutil.rmtree(path)  # a fresh run; MLflow keeps the old runs
    try:  # before any MLflow run is opened or reopened, so a bad folder leaves none RUNNING
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BibInputError("--storage", f"cannot create the experiment folder {path} ({err.strerror})",
                            "give a folder you can write to") from None
    parent_id = _parent_run(job, path, resume)
    tags = {"bib_ray.kind": job.kind, "bib_ray.name": job.name, **job.parent_tags}

    def new_callback() -> MLflowTrialCallback:
        return MLflowTrialCallback(job.store.uri, job.store.experiment, parent_id, tags, job.plan,
                                   total=job.expected_trials or job.num_samples, optuna_study=job.optuna_study)

    interrupted, stop = False, _GracefulStop()
    try:
        with stop:  # from here on SIGTERM stops like Ctrl-C, and an error leaves no run RUNNING
            tuner = _tuner(job, storage, path, resume, restorable, new_callback)
            results = tuner.fit()
    except KeyboardInterrupt:
        results, interrupted = None, True
    except BaseException:  # never RUNNING after an error; the error goes on to the CLI
        close_open_runs(job.store, parent_id, "FAILED", MLflowTrialCallback.active(parent_id))
        raise
    callback = MLflowTrialCallback.active(parent_id)
    if results is not None:
        done = results.num_terminated + results.num_errors
        interrupted = (interrupted or done < len(results) or (job.expected_trials or 0) > len(results)
                       or trials_ended(results, callback) < len(results))
    stopped_by, unsent = stop.received, (0, 0)
    try:
        if callback is not None and interrupted and callback.store_down():
            unsent = callback.unsent()  # told to stop during an outage: no wait for MLflow
        elif callback is not None:
            callback.flush()  # metrics still queued; a write that failed is raised here, in the driver
    except (KeyboardInterrupt, Terminated) as err:  # the end-of-run wait for MLflow, given up
        interrupted, unsent = True, callback.unsent()
        stopped_by = stopped_by or ("SIGTERM" if isinstance(err, Terminated) else "")
    except BaseException:
        close_open_runs(job.store, parent_id, "FAILED", callback)
        raise
    if interrupted and not any(unsent):
        close_open_runs(job.store, parent_id, "KILLED", callback)
    return JobOutcome(results=results, parent_id=parent_id, interrupted=interrupted, experiment_path=path,
                      experiment_id=job.store.experiment_id, stopped_by=stopped_by,
                      unsent_writes=unsent[0], unsent_rows=unsent[1])


def trials_ended(results, callback) -> int:
    """How many of Tune's trials really ended: failed, with a final record, or seen ending by the
    callback (a trial the scheduler stopped early). Why not Tune's own count: a Ctrl-C'd Tune marks the
    trials it stopped mid-run TERMINATED as well."""
    books = (callback.finished | callback.failed) if callback is not None else set()
    ended = 0
    for result in results:
        metrics = result.metrics or {}
        if result.error is not None or final_of(metrics) is not None or metrics.get("trial_id") in books:
            ended += 1
    return ended


def _tuner(job: TuneJob, storage: Path, path: Path, resume: bool, restorable: bool, new_callback):
    """A new Tuner, or Tune's saved one restored (resume); open children reconciled first on resume."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from bib_ray.distributed.trainable import bib_trainable

    trainable = tune.with_resources(tune.with_parameters(job.trainable or bib_trainable, plan=job.plan),
                                    job.resources)
    if resume:
        closer = new_callback()
        closer.setup(store=job.store)
        reconcile_children(job.store, closer.parent_id, path, closer)
    if restorable:  # Tune unpickles the callback it was given and hands back its state (set_state)
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=False,
                                   param_space=job.param_space)
    else:
        # result.json per trial (JSON logger), which Tune's result grid reads; MLflow is the record.
        run_config = tune.RunConfig(name=job.name, storage_path=str(storage), verbose=0,
                                    callbacks=[new_callback(), JsonLoggerCallback()],
                                    failure_config=tune.FailureConfig(max_failures=job.max_failures))
        tune_config = tune.TuneConfig(metric=job.metric, mode=job.mode, search_alg=job.search_alg,
                                      scheduler=job.scheduler, num_samples=job.num_samples,
                                      max_concurrent_trials=None if job.search_alg is not None else job.max_concurrent,
                                      reuse_actors=True)
        tuner = tune.Tuner(trainable, param_space=job.param_space, tune_config=tune_config,
                           run_config=run_config)
    return tuner


def close_open_runs(store: Store, parent_id: str, status: str, callback=None) -> None:
    """Mark the parent and every child still open KILLED (stopped) or FAILED (an error), so a search or
    ablation that ends early never leaves a run RUNNING. Best effort: a store that fails here must not
    hide the error that brought us here."""
    try:
        open_runs = set(callback.open_run_ids()) if callback is not None else set()
        open_runs |= {r.info.run_id for r in store.children(parent_id) if r.info.status == "RUNNING"}
        for run_id in open_runs:
            store.set_status(run_id, status)
        store.set_status(parent_id, status)
    except Exception:  # noqa: BLE001 - the store itself may be what failed
        pass


class _GracefulStop:
    """While Tune runs: SIGTERM stops it as Ctrl-C does (trials stopped, experiment state saved for
    ``--resume``), through the graceful-stop handler Tune installs for SIGINT and SIGUSR1 (Tune's
    documented ways to end a run cleanly). Remembers that it was SIGTERM, for the exit code."""

    def __init__(self) -> None:
        self.received = ""
        self._before: Any = None

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.received = "SIGTERM"
        tune_stop = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if callable(tune_stop) and tune_stop is not self._on_sigterm:
            tune_stop(signal.SIGUSR1, frame)  # Tune's handler: sets its stop event, fit() returns
        else:  # Tune has not started (or has ended): stop as a Ctrl-C would
            raise Terminated()

    def __enter__(self) -> "_GracefulStop":
        import threading

        if threading.current_thread() is threading.main_thread():
            self._before = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._before is not None:
            signal.signal(signal.SIGTERM, self._before)
