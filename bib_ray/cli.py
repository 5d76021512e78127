"""The ``bib-ray`` command: run, pretrain, search, ablate, report, cache, bench.

Every user mistake surfaces as one line ``bib-ray: error: <field>: <problem> (<fix>)`` and exit
code 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from bib_ray.errors import BibInputError, Terminated

EXIT_INPUT = 2
PRETRAIN_FLOOR = 100
"""Fewest MLM steps --pretrain-steps accepts: below it the default LM is close to its random start (0 is
a random LM), and BIB's kernel then measures nothing about the sequences; a run file may go lower
(tests do), but never to 0."""


def _task_options(pairs: Sequence[str] | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise BibInputError("--task-option", f"{pair!r} is not KEY=VALUE", "write e.g. --task-option start=561")
        key, value = pair.split("=", 1)
        options[key.strip()] = value.strip()
    return options


def _add_run_spec_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML run file (task, lm, lm_pretrain, device, engine); "
                   "flags override it; the best.yaml a search writes is such a file")
    p.add_argument("--task", help="tfbind8 | aav | ehrlich | rna | csv | npy (default tfbind8; see bib-ray tasks)")
    p.add_argument("--task-option", action="append", metavar="KEY=VALUE",
                   help="task option, repeatable: aav start=561 end=588 phenotype=packaging; csv path=FILE "
                        "alphabet=ACGT; ehrlich length=32 vocab=20")
    p.add_argument("--data", metavar="FILE", help="shorthand for --task-option path=FILE (csv/npy tasks)")
    p.add_argument("--strict", action="store_true", help="csv/npy tasks: refuse (not just warn about) lowercase "
                   "letters and letters rarer than 1%% of positions in the inferred alphabet")
    p.add_argument("--lm", help="hub id or local path of a masked LM (DNABERT, ProtBERT, ESM-2), or antiberty "
                   "(the packaged antibody LM, pip install 'bib-ray[antiberty]'); "
                   "default: the small LM bib-ray pre-trains on the task and caches")
    p.add_argument("--pretrain-steps", type=int, help=f"pre-training budget of the default LM (MLM steps, at least "
                   f"{PRETRAIN_FLOOR}; default: 8000 for 8-letter sequences, fewer for longer ones)")
    p.add_argument("--device", help="cpu (default), cuda, cuda:N or auto")


def _spec_from_args(args: argparse.Namespace):
    from bib_ray.spec import RunSpec, load_run_spec

    spec = load_run_spec(args.config) if getattr(args, "config", None) else RunSpec()
    updates: dict[str, Any] = {}
    options = _task_options(args.task_option)
    if getattr(args, "data", None):
        options["path"] = args.data
    if getattr(args, "strict", False):
        options["strict"] = "true"
    if args.task:
        updates["task.name"] = args.task
        updates["task.options"] = options
    elif options:
        updates["task.options"] = {**spec.task.options, **options}
    if args.lm:
        updates["lm"] = args.lm
    if args.pretrain_steps is not None:
        if args.pretrain_steps < PRETRAIN_FLOOR:
            raise BibInputError("--pretrain-steps", f"lm_pretrain.steps = {args.pretrain_steps} is below the floor "
                                f"of {PRETRAIN_FLOOR} MLM steps (the LM would stay close to random)",
                                f"give at least {PRETRAIN_FLOOR}, or leave it out for the default budget")
        updates["lm_pretrain.steps"] = args.pretrain_steps
    if args.device:
        updates["device"] = args.device
    for flag, key in (("variant", "variant"), ("seed", "seed"), ("steps", "steps"), ("designs", "designs"),
                      ("adaptive_eta", "adaptive_eta"), ("lr", "lr")):
        value = getattr(args, flag, None)
        if value is not None:
            updates[f"engine.{key}"] = value
    spec = spec.with_updates(updates) if updates else spec
    _check_task(spec)
    from bib_ray.runner import validate_spec

    _report_data(validate_spec(spec))
    return spec


def _report_data(task) -> None:
    """What the user should know about their own data before it is used: the alphabet read off the
    file, and each warning the reader found (duplicates, lowercase or rare letters)."""
    if getattr(task, "alphabet_inferred", False):
        print(f"bib-ray: data: alphabet {task.alphabet} ({len(task.alphabet)} letters, inferred from "
              f"{task.path}; give alphabet= to fix it)", file=sys.stderr, flush=True)
    for warning in getattr(task, "warnings", ()):
        print(f"bib-ray: warning: {warning}", file=sys.stderr, flush=True)


def _check_task(spec) -> None:
    from bib_ray.tasks import TASK_NAMES

    if spec.task.name not in TASK_NAMES:
        raise BibInputError("task", f"unknown task {spec.task.name!r}", f"choose one of {', '.join(TASK_NAMES)}")


def cmd_run(args: argparse.Namespace) -> int:
    from bib_ray.outputs import summary_table, write_run_outputs
    from bib_ray.runner import run_bib

    spec = _spec_from_args(args)
    _check_output_free(args.output, args.force)
    progress = not args.no_progress and sys.stderr.isatty()  # a bar on a terminal only
    # Pre-training lines (ten) on a terminal or not: minutes of silence in a batch log look like a hang.
    log_every = 0
    if not args.no_progress and not spec.lm:
        from bib_ray.workbench import build_task

        log_every = max(1, (spec.lm_pretrain.resolved(build_task(spec.task).length).steps or 10) // 10)
    result = run_bib(spec, progress=progress, pretrain_log_every=log_every)
    out = write_run_outputs(result, args.output)
    print(summary_table(result.metrics))
    print(f"wrote {out / 'result.json'} and {out / 'designs.csv'}")
    return 0


def _check_output_free(output: str, force: bool) -> None:
    """An output folder that already holds files is not overwritten unless --force says so: a re-run
    with other settings would otherwise replace the last result without a word."""
    from pathlib import Path

    folder = Path(output).expanduser()
    held = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if held and not force:
        shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        raise BibInputError("--output", f"{folder} already holds files ({shown})",
                            "give another --output, or add --force to overwrite result.json and designs.csv")


def cmd_pretrain(args: argparse.Namespace) -> int:
    import json

    from bib_ray.workbench import build_task
    from bib_ray.proxy.small_lm import ensure_default_lm

    spec = _spec_from_args(args)
    task = build_task(spec.task)
    config = spec.lm_pretrain.resolved(task.length)
    path = ensure_default_lm(task, config, log_every=max(1, (config.steps or 10) // 10))
    meta = json.loads((path / "bib_ray_pretrain.json").read_text())
    print(f"default LM for {task.name}: {path}")
    print(f"  mlm loss {meta['final_mlm_loss']:.4f} after {meta['config']['steps']} steps, "
          f"{meta['seconds']:.1f} s on {meta['sequences']} sequences")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from bib_ray.distributed.search import search_command
    from bib_ray.progress import current

    code = search_command(args.space, tracking_uri=args.tracking_uri, address=args.address, resume=args.resume,
                          storage=args.storage, best_output=args.best_output, optuna_storage=args.optuna_storage)
    current().line("search: " + current().summary("trials"))
    return code


def unmatched_overrides(plan, base) -> list[int]:
    """Indexes of the plan's overrides that match none of its cells (a typo in a match value, say)."""
    import itertools

    from bib_ray.distributed.space import lm_seed_list

    tasks = [t.name for t in plan.tasks] or [base.task.name]
    variants = list(plan.variants) + (["grad"] if plan.baseline and "grad" not in plan.variants else [])
    cells = [dict(zip(("task", "variant", "adaptive_eta", "lm_seed", "seed"), combo)) for combo in itertools.product(
        tasks, variants, plan.adaptive_eta, lm_seed_list(plan.lm_seeds, base), plan.seeds)]
    return [i for i, override in enumerate(plan.overrides)
            if not any(all(cell[k] == v for k, v in override.match.items()) for cell in cells)]


def cmd_ablate(args: argparse.Namespace) -> int:
    from bib_ray.distributed.ablation import ablate_command
    from bib_ray.distributed.plan import load_plan
    from bib_ray.progress import current

    plan, base = load_plan(args.plan)
    from bib_ray.workbench import build_task

    for i in unmatched_overrides(plan, base):
        match = ", ".join(f"{k}={v}" for k, v in plan.overrides[i].match.items())
        print(f"bib-ray: warning: overrides[{i}] (match {match}) matches no cell of {args.plan}; its settings "
              "are not used", file=sys.stderr, flush=True)
    for task_spec in plan.tasks or [base.task]:
        if task_spec.name in ("csv", "npy"):  # the user's own data: its alphabet and warnings, as for run
            _report_data(build_task(task_spec))
    code = ablate_command(args.plan, tracking_uri=args.tracking_uri, address=args.address, resume=args.resume,
                          force=args.force, storage=args.storage, output=args.output)
    current().line("ablation: " + current().summary("cells"))
    return code


def cmd_report(args: argparse.Namespace) -> int:
    from bib_ray.tracking.report import run_report

    return run_report(args.target, tracking_uri=args.tracking_uri, output=args.output, reference=args.reference)


def cmd_cache(args: argparse.Namespace) -> int:
    from bib_ray.cache_command import cache_clear, cache_list, cache_verify

    if args.action == "list":
        return cache_list()
    if args.action == "verify":
        return cache_verify()
    return cache_clear(args.kind, args.task, args.lm)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "memory":
        from bib_ray.bench.memory import main as memory_bench

        return memory_bench(task=args.task, lm=args.lm, designs=args.designs, variant=args.variant,
                            adaptive_eta=args.adaptive_eta, precision=args.precision)
    if args.what == "engine":
        from bib_ray.bench.engine_bench import main as engine_bench

        return engine_bench(task=args.task, variant=args.variant, designs=args.designs, steps=args.steps,
                            loop_designs=args.loop_designs, repeats=args.repeats, device=args.device)
    if args.what == "driver":
        from bib_ray.bench.driver_bench import main as driver_bench

        return driver_bench(workers=args.workers, trials=2000 if args.trials is None else args.trials,
                            steps=100 if args.steps is None else args.steps,
                            replicates=args.replicates, designs=args.designs, sleep_s=args.sleep)
    from bib_ray.bench.search_bench import main as search_bench

    return search_bench(task=args.task, variant=args.variant, steps=args.steps,
                        trials=16 if args.trials is None else args.trials,
                        address=args.address, gpu=args.gpu)


def cmd_tasks(args: argparse.Namespace) -> int:
    from bib_ray.tasks.catalog import describe_task, list_tasks

    text = describe_task(args.name) if args.name else list_tasks()
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `bib-ray tasks tfbind8 | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _add_cluster_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray address: omitted = start a local Ray; 'auto' = the running cluster")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (else $MLFLOW_TRACKING_URI, else "
                   "sqlite:///mlruns.db in the working folder)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run of the same file")
    p.add_argument("--storage", help="folder for Ray Tune's experiment state (default ./bib_ray_runs)")


class OneLineParser(argparse.ArgumentParser):
    """argparse with the project's one-line error format (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"bib-ray: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_INPUT)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="bib-ray", description=(
        "BIB (bidirectional learning for offline biological sequence design): run it, search its "
        "hyperparameters with Ray Tune + Optuna, run ablations, and report from MLflow."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)

    run = sub.add_parser("run", help="design sequences with BIB on one task", description=(
        "Design M sequences with BIB, print a summary table, and write result.json and designs.csv."))
    _add_run_spec_flags(run)
    run.add_argument("--variant", help="forward | backward | fixed | learned | grad (default learned)")
    eta = run.add_mutually_exclusive_group()
    eta.add_argument("--adaptive-eta", dest="adaptive_eta", action="store_true", default=None,
                     help="learn the design learning rate (Adaptive-eta)")
    eta.add_argument("--no-adaptive-eta", dest="adaptive_eta", action="store_false", help="fixed learning rate")
    run.add_argument("--seed", type=int, help="seed (start noise, auxiliary heads)")
    run.add_argument("--steps", type=int, help="design steps (default: 100 for DNA, 25 for protein)")
    run.add_argument("--designs", type=int, help="number of designs M (default 128)")
    run.add_argument("--lr", type=float, help="design learning rate (default 0.1)")
    run.add_argument("--output", default="bib_ray_output", metavar="DIR",
                     help="folder for result.json and designs.csv (default: %(default)s in the working folder)")
    run.add_argument("--force", action="store_true", help="overwrite an --output folder that already holds files")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    pre = sub.add_parser("pretrain", help="pre-train and cache the default small LM for a task",
                         description="Train the small BERT masked LM on the task's sequences and cache it.")
    _add_run_spec_flags(pre)
    pre.set_defaults(func=cmd_pretrain)

    search = sub.add_parser("search", help="hyperparameter search (Ray Tune + Optuna TPE, MLflow)",
                            description="Search BIB hyperparameters over a YAML search space.")
    search.add_argument("space", help="search-space YAML (see search_spaces/bib_default.yaml)")
    _add_cluster_flags(search)
    search.add_argument("--best-output", default="best.yaml", metavar="FILE",
                        help="where to write the best config (a run file for bib-ray run --config)")
    search.add_argument("--optuna-storage", metavar="URL",
                        help="Optuna storage (SQLAlchemy URL) for the search's study, which optuna-dashboard "
                             "and optuna.load_study read (default: sqlite optuna.db beside the MLflow store)")
    search.set_defaults(func=cmd_search)

    ablate = sub.add_parser("ablate", help="run an ablation plan on Ray and log it to MLflow",
                            description="Run every cell of an ablation plan and print the comparison table.")
    ablate.add_argument("plan", help="ablation-plan YAML (see ablations/bib_variants.yaml)")
    _add_cluster_flags(ablate)
    ablate.add_argument("--force", action="store_true", help="re-run cells already finished in MLflow")
    ablate.add_argument("--output", default="ablation_report", metavar="DIR", help="folder for the report files")
    ablate.set_defaults(func=cmd_ablate)

    report = sub.add_parser("report", help="rebuild an ablation's table and plots from MLflow",
                            description="Rebuild the comparison table (Markdown, CSV) and plots (PNG) "
                                        "from MLflow alone, and log them to the parent run.")
    report.add_argument("target", help="parent run id or ablation name")
    report.add_argument("--tracking-uri", help="MLflow tracking URI (as for search)")
    report.add_argument("--output", default="ablation_report", metavar="DIR", help="folder for the report files")
    report.add_argument("--reference", metavar="VARIANT", help="variant label the paired differences compare "
                        "against (default: the plan's reference, else fixed)")
    report.set_defaults(func=cmd_report)

    cache = sub.add_parser("cache", help="list, verify or clear cached LMs, embeddings and auxiliary models",
                           description="The cache ($BIB_RAY_CACHE, else ~/.cache/bib_ray): every entry has a "
                                       "manifest; a corrupt entry is rebuilt when next used.")
    cache_actions = cache.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=OneLineParser)
    cache_actions.add_parser("list", help="kind, task, LM, size and creation time of every entry")
    cache_actions.add_parser("verify", help="check every entry against its manifest (exit code 1 if any is bad)")
    clear = cache_actions.add_parser("clear", help="remove entries (all, or those matching every filter given)")
    clear.add_argument("--kind", choices=["lm", "embeddings", "auxiliary"], help="only entries of this kind")
    clear.add_argument("--task", metavar="NAME", help="only entries of this task (e.g. tfbind8)")
    clear.add_argument("--lm", metavar="TEXT", help="only entries whose LM name contains TEXT")
    cache.set_defaults(func=cmd_cache)

    bench = sub.add_parser("bench", help="benchmarks that print figures",
                           description="engine: batched vs one-at-a-time design steps/s; search: overhead share; "
                                       "memory: a trial's peak memory, estimated from the LM's config; "
                                       "driver: trials per hour the driver takes from many synthetic workers.")
    bench.add_argument("what", choices=["engine", "search", "memory", "driver"], help="which benchmark")
    bench.add_argument("--task", default="tfbind8", help="task (default tfbind8)")
    bench.add_argument("--steps", type=int, default=None, help="design steps per run (driver: per replicate, default 100)")
    bench.add_argument("--designs", type=int, default=128, help="M (engine and memory benchmarks)")
    bench.add_argument("--loop-designs", type=int, default=8,
                       help="designs timed one at a time (the loop's rate is per design, so a sample suffices)")
    bench.add_argument("--trials", type=int, default=None, help="trials (search benchmark: default 16; driver: 2000)")
    bench.add_argument("--workers", type=int, default=64, help="driver benchmark: logical CPUs of the local Ray, "
                       "one synthetic trial each (default 64)")
    bench.add_argument("--replicates", type=int, default=6, help="driver benchmark: replicates per trial (default 6)")
    bench.add_argument("--sleep", type=float, default=0.5, help="driver benchmark: seconds each synthetic trial "
                       "sleeps in place of BIB (default 0.5)")
    bench.add_argument("--repeats", type=int, default=3, help="timed repeats (engine benchmark; the median counts)")
    bench.add_argument("--address", help="search benchmark on a running Ray (e.g. auto) instead of a fresh local one")
    bench.add_argument("--variant", default="learned", help="variant (default learned)")
    bench.add_argument("--device", default="auto", help="engine benchmark: cpu, cuda, cuda:N or auto (default: "
                       "cuda when there is one)")
    bench.add_argument("--gpu", type=float, default=0.0, help="search benchmark: GPU share of each trial (e.g. "
                       "0.25: four trials per GPU; default 0, CPU only)")
    bench.add_argument("--lm", help="memory benchmark: hub id or folder of the LM (its config is read, no "
                       "weights); default: the default small LM's architecture")
    bench.add_argument("--adaptive-eta", action="store_true", help="memory benchmark: with Adaptive-eta")
    bench.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                       help="memory benchmark: the LM's number format (default fp32)")
    bench.set_defaults(func=cmd_bench)

    tasks = sub.add_parser("tasks", help="list the tasks and their options, or one task's choices",
                           description="List the tasks with their options; with NAME, that task's choices "
                                       "(tfbind8: the TF tables; rna: the problems).")
    tasks.add_argument("name", nargs="?", help="a task name, e.g. tfbind8 or rna")
    tasks.set_defaults(func=cmd_tasks)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # MLflow's client writes "View run ... / View experiment at ..." to stdout each time a run on a
    # server ends (two lines per trial); bib-ray prints its own runs-table address once instead.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    from bib_ray.progress import install

    install()  # this command's progress lines: elapsed times count from here
    if args.command in ("search", "ablate", "bench") and not getattr(args, "address", None) \
            and "ray" not in sys.modules:  # a Ray of our own, and Ray not yet imported (it reads the mode once)
        from bib_ray.distributed.tune_job import ask_token_auth_for_local_ray

        ask_token_auth_for_local_ray()
    if args.command in ("search", "ablate"):  # SIGTERM (batch schedulers) stops them as Ctrl-C does
        from bib_ray.distributed.tune_job import handle_sigterm_like_ctrl_c

        handle_sigterm_like_ctrl_c()
    try:
        from bib_ray.preflight import check_command_paths

        check_command_paths(args)  # every path and store the command uses, before any work starts
        return int(args.func(args) or 0)
    except BibInputError as err:
        print(f"bib-ray: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except Terminated:
        print("bib-ray: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("bib-ray: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
