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

from bib_ray.distributed.plan import AblationPlan, Cell, expand_cells, lm_seed_list, load_plan
from bib_ray.distributed.tune_job import (JobOutcome, TuneJob, check_resources, close_open_runs, execute, init_ray,
                                         resume_line, storage_root)
from bib_ray.errors import BibInputError
from bib_ray.redact import mask_secrets
from bib_ray.spec import RunSpec
from bib_ray.tracking.report import build_report, is_ablation_parent
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


def run_ablation(plan: AblationPlan, base: RunSpec, tracking_uri: str, address: str | None = None,
                 resume: bool = False, force: bool = False, storage: str | None = None,
                 source_text: str = "", out_dir: str | Path = "ablation_report",
                 resume_command: str = "") -> AblationOutcome:
    """Run the plan's unfinished cells, then build the report."""
    from ray import tune

    cells = expand_cells(plan, base)
    for cell in {(c.spec.task.key(), c.spec.criteria): c for c in cells}.values():
        task = build_task(cell.spec.task)  # a bad task or option fails here, before Ray or MLflow start
        split_offline(len(task.offline_y), cell.spec.criteria)
    store = Store(tracking_uri, plan.name)
    parent_id = None if force else _latest_parent(store, plan.name)
    done = finished_keys(store, parent_id) if parent_id and not resume else set()
    todo = [c for c in cells if c.key not in done]
    skipped = [c for c in cells if c.key in done]
    job_outcome = None
    if todo or resume:
        if not address:  # locally; on a cluster each node trains its own copy once
            prepare_default_lms([c.spec for c in todo])
        init_ray(address)  # only when there is work: a re-run of a finished plan just reports
        check_resources({"cpu": plan.resources.cpu, "gpu": plan.resources.gpu})
        job = TuneJob(name=plan.name, kind="ablation", store=store, plan=TrialPlan(base=base, report_every=None),
                      param_space={CellConfig.CONFIG_KEY: tune.grid_search([c.config().as_dict() for c in todo])},
                      resources={"cpu": plan.resources.cpu, "gpu": plan.resources.gpu}, metric=None, mode=None,
                      num_samples=1, max_concurrent=plan.concurrency, max_failures=plan.max_failures,
                      parent_tags={"plan_cells": len(cells), "reference": plan.reference_label},
                      parent_params={"tasks": ",".join(sorted({c.spec.task.name for c in cells})),
                                     "variants": ",".join(plan.variants), "baseline": plan.baseline,
                                     "adaptive_eta": ",".join(str(e).lower() for e in plan.adaptive_eta),
                                     "seeds": ",".join(map(str, plan.seeds)),
                                     "lm_seeds": ",".join(str(s) for s in lm_seed_list(plan.lm_seeds, base)),
                                     "reference": plan.reference_label},
                      parent_texts={"ablation_plan.yaml": source_text or yaml.safe_dump(plan.model_dump(mode="json"))},
                      resume_command=resume_command, existing_parent=parent_id, expected_trials=len(todo))
        job_outcome = execute(job, storage_root(storage), resume)
        parent_id = job_outcome.parent_id
        if job_outcome.interrupted:
            return AblationOutcome(parent_id, cells, skipped, job_outcome, None, store.experiment_id)
    if parent_id is None:
        raise BibInputError("plan", "the plan has no cells", "list at least one variant, eta value and seed")
    try:
        report = build_report(store, parent_id, out_dir)
    except BaseException:  # the parent is never left RUNNING by an error after the cells ran
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
        print(f"ablation {outcome.job.interrupted_by}; open MLflow runs marked KILLED. Resume with:\n  {resume_cmd}",
              file=sys.stderr)
        return outcome.job.exit_code
    ran = len(outcome.cells) - len(outcome.skipped)
    print(f"ablation {plan.name}: {ran} cells run, {len(outcome.skipped)} already finished (skipped"
          f"{'' if not outcome.skipped else '; --force re-runs them'})")
    print(outcome.report.text)
    print(f"report: {', '.join(str(p) for p in outcome.report.paths)}; MLflow parent run {outcome.parent_id} "
          f"at {mask_secrets(uri)}")
    print(mask_secrets(ui_hint(uri, outcome.experiment_id)))
    return 0
