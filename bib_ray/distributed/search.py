"""``bib-ray search``: Optuna's TPE sampler inside Ray Tune, ASHA early stopping, MLflow logging.

The space file says what to sample; Tune runs the trials on Ray workers (which keep their LM loaded);
the driver logs a parent run and one child per trial, then writes the best trial as a run file that
``bib-ray run --config`` accepts.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bib_ray.bench.memory import warn_if_gpu_share_too_small
from bib_ray.criteria import split_offline
from bib_ray.distributed.space import OFFLINE_METRICS, SearchSpace, lm_seed_list, load_search_space
from bib_ray.distributed.tune_job import (JobOutcome, TuneJob, check_resources, close_open_runs, execute,
                                         open_store_while_ray_starts, resume_line, storage_root)
from bib_ray.errors import BibInputError
from bib_ray.redact import mask_secrets
from bib_ray.spec import RunSpec, dump_run_spec
from bib_ray.tracking.store import Store, resolve_tracking_uri
from bib_ray.tracking.ui_links import ui_hint
from bib_ray.trial_records import HEADLINE_METRICS, TrialPlan, final_of
from bib_ray.workbench import build_task, prepare_default_lms


@dataclass
class SearchOutcome:
    """The best trial of a search and where everything went."""

    job: JobOutcome
    best_spec: RunSpec | None
    best_metrics: dict[str, Any]
    optuna_storage: str = ""  # where the search's Optuna study is (study name = search name)
    importances: Any = None  # bib_ray.tracking.importances.ParamImportances, once the search ended


def validate_against_task(space: SearchSpace) -> None:
    """Checks that need the task: an oracle metric needs an oracle."""
    lm_seed_list(space.lm_seeds, space.base)  # lm_seeds with an explicit lm fails here
    task = build_task(space.base.task)
    if space.uses_oracle and not task.has_oracle:
        raise BibInputError("metric", f"{space.metric} needs an oracle but task {task.name!r} has none",
                            f"use an offline-safe criterion: {', '.join(OFFLINE_METRICS)}")
    split_offline(len(task.offline_y), space.base.criteria)


def default_lm_variants(space: SearchSpace) -> list[RunSpec]:
    """The run specs that cover every default LM the trials can ask for, when that set is finite
    (pre-training settings fixed or categorical); empty otherwise, and trials train on first use."""
    import itertools

    from bib_ray.distributed.space import Categorical

    lm_params = {k: d for k, d in space.params.items() if k.startswith("lm_pretrain.") or k in ("lm", "task.name")}
    if space.base.lm or any(not isinstance(d, Categorical) for d in lm_params.values()):
        return [] if lm_params else [space.base.with_updates({"lm_pretrain.seed": seed}) if seed is not None
                                     else space.base for seed in lm_seed_list(space.lm_seeds, space.base)]
    keys = list(lm_params)
    combos = itertools.product(*(lm_params[k].values for k in keys))
    specs = [space.base.with_updates(dict(zip(keys, combo))) for combo in combos]
    return [spec.with_updates({"lm_pretrain.seed": seed}) if seed is not None else spec
            for spec in specs for seed in lm_seed_list(space.lm_seeds, spec)]


def trial_plan(space: SearchSpace) -> TrialPlan:
    """What every trial of the search shares: the base run, seeds, LM seeds and report cadence."""
    return TrialPlan(base=space.base, seeds=tuple(space.seeds),
                     lm_seeds=tuple(space.lm_seeds) if space.lm_seeds else None,
                     report_every=space.report_every if space.scheduler.type != "none" else None,
                     criteria_each_report=space.steered_by_full_criterion)


def build_job(space: SearchSpace, store: Store, source_text: str, resume_command: str,
              optuna_storage: Any = None) -> TuneJob:
    """The Tune job of a search space (its Optuna study in ``optuna_storage``, an Optuna storage, when given)."""
    from optuna.samplers import TPESampler
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    from bib_ray.distributed.optuna_searcher import BibOptunaSearch

    key = space.result_key
    searcher = BibOptunaSearch(metric=key, mode=space.mode, sampler=TPESampler(seed=space.sampler_seed),
                               study_name=space.name if optuna_storage is not None else None,
                               storage=optuna_storage)
    searcher = ConcurrencyLimiter(searcher, max_concurrent=space.concurrency)
    scheduler = None
    if space.scheduler.type == "asha":
        scheduler = ASHAScheduler(time_attr="step", grace_period=space.scheduler.grace_period,
                                  reduction_factor=space.scheduler.reduction_factor,
                                  max_t=10 ** 9)
    plan = trial_plan(space)
    tags = {"benchmark_mode": str(space.uses_oracle).lower(), "metric": space.metric,
            "task": space.base.task.name}
    params = {"sampler": "optuna.TPESampler", "sampler_seed": space.sampler_seed, "metric": space.metric,
              "mode": space.mode, "trials": space.trials, "concurrency": space.concurrency,
              "scheduler": space.scheduler.type, "resources.cpu": space.resources.cpu,
              "resources.gpu": space.resources.gpu, "seeds": ",".join(map(str, space.seeds)),
              "lm_seeds": ",".join(map(str, space.lm_seeds or [space.base.lm_pretrain.seed]))}
    return TuneJob(name=space.name, kind="search", store=store, plan=plan, param_space=space.tune_space(),
                   resources={"cpu": space.resources.cpu, "gpu": space.resources.gpu}, metric=key,
                   mode=space.mode, num_samples=space.trials, max_concurrent=space.concurrency,
                   max_failures=space.max_failures, search_alg=searcher, scheduler=scheduler,
                   parent_tags=tags, parent_params=params, parent_texts={"search_space.yaml": source_text},
                   resume_command=resume_command, expected_trials=space.trials,
                   optuna_study=space.name if optuna_storage is not None else None)


@dataclass(frozen=True)
class TrialCounts:
    """How a search's trials ended: ran to the end, stopped early by the scheduler, failed."""

    finished: int
    stopped: int
    failed: int

    def line(self) -> str:
        """The summary line the search prints."""
        return (f"trials: {self.finished} finished, {self.stopped} stopped early by the scheduler (PRUNED in "
                f"Optuna, not used for the best trial or importances), {self.failed} failed")


def trial_counts(outcome: JobOutcome) -> TrialCounts:
    """Count the trials of a search's result grid by how they ended."""
    results = list(outcome.results or [])
    failed = sum(1 for r in results if r.error or not r.metrics)
    finished = sum(1 for r in results if not r.error and r.metrics and final_of(r.metrics) is not None)
    return TrialCounts(finished, len(results) - failed - finished, failed)


def best_of(outcome: JobOutcome, space: SearchSpace) -> tuple[RunSpec | None, dict[str, Any]]:
    """The best trial that ran to the end (its metric is the mean over the space's seeds), as a run
    spec with the first seed, and its final metrics."""
    key = space.result_key
    best, best_value = None, None
    results = [r for r in outcome.results if not r.error and r.metrics]
    complete = [r for r in results if final_of(r.metrics) is not None]
    for result in complete or results:  # a trial ASHA stopped early carries a partial score
        value = result.metrics.get(key)
        if value is None or not math.isfinite(value):
            continue
        if best is None or (value > best_value if space.mode == "max" else value < best_value):
            best, best_value = result, value
    if best is None:
        return None, {}
    spec = trial_plan(space).spec_for(best.config).with_updates({"engine.seed": space.seeds[0]})
    first_lm = lm_seed_list(space.lm_seeds, spec)[0]
    if first_lm is not None:
        spec = spec.with_updates({"lm_pretrain.seed": first_lm})
    return spec, dict(best.metrics)


def run_search(space: SearchSpace, tracking_uri: str, address: str | None = None, resume: bool = False,
               storage: str | None = None, source_text: str = "", best_output: str | Path = "best.yaml",
               resume_command: str = "", optuna_storage: str | None = None) -> SearchOutcome:
    """Run a search end to end and log it; returns the best trial. The Optuna study goes to
    ``optuna_storage`` (default: an SQLite file beside the MLflow store)."""
    from bib_ray.distributed.optuna_study import DEFAULT_OPTION, OPTION, default_storage_url, prepare_study

    validate_against_task(space)
    optuna_url = optuna_storage or default_storage_url(tracking_uri, storage_root(storage))
    option = OPTION if optuna_storage else DEFAULT_OPTION  # an error names what the user gave
    study_storage = prepare_study(space, optuna_url, resume, option)  # a bad storage fails here, before any run
    if not address:  # locally; on a cluster each node trains its own copy once
        prepare_default_lms(default_lm_variants(space))
    store = open_store_while_ray_starts(tracking_uri, space.name, address)
    check_resources({"cpu": space.resources.cpu, "gpu": space.resources.gpu})
    warn_if_gpu_share_too_small([space.base], space.resources.gpu)
    job = build_job(space, store, source_text or yaml.safe_dump(space.model_dump(mode="json")), resume_command,
                    study_storage)
    outcome = execute(job, storage_root(storage), resume)
    if outcome.interrupted:
        return SearchOutcome(outcome, None, {}, optuna_url)
    parent = outcome.parent_id
    try:
        return _finish_search(space, store, outcome, optuna_url, study_storage, best_output)
    except BaseException:  # the parent is never left RUNNING by an error after the trials ran
        close_open_runs(store, parent, "FAILED")
        raise


def _finish_search(space: SearchSpace, store: Store, outcome: JobOutcome, optuna_url: str, study_storage: Any,
                   best_output: str | Path) -> SearchOutcome:
    """After the trials: the Optuna study closed, the best trial written and logged, importances."""
    from bib_ray.distributed.optuna_study import close_stale_trials

    close_stale_trials(study_storage, space.name)
    best_spec, best_metrics = best_of(outcome, space)
    parent = outcome.parent_id
    if best_spec is not None:
        dump_run_spec(best_spec, best_output)
        store.log_metrics(parent, {f"best.{k}": v for k, v in best_metrics.items()
                                   if k in HEADLINE_METRICS + (space.result_key,)}, 0)
        store.log_text(parent, Path(best_output).read_text(), "best.yaml")
        store.set_tags(parent, {"best_trial_id": best_metrics.get("trial_id", "")})
    store.set_tags(parent, {"optuna_storage": mask_secrets(optuna_url), "optuna_study": space.name})
    importances = log_importances(store, parent, space.name, study_storage)
    store.set_status(parent, "FINISHED")
    return SearchOutcome(outcome, best_spec, best_metrics, optuna_url, importances)


def log_importances(store: Store, parent_id: str, study_name: str, study_storage: Any):
    """Optuna's parameter importances of the finished study, as a table and a plot under ``report/`` of
    the search's parent run."""
    import tempfile

    import optuna

    from bib_ray.tracking.importances import write_param_importances

    study = optuna.load_study(study_name=study_name, storage=study_storage)
    with tempfile.TemporaryDirectory() as tmp:
        result = write_param_importances(study, tmp)
        for path in result.paths:
            store.log_artifact(parent_id, path, "report")
    return result


def search_command(space_file: str, tracking_uri: str | None = None, address: str | None = None,
                   resume: bool = False, storage: str | None = None, best_output: str = "best.yaml",
                   optuna_storage: str | None = None) -> int:
    """``bib-ray search``: run the space file's search and print its outcome; returns the exit code."""
    space = load_search_space(space_file)
    uri = resolve_tracking_uri(tracking_uri)
    resume_cmd = resume_line(["bib-ray", "search", space_file], address, tracking_uri, uri, storage,
                             optuna_storage)
    outcome = run_search(space, uri, address, resume, storage, Path(space_file).read_text(),
                         best_output, resume_cmd, optuna_storage)
    if outcome.job.interrupted:
        print(outcome.job.stop_message("search", resume_cmd), file=sys.stderr)
        return outcome.job.exit_code
    print(trial_counts(outcome.job).line())
    if outcome.best_spec is None:
        print("no trial finished with a finite metric; see the MLflow runs' failed_reason tags", file=sys.stderr)
        return 1
    m = outcome.best_metrics
    seeds = ", ".join(map(str, space.seeds))
    lm_seeds = [s for s in lm_seed_list(space.lm_seeds, space.base) if s is not None]
    several = len(space.seeds) > 1 or len(lm_seeds) > 1
    scored = f"seed {seeds}" if not several else f"mean over seeds {seeds}"
    if len(lm_seeds) > 1:
        scored += f" x LM seeds {', '.join(map(str, lm_seeds))}"
    print(f"best trial {m.get('trial_id')}: {space.metric} = {m.get(space.result_key):.4f} ({scored})")
    for key in HEADLINE_METRICS:
        if key in m:
            print(f"  {key:<20} {m[key]:.4f}")
    print("best config:")
    for key in space.params:
        print(f"  {key} = {_get(outcome.best_spec, key)}")
    which = f"seed {space.seeds[0]}" + (f", LM seed {lm_seeds[0]}" if len(lm_seeds) > 1 else "")
    print(f"wrote {best_output} with {which} (bib-ray run --config {best_output} re-runs "
          f"that one run{'; the scores above are means' if several else ''}); MLflow parent run "
          f"{outcome.job.parent_id} at {mask_secrets(uri)}")
    importances = outcome.importances
    if importances is not None and importances.importances:
        print("parameter importances (fANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in importances.importances)
              + " (report/param_importances.* on the parent run)")
    elif importances is not None:
        print(f"parameter importances: none ({importances.reason})")
    print(f"Optuna study {space.name!r}: optuna-dashboard {mask_secrets(outcome.optuna_storage)}")
    print(mask_secrets(ui_hint(uri, outcome.job.experiment_id)))
    return 0


def _get(spec: RunSpec, dotted: str) -> Any:
    node: Any = spec.model_dump(mode="json")
    for part in dotted.split("."):
        node = node[part]
    return node
