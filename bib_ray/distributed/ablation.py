"""``bib-ray ablate``: every cell of a plan as a Tune trial on LM-hosting Ray workers, one MLflow
parent per ablation name, then the comparison table rebuilt from MLflow.

Re-running a plan reopens the same parent and skips cells whose key already has a FINISHED child
(``--force`` starts a new parent and re-runs all); ``--resume`` continues an interrupted run from
Tune's saved state.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from bib_ray.bench.memory import warn_if_gpu_share_too_small
from bib_ray.distributed.plan import AblationPlan, Cell, expand_cells, lm_seed_list, load_plan
from bib_ray.distributed.tune_job import (JobOutcome, TuneJob, check_resources, close_open_runs, execute, init_ray,
                                         resume_line, storage_root)
from bib_ray.errors import BibInputError
from bib_ray.redact import mask_secrets
from bib_ray.spec import RunSpec
from bib_ray.runner import logged_metric_names
from bib_ray.tasks.base import Task
from bib_ray.tracking.conclusions import InferenceSettings, lm_seeds_needed
from bib_ray.tracking.report import PRIMARY_TAG, build_report, is_ablation_parent
from bib_ray.tracking.runs import collect_cells
from bib_ray.tracking.store import Store, resolve_tracking_uri
from bib_ray.tracking.ui_links import ui_hint
from bib_ray.trial_records import CellConfig, TrialPlan
from bib_ray.criteria import split_offline
from bib_ray.workbench import build_task, prepare_default_lms


@dataclass
class AblationOutcome:
    """What an ablation run did."""

    parent_id: str | None
    cells: list[Cell]
    skipped: list[Cell]
    job: JobOutcome | None
    report: object | None
    experiment_id: str = ""  # the MLflow experiment's id (for the UI's address)


def _latest_parent(store: Store, name: str) -> str | None:
    runs = store.find_runs(f"tags.`bib_ray.kind` = 'ablation' and tags.`bib_ray.name` = '{name}'")
    parents = [r for r in runs if is_ablation_parent(r)]
    parents.sort(key=lambda r: r.info.start_time, reverse=True)
    return parents[0].info.run_id if parents else None


def finished_keys(store: Store, parent_id: str) -> set[str]:
    """Cell keys with a FINISHED child under ``parent_id``."""
    return {r.data.tags.get("cell_key") for r in store.children(parent_id) if r.info.status == "FINISHED"}


def check_primary_metric(plan: AblationPlan, tasks: list[Task]) -> None:
    """The plan's ``primary_metric`` is one every task logs (oracle metrics need a task with an oracle)."""
    for task in tasks:
        names = logged_metric_names(task.has_oracle)
        if plan.primary_metric not in names:
            why = " (it has no oracle: use proxy_median or an offline criterion)" if not task.has_oracle and \
                plan.primary_metric.startswith("normalized_") else ""
            raise BibInputError("primary_metric", f"{plan.primary_metric!r} is not logged by task "
                                f"{task.name!r}{why}", "name a logged metric, e.g. " +
                                ", ".join(sorted(n for n in names if n.endswith("median") or n.endswith("max"))))


def inference_tags(plan: AblationPlan) -> dict[str, str]:
    """What the report's verdicts depend on, recorded on the parent run (``bib-ray report`` reads them)."""
    tags = {PRIMARY_TAG: plan.primary_metric}
    if plan.replication is not None:
        tags.update({f"replication.{k}": str(v) for k, v in plan.replication.model_dump().items()})
    return tags


def second_stage_cells(plan: AblationPlan, base: RunSpec, store: Store, parent_id: str) -> list[Cell]:
    """A replicated plan's extra cells: per primary comparison, the LM seeds Stein's N asks beyond stage
    one (the reference on as many as its task's most demanding comparison), from stage one's results."""
    if plan.replication is None:
        return []
    rep = plan.replication
    rows = [r for r in collect_cells(store, parent_id) if isinstance(r["lm_seed"], int) and r["lm_seed"] < rep.initial_lm_seeds]
    settings = InferenceSettings(primary_metric=plan.primary_metric, initial_lm_seeds=rep.initial_lm_seeds,
                                 target_half_width=rep.target_half_width, max_lm_seeds=rep.max_lm_seeds)
    reference = plan.reference_label
    needed = lm_seeds_needed(rows, reference, settings)
    for (task, _), n in list(needed.items()):
        needed[(task, reference)] = max(n, needed.get((task, reference), 0))
    most = max(needed.values(), default=rep.initial_lm_seeds)
    if most <= rep.initial_lm_seeds:
        return []
    extra = expand_cells(plan, base, lm_seeds=list(range(rep.initial_lm_seeds, most)))
    return [c for c in extra if c.lm_seed is not None and c.lm_seed < needed.get((c.task_label, c.variant_label), 0)]


def _run_cells(plan: AblationPlan, base: RunSpec, store: Store, name: str, todo: list[Cell], all_cells: int,
               address: str | None, resume: bool, storage: str | None, source_text: str, resume_command: str,
               parent_id: str | None) -> JobOutcome:
    """One Tune job over ``todo`` under the ablation's parent (created if ``parent_id`` is None)."""
    from ray import tune

    if not address:  # locally; on a cluster each node trains its own copy once
        prepare_default_lms([c.spec for c in todo])
    init_ray(address)  # only when there is work: a re-run of a finished plan just reports
    check_resources({"cpu": plan.resources.cpu, "gpu": plan.resources.gpu})
    warn_if_gpu_share_too_small([c.spec for c in todo], plan.resources.gpu)
    job = TuneJob(name=name, kind="ablation", store=store, plan=TrialPlan(base=base, report_every=None),
                  param_space={CellConfig.CONFIG_KEY: tune.grid_search([c.config().as_dict() for c in todo])},
                  resources={"cpu": plan.resources.cpu, "gpu": plan.resources.gpu}, metric=None, mode=None,
                  num_samples=1, max_concurrent=plan.concurrency, max_failures=plan.max_failures,
                  parent_tags={"plan_cells": all_cells, "reference": plan.reference_label, **inference_tags(plan)},
                  parent_params={"tasks": ",".join(sorted({c.spec.task.name for c in todo})),
                                 "variants": ",".join(plan.variants), "baseline": plan.baseline,
                                 "adaptive_eta": ",".join(str(e).lower() for e in plan.adaptive_eta),
                                 "seeds": ",".join(map(str, plan.seeds)),
                                 "lm_seeds": ",".join(str(s) for s in lm_seed_list(plan.stage_one_lm_seeds(), base)),
                                 "reference": plan.reference_label},
                  parent_texts={"ablation_plan.yaml": source_text or yaml.safe_dump(plan.model_dump(mode="json"))},
                  resume_command=resume_command, existing_parent=parent_id, expected_trials=len(todo))
    return execute(job, storage_root(storage), resume)


def run_ablation(plan: AblationPlan, base: RunSpec, tracking_uri: str, address: str | None = None,
                 resume: bool = False, force: bool = False, storage: str | None = None,
                 source_text: str = "", out_dir: str | Path = "ablation_report",
                 resume_command: str = "") -> AblationOutcome:
    """Run the plan's unfinished cells (a replicated plan: stage one, then the extra LM seeds its results
    ask for, in the same command), then build the report."""
    cells = expand_cells(plan, base)
    tasks = {}
    for cell in {(c.spec.task.key(), c.spec.criteria, c.spec.engine.designs): c for c in cells}.values():
        task = tasks.get(cell.spec.task.key()) or build_task(cell.spec.task)  # a bad task fails here, before Ray
        split_offline(len(task.offline_y), cell.spec.criteria)
        task.top_offline(cell.spec.engine.designs)  # M must not exceed the offline set (a user's small CSV)
        tasks[cell.spec.task.key()] = task
    check_primary_metric(plan, list(tasks.values()))
    store = Store(tracking_uri, plan.name)
    parent_id = None if force else _latest_parent(store, plan.name)
    done = finished_keys(store, parent_id) if parent_id and not resume else set()
    todo = [c for c in cells if c.key not in done]
    skipped = [c for c in cells if c.key in done]
    job_outcome = None
    if todo or resume:
        job_outcome = _run_cells(plan, base, store, plan.name, todo, len(cells), address, resume, storage,
                                 source_text, resume_command, parent_id)
        parent_id = job_outcome.parent_id
        if job_outcome.interrupted:
            return AblationOutcome(parent_id, cells, skipped, job_outcome, None, store.experiment_id)
    if parent_id is None:
        raise BibInputError("plan", "the plan has no cells", "list at least one variant, eta value and seed")
    try:  # the parent is never left RUNNING by an error after the cells ran
        extra = second_stage_cells(plan, base, store, parent_id)
        if extra:
            done = finished_keys(store, parent_id)
            todo = [c for c in extra if c.key not in done]
            skipped += [c for c in extra if c.key in done]
            cells = cells + extra
            if todo:  # a fresh Tune job that skips finished cells: --resume of an interrupted stage two lands here
                job_outcome = _run_cells(plan, base, store, f"{plan.name}-stage2", todo, len(cells), address,
                                         False, storage, source_text, resume_command, parent_id)
                if job_outcome.interrupted:
                    return AblationOutcome(parent_id, cells, skipped, job_outcome, None, store.experiment_id)
        store.set_tags(parent_id, {**inference_tags(plan), "plan_cells": str(len(cells))})
        report = build_report(store, parent_id, out_dir)
    except BaseException:
        close_open_runs(store, parent_id, "FAILED")
        raise
    store.set_status(parent_id, "FINISHED")
    return AblationOutcome(parent_id, cells, skipped, job_outcome, report, store.experiment_id)


def ablate_command(plan_file: str, tracking_uri: str | None = None, address: str | None = None,
                   resume: bool = False, force: bool = False, storage: str | None = None,
                   output: str = "ablation_report") -> int:
    """``bib-ray ablate``: run the plan file's unfinished cells and print the report; returns the exit code."""
    plan, base = load_plan(plan_file)
    uri = resolve_tracking_uri(tracking_uri)
    resume_cmd = resume_line(["bib-ray", "ablate", plan_file], address, tracking_uri, uri, storage)
    outcome = run_ablation(plan, base, uri, address, resume, force, storage, Path(plan_file).read_text(), output,
                           resume_cmd)
    if outcome.job is not None and outcome.job.interrupted:
        print(outcome.job.stop_message("ablation", resume_cmd), file=sys.stderr)
        return outcome.job.exit_code
    ran = len(outcome.cells) - len(outcome.skipped)
    print(f"ablation {plan.name}: {ran} cells run, {len(outcome.skipped)} already finished (skipped"
          f"{'' if not outcome.skipped else '; --force re-runs them'})")
    print(outcome.report.text)
    print(f"report: {', '.join(str(p) for p in outcome.report.paths)}; MLflow parent run {outcome.parent_id} "
          f"at {mask_secrets(uri)}")
    print(mask_secrets(ui_hint(uri, outcome.experiment_id)))
    return 0
