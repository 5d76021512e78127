"""An ablation's comparison table and plots, rebuilt from MLflow alone.

Why from MLflow (not from the driver's memory): the report must be reproducible after the driver is
gone, on another machine, and after a resumed or partly failed ablation. Everything it needs is in the
tracking store: the parent run (tags ``bib_ray.kind=ablation``, ``bib_ray.name``), one child per cell
(tags ``task``, ``variant``, ``adaptive_eta``, ``seed``) whose latest metric values are its final ones,
and the per-step metric histories. Only FINISHED children count; FAILED, KILLED and RUNNING cells are
reported as skipped, never averaged in.

A cell's replicates are its (LM seed, design seed) pairs. Spread is the population standard deviation
over replicates (numpy's default ``ddof=0``): it describes the replicates that were run, it is 0 (not
NaN) for one, and it is what ``np.std`` gives a reader who recomputes the table from the CSV. The 95%
interval is a t interval over LM-seed means (:mod:`bib_ray.tracking.stats` says why); paired
differences against the plan's reference variant, and, with several tasks, ranks across tasks, come
in tables of their own.
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
from bib_ray.tracking.stats import mean_ranks, paired_difference, replicate_interval
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
INTERVAL_COLUMNS = ("max", "median", "mean")  # columns whose Markdown cell shows the 95% interval
PAIRED_COLUMNS = ("max", "median", "mean")
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


KIND_MEMBERS = {"search": "trial", "ablation": "cell"}  # a parent's kind -> what its children are


def is_parent(run, kinds: tuple[str, ...]) -> bool:
    """A parent run of one of ``kinds``: the kind tag (which its children carry too) and no parent of its own."""
    return run.data.tags.get(KIND_TAG) in kinds and PARENT_TAG not in run.data.tags


def is_ablation_parent(run) -> bool:
    """An ablation's parent run."""
    return is_parent(run, ("ablation",))


def find_parent(client_or_store: Any, target: str, kinds: tuple[str, ...] = ("ablation",), fix: str = FIND_FIX):
    """The parent run of one of ``kinds``, from its run id or its name (the most recent parent of that name).

    Why both: a user remembers the plan name; a script holds the run id; a re-run of the same plan makes
    a new parent, and the newest is the one meant. ``fix`` is the hint every error carries.
    """
    from mlflow.exceptions import MlflowException

    client = _client(client_or_store)
    order = [kind for kind in KIND_MEMBERS if kind in kinds]
    noun = " or ".join(order)
    members = " or ".join(KIND_MEMBERS[kind] for kind in order)
    target = str(target).strip()
    if not target:
        raise BibInputError("target", "is empty", fix)
    if _RUN_ID.match(target):
        try:
            run = retrying(lambda: client.get_run(target))
        except MlflowException as err:
            if "RESOURCE_DOES_NOT_EXIST" not in str(err.error_code) and "not found" not in str(err).lower():
                raise
            run = None
        if run is not None and run.info.lifecycle_stage == "deleted":
            raise BibInputError("target", f"run {target} is deleted", "restore it in the MLflow UI, or " + fix)
        if run is not None:
            if is_parent(run, kinds):
                return run
            parent = run.data.tags.get(PARENT_TAG)
            hint = f"; it is a {members} of parent run {parent}" if parent else ""
            article = "an" if noun[0] in "aeiou" else "a"
            raise BibInputError("target", f"run {target} is not {article} {noun} parent run{hint}", fix)
    # Every experiment: the driver names its experiment after the plan, but a user may have moved runs
    # or reused a name under another experiment; the newest parent wins wherever it is.
    ids = _all_experiment_ids(client)
    found = []
    for kind in order:
        filter_string = f"tags.`{KIND_TAG}` = '{kind}' and tags.`{NAME_TAG}` = {_quote(target)}"
        found += [r for r in _search_all(client, ids, filter_string) if is_parent(r, kinds)]
    if not found:
        raise BibInputError("target", f"no {noun} parent run with id or name {target!r}", fix)
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


def _lm_seed(value: str | None) -> int | str | None:
    """The ``lm_seed`` tag: an int, None for an explicit LM (tag ``none``) or a run from before the tag."""
    if value is None or value == "none":
        return None
    return _seed(value)


def _explicit_lm(param: str | None) -> str:
    """The ``lm`` param as logged (MLflow stores ``None`` as the text "None"): ``default`` for bib-ray's LM."""
    return "default" if param in (None, "", "None", "null") else param


def _row(run) -> dict[str, Any]:
    tags = run.data.tags
    return {"run_id": run.info.run_id, "task": tags.get("task_label") or tags.get("task", "?"),
            "variant": variant_label(tags.get("variant", "?"), tags.get("adaptive_eta", "false")),
            "seed": _seed(tags.get("seed")), "lm_seed": _lm_seed(tags.get("lm_seed")),
            "lm": _explicit_lm(run.data.params.get("lm")), "lm_fingerprint": tags.get("lm_fingerprint", ""),
            "cell": tags.get("cell", run.info.run_name or ""), "status": run.info.status,
            "metrics": dict(run.data.metrics)}


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
               ("cell", tags.get("task_label") or tags.get("task"), variant_label(tags.get("variant", "?"), tags.get("adaptive_eta")),
                tags.get("lm_seed"), tags.get("seed")))
        order = (run.info.start_time or 0, run.info.end_time or 0, run.info.run_id)
        if key not in newest or order > newest[key][0]:
            newest[key] = (order, run)
    rows = [_row(run) for _, run in newest.values()]
    return sorted(rows, key=lambda r: (r["task"], variant_sort_key(r["variant"]), _lm_sort_key(r["lm_seed"]),
                                       seed_sort_key(r["seed"]), r["run_id"]))


def _lm_sort_key(lm_seed: int | str | None) -> tuple:
    return (-1, 0, "") if lm_seed is None else seed_sort_key(lm_seed)


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
    """Per (task, variant label): replicates, mean/std over them and a 95% interval, in a stable order.

    Keys: ``task, variant, seeds`` (replicates: LM seed x design seed pairs), ``lm_seeds`` (distinct LMs),
    ``score`` (``normalized`` or ``proxy``: what max/median/mean measure for that task), ``seed_list``,
    ``lm_seed_list``, ``interval_unit`` (``lm_seed``: t over LM-seed means; ``seed``: one LM, t over
    replicates), and ``<column>_mean``, ``<column>_std``, ``<column>_ci_low``, ``<column>_ci_high``,
    ``<column>_metric`` for max, median, mean, edit_distance, offline_proxy_mean. Std is numpy's
    population std (``ddof=0``). A metric missing from some runs is summarised over the runs that have
    it; missing from all gives NaN.
    """
    summary: list[dict[str, Any]] = []
    for task, task_rows in _group(rows, "task").items():
        source = score_source(task_rows)
        groups = _group(task_rows, "variant")
        for label in sorted(groups, key=variant_sort_key):
            group = groups[label]
            lm_seeds = sorted({r["lm_seed"] for r in group}, key=_lm_sort_key)
            entry: dict[str, Any] = {"task": task, "variant": label, "seeds": len(group), "lm_seeds": len(lm_seeds),
                                     "score": source, "lm_seed_list": lm_seeds,
                                     "seed_list": sorted({r["seed"] for r in group}, key=seed_sort_key),
                                     "lm": sorted({r["lm"] for r in group})}
            for column in COLUMNS:
                metric = score_metric(source, column)
                have = [r for r in group if metric in r["metrics"]]
                values = np.array([r["metrics"][metric] for r in have], dtype=float)
                interval = replicate_interval(values, [r["lm_seed"] for r in have])
                entry[f"{column}_mean"] = float(np.mean(values)) if values.size else math.nan
                entry[f"{column}_std"] = float(np.std(values)) if values.size else math.nan
                entry[f"{column}_ci_low"], entry[f"{column}_ci_high"] = interval.low, interval.high
                entry[f"{column}_metric"] = metric
                if column == "max":
                    entry["interval_unit"] = interval.unit
            summary.append(entry)
    return summary


def _group(rows: Iterable[dict[str, Any]], key: str) -> dict[Any, list[dict[str, Any]]]:
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    return {k: groups[k] for k in sorted(groups, key=str)}


def default_reference(labels: Iterable[str]) -> str:
    """``fixed`` when the ablation ran it, else its first variant label."""
    labels = sorted(set(labels), key=variant_sort_key)
    return "fixed" if "fixed" in labels else labels[0]


def paired(rows: list[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """Per task and variant label other than ``reference``: the paired difference variant - reference.

    Pairs share task, LM seed and design seed. Keys: ``task, variant, reference, pairs, interval_unit``,
    and for max, median, mean: ``<column>_diff``, ``<column>_ci_low``, ``<column>_ci_high``,
    ``<column>_p`` (exact sign-flip test) and ``<column>_excludes_zero``. A task without the reference
    variant has no rows here.
    """
    out: list[dict[str, Any]] = []
    for task, task_rows in _group(rows, "task").items():
        source = score_source(task_rows)
        groups = _group(task_rows, "variant")
        if reference not in groups:
            continue
        for label in sorted(groups, key=variant_sort_key):
            if label == reference:
                continue
            entry: dict[str, Any] = {"task": task, "variant": label, "reference": reference, "score": source}
            for column in PAIRED_COLUMNS:
                metric = score_metric(source, column)

                def by_replicate(group: list[dict[str, Any]], metric: str = metric) -> dict[tuple, float]:
                    return {(r["lm_seed"], r["seed"]): r["metrics"][metric] for r in group if metric in r["metrics"]}

                diff = paired_difference(by_replicate(groups[label]), by_replicate(groups[reference]))
                entry["pairs"], entry["interval_unit"] = diff.pairs, diff.interval.unit
                entry[f"{column}_diff"] = diff.mean
                entry[f"{column}_ci_low"], entry[f"{column}_ci_high"] = diff.interval.low, diff.interval.high
                entry[f"{column}_p"] = diff.p_value
                entry[f"{column}_excludes_zero"] = diff.interval.excludes_zero
            out.append(entry)
    return out


def across_tasks(summary: list[dict[str, Any]], paired_rows: list[dict[str, Any]],
                 reference: str) -> list[dict[str, Any]]:
    """Per variant label, over tasks: mean rank of its median (1 = best), and on how many tasks its
    paired median difference to the reference has an interval above 0 (beats) or below 0 (trails)."""
    scores: dict[str, dict[str, float]] = {}
    for entry in summary:
        scores.setdefault(entry["task"], {})[entry["variant"]] = entry["median_mean"]
    ranks = mean_ranks(scores)
    out = []
    for label in sorted(ranks, key=variant_sort_key):
        mine = [p for p in paired_rows if p["variant"] == label]
        out.append({"variant": label, "tasks": sum(label in by_variant for by_variant in scores.values()),
                    "mean_rank": ranks[label], "reference": reference,
                    "median_diff_mean": float(np.mean([p["median_diff"] for p in mine])) if mine else math.nan,
                    "beats_reference": sum(p["median_excludes_zero"] and p["median_diff"] > 0 for p in mine),
                    "trails_reference": sum(p["median_excludes_zero"] and p["median_diff"] < 0 for p in mine),
                    "paired_tasks": len(mine)})
    return out


# --- table text -----------------------------------------------------------------------------------
def _fmt(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3f}"


def _cell(mean: float, std: float, low: float = math.nan, high: float = math.nan, interval: bool = False) -> str:
    if math.isnan(mean):
        return "–"
    text = f"{mean:.3f} ± {std:.3f}"
    return text + (f" [{_fmt(low)}, {_fmt(high)}]" if interval and not math.isnan(low) else "")


def _replicates(entry: dict[str, Any]) -> str:
    n_lm, n_seed = entry["lm_seeds"], len(entry["seed_list"])
    return f"{n_lm}x{n_seed}" if n_lm * n_seed == entry["seeds"] and n_lm > 1 else str(entry["seeds"])


def _interval_note(summary: list[dict[str, Any]]) -> str:
    units = {e["interval_unit"] for e in summary}
    explicit = sorted({lm for e in summary for lm in e["lm"] if lm != "default"})
    if units == {"lm_seed"}:
        text = ("[a, b]: 95% t interval over LM-seed means (design seeds averaged within each LM); "
                "n: LM seeds x design seeds")
    elif units == {"seed"}:
        text = "[a, b]: 95% t interval over design seeds on one LM (it says nothing of another LM)"
    else:
        text = ("[a, b]: 95% t interval over LM-seed means where a row has several LMs, else over design seeds "
                "on one LM")
    if explicit:
        text += f"; one LM given by the plan: {', '.join(explicit)}"
    return text


def to_markdown(summary: list[dict[str, Any]]) -> str:
    """A Markdown table, one row per (task, variant): replicates, "mean ± std [95% interval]" to 3 decimals.

    Tasks without an oracle show proxy scores; a note under the table names them, so a proxy number is
    never read as an oracle one. The note also says what the interval is over.
    """
    head = ["task", "variant", "n"] + [title for _, title in MARKDOWN_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * len(MARKDOWN_COLUMNS)) + "|"]
    for entry in summary:
        cells = [str(entry["task"]), str(entry["variant"]), _replicates(entry)]
        cells += [_cell(entry[f"{key}_mean"], entry[f"{key}_std"], entry[f"{key}_ci_low"], entry[f"{key}_ci_high"],
                        key in INTERVAL_COLUMNS) for key, _ in MARKDOWN_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    proxy_tasks = sorted({e["task"] for e in summary if e["score"] == "proxy"})
    note = "max/median/mean: normalized oracle scores of the final designs; ± is the population std over replicates"
    if summary:
        note += "; " + _interval_note(summary)
    if proxy_tasks:
        note += f"; {', '.join(proxy_tasks)}: no oracle, proxy scores instead"
    return "\n".join(lines) + "\n\n" + note + ".\n"


def paired_markdown(rows: list[dict[str, Any]]) -> str:
    """Paired differences as Markdown: mean difference [95% interval] and the sign-flip p per column;
    ``*`` marks a difference whose interval excludes 0."""
    if not rows:
        return "No paired differences (the reference variant has no finished replicate).\n"
    reference = rows[0]["reference"]
    head = ["task", f"variant - {reference}", "pairs"] + [f"Δ {c} [95% CI]" for c in PAIRED_COLUMNS] + \
        [f"p ({c})" for c in PAIRED_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (2 * len(PAIRED_COLUMNS))) + "|"]
    for row in rows:
        cells = [row["task"], row["variant"], str(row["pairs"])]
        for column in PAIRED_COLUMNS:
            mark = "*" if row[f"{column}_excludes_zero"] else ""
            cells.append(f"{row[f'{column}_diff']:+.3f} [{_fmt(row[f'{column}_ci_low'])}, "
                         f"{_fmt(row[f'{column}_ci_high'])}]{mark}")
        cells += [_fmt(row[f"{column}_p"]) for column in PAIRED_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    units = {r["interval_unit"] for r in rows}
    over = "LM-seed means of the differences" if units == {"lm_seed"} else \
        "differences on one LM (design seeds)" if units == {"seed"} else "LM-seed means (one-LM rows: design seeds)"
    note = (f"Pairs share task, LM seed and design seed. Interval: 95% t interval over {over}; * marks an interval "
            "that excludes 0. p: exact two-sided sign-flip permutation test over the pairs (do the variants "
            "differ on these LMs); the interval is the criterion for a new LM.")
    return "\n".join(lines) + "\n\n" + note + "\n"


def across_tasks_markdown(rows: list[dict[str, Any]]) -> str:
    """The cross-task aggregate as Markdown."""
    if not rows:
        return ""
    reference = rows[0]["reference"]
    lines = [f"| variant | tasks | mean rank (median) | mean Δ median vs {reference} | beats {reference} | "
             f"trails {reference} |", "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        n = row["paired_tasks"]
        diff = "–" if math.isnan(row["median_diff_mean"]) else format(row["median_diff_mean"], "+.3f")
        beats, trails = (f"{row['beats_reference']} of {n}", f"{row['trails_reference']} of {n}") if n else \
            ("(reference)", "(reference)")
        lines.append(f"| {row['variant']} | {row['tasks']} | {row['mean_rank']:.2f} | {diff} | {beats} | {trails} |")
    note = ("Rank 1 = the best mean median on a task (ties share a rank). Beats/trails: tasks on which the paired "
            "median difference's 95% interval lies above/below 0.")
    return "\n".join(lines) + "\n\n" + note + "\n"


def csv_columns() -> list[str]:
    """The CSV header: identifiers, then ``mean, std, ci_low, ci_high`` per column."""
    cols = ["task", "variant", "seeds", "lm_seeds", "score", "interval_unit"]
    for column in COLUMNS:
        cols += [f"{column}_mean", f"{column}_std", f"{column}_ci_low", f"{column}_ci_high"]
    return cols


def paired_csv_columns() -> list[str]:
    """The paired CSV header."""
    cols = ["task", "variant", "reference", "pairs", "score", "interval_unit"]
    for column in PAIRED_COLUMNS:
        cols += [f"{column}_diff", f"{column}_ci_low", f"{column}_ci_high", f"{column}_p", f"{column}_excludes_zero"]
    return cols


def across_tasks_csv_columns() -> list[str]:
    """The cross-task CSV header."""
    return ["variant", "tasks", "mean_rank", "reference", "median_diff_mean", "beats_reference",
            "trails_reference", "paired_tasks"]


def _csv(entries: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for entry in entries:
        row = []
        for col in columns:
            value = entry[col]
            if isinstance(value, bool):
                value = str(value).lower()
            elif isinstance(value, float):
                value = "" if math.isnan(value) else repr(value)
            row.append(value)
        writer.writerow(row)
    return buffer.getvalue()


def to_csv(summary: list[dict[str, Any]]) -> str:
    """The summary as CSV at full precision (floats as shortest round-trip text; missing = empty)."""
    return _csv(summary, csv_columns())


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
    paired: list[dict[str, Any]] = field(default_factory=list)
    paired_md: Path | None = None
    paired_csv: Path | None = None
    paired_png: Path | None = None
    across_tasks: list[dict[str, Any]] = field(default_factory=list)
    across_md: Path | None = None
    across_csv: Path | None = None
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def paths(self) -> list[Path]:
        """The files written, in the order they are logged."""
        files = [self.table_md, self.table_csv, self.paired_md, self.paired_csv, self.across_md, self.across_csv,
                 self.scores_png, self.paired_png, self.trajectory_png]
        return [f for f in files if f is not None]

    @property
    def text(self) -> str:
        """Everything the terminal prints: the table, the paired differences, the cross-task aggregate."""
        parts = [self.markdown]
        if self.paired_md is not None:
            parts.append(f"Paired differences against {self.paired[0]['reference'] if self.paired else 'the reference'}:"
                         f"\n\n{self.paired_md.read_text()}")
        if self.across_md is not None:
            parts.append(f"Across tasks:\n\n{self.across_md.read_text()}")
        return "\n".join(parts)


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


def build_report(store_or_client: Any, parent_id: str, out_dir: str | Path, reference: str | None = None) -> Report:
    """Tables (Markdown, CSV) and plots of an ablation, written and logged.

    ``table``: per task and variant, replicates, mean, std and 95% interval. ``paired``: differences to
    the reference variant (the plan's ``reference``, recorded on the parent run; else ``fixed``).
    ``across_tasks`` (several tasks only): mean rank and tasks won or lost against the reference. Files go
    to ``out_dir`` and, as artifacts, to ``report/`` of the parent run, so the MLflow UI shows the same
    tables the terminal printed. Rebuilding overwrites both (the report is a pure function of the store).
    """
    from bib_ray.tracking.plots import plot_paired, plot_scores, plot_trajectories

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
    if reference is None:
        parent = retrying(lambda: client.get_run(parent_id))
        reference = parent.data.tags.get("reference") or default_reference(r["variant"] for r in rows)
    labels = {r["variant"] for r in rows}
    if reference not in labels:
        raise BibInputError("reference", f"{reference!r} has no finished replicate in this ablation "
                            f"({', '.join(sorted(labels, key=variant_sort_key))})", "name one of those variants")
    summary = summarise(rows)
    markdown = to_markdown(summary)
    csv_text = to_csv(summary)
    paired_rows = paired(rows, reference)
    report = Report(parent_id=parent_id, summary=summary, markdown=markdown, csv=csv_text,
                    table_md=out / "table.md", table_csv=out / "table.csv", scores_png=out / "scores.png",
                    trajectory_png=out / "trajectory.png", paired=paired_rows, paired_md=out / "paired.md",
                    paired_csv=out / "paired.csv", paired_png=out / "paired.png", skipped=skipped)
    report.table_md.write_text(markdown)
    report.table_csv.write_text(csv_text)
    report.paired_md.write_text(paired_markdown(paired_rows))
    report.paired_csv.write_text(_csv(paired_rows, paired_csv_columns()))
    if len(summary) and len({e["task"] for e in summary}) > 1:
        report.across_tasks = across_tasks(summary, paired_rows, reference)
        report.across_md, report.across_csv = out / "across_tasks.md", out / "across_tasks.csv"
        report.across_md.write_text(across_tasks_markdown(report.across_tasks))
        report.across_csv.write_text(_csv(report.across_tasks, across_tasks_csv_columns()))
    plot_scores(rows, summary, report.scores_png)
    plot_paired(paired_rows, report.paired_png)
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
    report = build_report(client, parent.info.run_id, out_dir, getattr(args, "reference", None))
    name = parent.data.tags.get(NAME_TAG, "?")
    print(report.text, end="")
    if report.skipped:
        print("skipped cells: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(report.skipped.items())))
    folder = report.table_md.parent
    print(f"wrote {', '.join(p.name for p in report.paths)} to {folder}")
    print(f"logged them under {REPORT_DIR}/ of parent run {parent.info.run_id} (ablation {name!r}) at {uri}")
    if any("normalized_median" in row["metrics"] for row in collect_cells(client, parent.info.run_id)):
        print_agreement(client, parent, out_dir, uri)  # cells on a task with an oracle: criteria vs oracle
    return 0
