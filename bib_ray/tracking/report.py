"""An ablation's comparison table and plots, rebuilt from MLflow alone.

Why from MLflow (not from the driver's memory): the report must be reproducible after the driver is
gone, on another machine, and after a resumed or partly failed ablation. Everything it needs is in the
tracking store: the parent run (tags ``bib_ray.kind=ablation``, ``bib_ray.name``), one child per cell
(tags ``task``, ``variant``, ``adaptive_eta``, ``seed``) whose latest metric values are its final ones,
and the per-step metric histories. Only FINISHED children count; FAILED, KILLED and RUNNING cells are
reported as skipped, never averaged in.

Spread over seeds is the population standard deviation (numpy's default ``ddof=0``): it describes the
seeds that were run, it is 0 (not NaN) for a single seed, and it is what ``np.std`` gives a reader who
recomputes the table from the CSV.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from bib_ray.errors import BibInputError
from bib_ray.tracking.store import resolve_tracking_uri, retrying

KIND_TAG = "bib_ray.kind"
NAME_TAG = "bib_ray.name"
PARENT_TAG = "mlflow.parentRunId"
VARIANT_ORDER = ("forward", "backward", "fixed", "learned", "grad")
ETA_SUFFIX = "+eta"
REPORT_DIR = "report"
FIND_FIX = "give a parent run id or an ablation name; list them in the MLflow UI"

# Summary columns: name -> (metric when the task has an oracle, metric when it has only the proxy).
COLUMNS: dict[str, tuple[str, str]] = {
    "max": ("normalized_max", "proxy_max"),
    "median": ("normalized_median", "proxy_median"),
    "mean": ("normalized_mean", "proxy_mean"),
    "edit_distance": ("mean_edit_distance", "mean_edit_distance"),
    "offline_proxy_mean": ("offline_proxy_mean", "offline_proxy_mean"),
}
MARKDOWN_COLUMNS = (("max", "max"), ("median", "median"), ("mean", "mean"), ("edit_distance", "edit distance"))
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


# --- lookup -------------------------------------------------------------------------------------
def _client(client_or_store: Any):
    """A :class:`~bib_ray.tracking.store.Store` or an ``MlflowClient``: the client either way."""
    return getattr(client_or_store, "client", client_or_store)


def _quote(value: str) -> str:
    """A string literal for an MLflow filter (which has no escapes: pick the quote the value lacks)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise BibInputError("target", f"{value!r} contains both kinds of quote", FIND_FIX)


def _all_experiment_ids(client) -> list[str]:
    from mlflow.entities import ViewType

    ids: list[str] = []
    token = None
    while True:
        page = retrying(lambda: client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                                          page_token=token))
        ids += [e.experiment_id for e in page]
        token = page.token
        if not token:
            return ids


def _search_all(client, experiment_ids: list[str], filter_string: str) -> list:
    """Every run matching the filter (all pages), experiments queried in chunks a server accepts."""
    runs: list = []
    for start in range(0, len(experiment_ids), 50):
        chunk = experiment_ids[start:start + 50]
        token = None
        while True:
            page = retrying(lambda: client.search_runs(chunk, filter_string, max_results=1000, page_token=token))
            runs += list(page)
            token = page.token
            if not token:
                break
    return runs


def is_ablation_parent(run) -> bool:
    """An ablation's parent: the kind tag (which its cells carry too) and no parent of its own."""
    return run.data.tags.get(KIND_TAG) == "ablation" and PARENT_TAG not in run.data.tags


def find_parent(client_or_store: Any, target: str):
    """The ablation's parent run, from its run id or its name (the most recent parent of that name).

    Why both: a user remembers the plan name; a script holds the run id; a re-run of the same plan makes
    a new parent, and the newest is the one meant.
    """
    from mlflow.exceptions import MlflowException

    client = _client(client_or_store)
    target = str(target).strip()
    if not target:
        raise BibInputError("target", "is empty", FIND_FIX)
    if _RUN_ID.match(target):
        try:
            run = retrying(lambda: client.get_run(target))
        except MlflowException as err:
            if "RESOURCE_DOES_NOT_EXIST" not in str(err.error_code) and "not found" not in str(err).lower():
                raise
            run = None
        if run is not None and run.info.lifecycle_stage == "deleted":
            raise BibInputError("target", f"run {target} is deleted", "restore it in the MLflow UI, or " + FIND_FIX)
        if run is not None:
            if is_ablation_parent(run):
                return run
            parent = run.data.tags.get(PARENT_TAG)
            hint = f"; it is a cell of parent run {parent}" if parent else ""
            raise BibInputError("target", f"run {target} is not an ablation parent run{hint}", FIND_FIX)
    filter_string = f"tags.`{KIND_TAG}` = 'ablation' and tags.`{NAME_TAG}` = {_quote(target)}"
    # Every experiment: the driver names its experiment after the plan, but a user may have moved runs
    # or reused a name under another experiment; the newest parent wins wherever it is.
    found = [r for r in _search_all(client, _all_experiment_ids(client), filter_string)
             if is_ablation_parent(r)]
    if not found:
        raise BibInputError("target", f"no ablation parent run with id or name {target!r}", FIND_FIX)
    return max(found, key=lambda r: (r.info.start_time or 0, r.info.run_id))


# --- rows and summary -----------------------------------------------------------------------------
def variant_label(variant: str, adaptive_eta: Any) -> str:
    """``learned`` or ``learned+eta``: the variant as the table names it."""
    eta = str(adaptive_eta).strip().lower() == "true"
    return f"{variant}{ETA_SUFFIX if eta else ''}"


def _seed(value: str | None) -> int | str:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return str(value)


def _row(run) -> dict[str, Any]:
    tags = run.data.tags
    return {"run_id": run.info.run_id, "task": tags.get("task", "?"),
            "variant": variant_label(tags.get("variant", "?"), tags.get("adaptive_eta", "false")),
            "seed": _seed(tags.get("seed")), "cell": tags.get("cell", run.info.run_name or ""),
            "status": run.info.status, "metrics": dict(run.data.metrics)}


def child_runs(client_or_store: Any, parent_id: str) -> list:
    """Every (non-deleted) child run of the parent, whatever its status."""
    client = _client(client_or_store)
    parent = retrying(lambda: client.get_run(parent_id))
    return _search_all(client, [parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent_id}'")


def collect_cells(client_or_store: Any, parent_id: str, children: Iterable | None = None) -> list[dict[str, Any]]:
    """One row per FINISHED cell: ``run_id, task, variant`` (label), ``seed, cell, status, metrics``.

    ``metrics`` holds ``run.data.metrics``, i.e. each metric's latest value, which is the final record
    the driver logs at step T+1. Why only FINISHED: a failed or killed cell has partial or no finals and
    would bias a mean. A cell finished twice (a ``--force`` re-run as a new child) counts once, by its
    newest run, so it cannot pass for an extra seed; cells are told apart by the ``cell_key`` tag, else by
    (task, variant label, seed). Pass ``children`` (runs already fetched) to avoid a second search.
    """
    runs = child_runs(client_or_store, parent_id) if children is None else list(children)
    newest: dict[tuple, Any] = {}
    for run in runs:
        if run.info.status != "FINISHED":
            continue
        tags = run.data.tags
        key = (("key", tags["cell_key"]) if tags.get("cell_key") else
               ("cell", tags.get("task"), variant_label(tags.get("variant", "?"), tags.get("adaptive_eta")),
                tags.get("seed")))
        order = (run.info.start_time or 0, run.info.end_time or 0, run.info.run_id)
        if key not in newest or order > newest[key][0]:
            newest[key] = (order, run)
    rows = [_row(run) for _, run in newest.values()]
    return sorted(rows, key=lambda r: (r["task"], variant_sort_key(r["variant"]), seed_sort_key(r["seed"]),
                                       r["run_id"]))


def seed_sort_key(seed: int | str) -> tuple:
    """Integer seeds in numeric order (2 before 10), any other seed tag after them by text."""
    return (0, seed, "") if isinstance(seed, int) else (1, 0, str(seed))


def variant_sort_key(label: str) -> tuple:
    """forward, forward+eta, backward, ..., grad+eta; unknown variants after, by name."""
    eta = label.endswith(ETA_SUFFIX)
    base = label[:-len(ETA_SUFFIX)] if eta else label
    rank = VARIANT_ORDER.index(base) if base in VARIANT_ORDER else len(VARIANT_ORDER)
    return (rank, base, eta)


def score_source(rows: Iterable[dict[str, Any]]) -> str:
    """``normalized`` when every row has the oracle's ``normalized_max``, else ``proxy``."""
    rows = list(rows)
    return "normalized" if rows and all("normalized_max" in r["metrics"] for r in rows) else "proxy"


def score_metric(source: str, column: str = "max") -> str:
    """The MLflow metric behind a summary column for a score source (``normalized_max``, ``proxy_max``)."""
    oracle, proxy = COLUMNS[column]
    return oracle if source == "normalized" else proxy


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, variant label): seeds and mean/std over seeds of each column, in a stable order.

    Keys: ``task, variant, seeds, score`` (``normalized`` or ``proxy``: what max/median/mean measure for
    that task), ``seed_list``, and ``<column>_mean``, ``<column>_std``, ``<column>_metric`` for max,
    median, mean, edit_distance, offline_proxy_mean. Std is numpy's population std (``ddof=0``). A metric
    missing from some runs is averaged over the runs that have it; missing from all gives NaN.
    """
    by_task: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    summary: list[dict[str, Any]] = []
    for task in sorted(by_task):
        source = score_source(by_task[task])
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in by_task[task]:
            groups.setdefault(row["variant"], []).append(row)
        for label in sorted(groups, key=variant_sort_key):
            group = groups[label]
            entry: dict[str, Any] = {"task": task, "variant": label, "seeds": len(group), "score": source,
                                     "seed_list": sorted((r["seed"] for r in group), key=seed_sort_key)}
            for column in COLUMNS:
                metric = score_metric(source, column)
                values = np.array([r["metrics"][metric] for r in group if metric in r["metrics"]], dtype=float)
                entry[f"{column}_mean"] = float(np.mean(values)) if values.size else math.nan
                entry[f"{column}_std"] = float(np.std(values)) if values.size else math.nan
                entry[f"{column}_metric"] = metric
            summary.append(entry)
    return summary


# --- table text -----------------------------------------------------------------------------------
def _cell(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.3f} ± {std:.3f}"


def to_markdown(summary: list[dict[str, Any]]) -> str:
    """A Markdown table, one row per (task, variant), "mean ± std" over seeds to 3 decimals.

    Tasks without an oracle show proxy scores; a note under the table names them, so a proxy number is
    never read as an oracle one.
    """
    head = ["task", "variant", "seeds"] + [title for _, title in MARKDOWN_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * len(MARKDOWN_COLUMNS)) + "|"]
    for entry in summary:
        cells = [str(entry["task"]), str(entry["variant"]), str(entry["seeds"])]
        cells += [_cell(entry[f"{key}_mean"], entry[f"{key}_std"]) for key, _ in MARKDOWN_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    proxy_tasks = sorted({e["task"] for e in summary if e["score"] == "proxy"})
    note = "max/median/mean: normalized oracle scores of the final designs; ± is the population std over seeds"
    if proxy_tasks:
        note += f"; {', '.join(proxy_tasks)}: no oracle, proxy scores instead"
    return "\n".join(lines) + "\n\n" + note + ".\n"


def csv_columns() -> list[str]:
    """The CSV header: identifiers, then ``<column>_mean, <column>_std`` pairs."""
    cols = ["task", "variant", "seeds", "score"]
    for column in COLUMNS:
        cols += [f"{column}_mean", f"{column}_std"]
    return cols


def to_csv(summary: list[dict[str, Any]]) -> str:
    """The summary as CSV at full precision (floats as shortest round-trip text; missing = empty)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_columns())
    for entry in summary:
        row = []
        for col in csv_columns():
            value = entry[col]
            if isinstance(value, float):
                value = "" if math.isnan(value) else repr(value)
            row.append(value)
        writer.writerow(row)
    return buffer.getvalue()


# --- report ---------------------------------------------------------------------------------------
@dataclass
class Report:
    """What :func:`build_report` wrote (locally and under ``report/`` of the parent run)."""

    parent_id: str
    summary: list[dict[str, Any]]
    markdown: str
    csv: str
    table_md: Path
    table_csv: Path
    scores_png: Path
    trajectory_png: Path
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def paths(self) -> list[Path]:
        """The four files, in the order they are logged."""
        return [self.table_md, self.table_csv, self.scores_png, self.trajectory_png]


def _prepare_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BibInputError("--output", f"{str(out)!r} is a file, not a folder", "give a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BibInputError("--output", f"cannot create folder {str(out)!r}: {err.strerror}",
                            "give a writable folder") from None
    return out


def build_report(store_or_client: Any, parent_id: str, out_dir: str | Path) -> Report:
    """Table (Markdown, CSV) and plots (scores, trajectories) of an ablation, written and logged.

    Files go to ``out_dir`` and, as artifacts, to ``report/`` of the parent run, so the MLflow UI shows
    the same table the terminal printed. Rebuilding overwrites both (the report is a pure function of
    the store).
    """
    from bib_ray.tracking.plots import plot_scores, plot_trajectories

    client = _client(store_or_client)
    children = child_runs(client, parent_id)
    rows = collect_cells(client, parent_id, children)
    skipped: dict[str, int] = {}
    for run in children:
        if run.info.status != "FINISHED":
            skipped[run.info.status] = skipped.get(run.info.status, 0) + 1
    if not rows:
        states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(skipped.items())) or "no cells"
        raise BibInputError("report", f"ablation parent run {parent_id} has no finished cells ({states})",
                            "let `bib-ray ablate` finish a cell, or resume it with --resume")
    out = _prepare_dir(out_dir)
    summary = summarise(rows)
    markdown = to_markdown(summary)
    csv_text = to_csv(summary)
    report = Report(parent_id=parent_id, summary=summary, markdown=markdown, csv=csv_text,
                    table_md=out / "table.md", table_csv=out / "table.csv", scores_png=out / "scores.png",
                    trajectory_png=out / "trajectory.png", skipped=skipped)
    report.table_md.write_text(markdown)
    report.table_csv.write_text(csv_text)
    plot_scores(rows, report.scores_png)
    plot_trajectories(client, rows, report.trajectory_png)
    for path in report.paths:
        retrying(lambda path=path: client.log_artifact(parent_id, str(path), REPORT_DIR))
    return report


def _check_store(uri: str) -> None:
    """A SQLite store that does not exist is a wrong folder or URI: say so, do not create an empty one."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.is_file():
            raise BibInputError("tracking-uri", f"no MLflow store at {str(db)!r}",
                                "run from the folder you ran the ablation in, or give --tracking-uri")


def _is_unreachable(err: Exception) -> bool:
    text = str(err)
    return ("Max retries exceeded" in text or "Connection refused" in text or "Failed to establish" in text
            or "Name or service not known" in text)


def run_report_command(args: Any) -> int:
    """``bib-ray report TARGET``: find the parent, rebuild and log the report, print the table."""
    uri = resolve_tracking_uri(getattr(args, "tracking_uri", None))
    _check_store(uri)
    from mlflow.tracking import MlflowClient

    from bib_ray.tracking.agreement import find_report_parent, print_agreement

    client = MlflowClient(tracking_uri=uri)
    try:
        parent = find_report_parent(client, args.target)  # an ablation's or a search's parent
    except BibInputError:
        raise
    except Exception as err:  # noqa: BLE001 - only an unreachable server becomes a user error
        if _is_unreachable(err):
            raise BibInputError("tracking-uri", f"cannot reach the MLflow server at {uri}",
                                "start it or give another --tracking-uri") from None
        raise
    out_dir = getattr(args, "output", None) or "ablation_report"
    if parent.data.tags.get(KIND_TAG) == "search":  # a search's report is the criteria's agreement table
        print_agreement(client, parent, out_dir, uri)
        return 0
    report = build_report(client, parent.info.run_id, out_dir)
    name = parent.data.tags.get(NAME_TAG, "?")
    print(report.markdown, end="")
    if report.skipped:
        print("skipped cells: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(report.skipped.items())))
    folder = report.table_md.parent
    print(f"wrote {', '.join(p.name for p in report.paths)} to {folder}")
    print(f"logged them under {REPORT_DIR}/ of parent run {parent.info.run_id} (ablation {name!r}) at {uri}")
    if any("normalized_median" in row["metrics"] for row in collect_cells(client, parent.info.run_id)):
        print_agreement(client, parent, out_dir, uri)  # cells on a task with an oracle: criteria vs oracle
    return 0
