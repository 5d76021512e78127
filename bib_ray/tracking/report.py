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

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from bib_ray.errors import BibInputError
from bib_ray.tracking.conclusions import (DEFAULT_PRIMARY, Conclusions, InferenceSettings, conclude, conclusions_csv,
                                          conclusions_markdown, pooled_csv)
from bib_ray.tracking.history import metric_per_step, seed_band
from bib_ray.tracking.output import csv_text, prepare_output_dir
from bib_ray.tracking.plots import TrajectoryPanel, plot_paired, plot_scores, plot_trajectories
from bib_ray.tracking.runs import (COLUMNS, KIND_TAG, NAME_TAG, child_runs, client_of, collect_cells,
                                   lm_seed_sort_key, score_metric, score_source, seed_sort_key, variant_sort_key)
from bib_ray.tracking.runs import find_parent, is_ablation_parent, variant_label  # noqa: F401 - callers import them here
from bib_ray.tracking.stats import mean_ranks, paired_difference, replicate_interval
from bib_ray.tracking.store import resolve_tracking_uri, retrying

REPORT_DIR = "report"
PRIMARY_TAG = "primary_metric"
DEFAULT_OUTPUT = "ablation_report"
MARKDOWN_COLUMNS = (("max", "max"), ("median", "median"), ("mean", "mean"), ("edit_distance", "edit distance"))
INTERVAL_COLUMNS = ("max", "median", "mean")  # columns whose Markdown cell shows the 95% interval
PAIRED_COLUMNS = ("max", "median", "mean")


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
            lm_seeds = sorted({r["lm_seed"] for r in group}, key=lm_seed_sort_key)
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


def paired(rows: list[dict[str, Any]], reference: str, conclusions: Conclusions | None = None) -> list[dict[str, Any]]:
    """Per task and variant label other than ``reference``: the paired difference variant - reference.

    Pairs share task, LM seed and design seed. Keys: ``task, variant, reference, pairs, interval_unit``,
    and for max, median, mean: ``<column>_diff``, ``<column>_ci_low``, ``<column>_ci_high`` (the
    unadjusted 95% t interval over LM-seed means), ``<column>_p`` (exact sign-flip test, unadjusted) and
    ``<column>_excludes_zero`` (of that unadjusted interval). With ``conclusions`` (the report's
    family-adjusted verdicts) also ``<column>_adj_low``, ``<column>_adj_high``, ``<column>_p_adj`` and
    ``<column>_verdict``: what the table marks. A task without the reference variant has no rows here.
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
                found = conclusions.find(str(task), label, metric) if conclusions is not None else None
                entry[f"{column}_adj_low"] = found.low if found else math.nan
                entry[f"{column}_adj_high"] = found.high if found else math.nan
                entry[f"{column}_p_adj"] = found.p_adjusted if found else math.nan
                entry[f"{column}_verdict"] = found.verdict if found else "unresolved"
            out.append(entry)
    return out


def across_tasks(summary: list[dict[str, Any]], paired_rows: list[dict[str, Any]],
                 reference: str, conclusions: Conclusions | None = None) -> list[dict[str, Any]]:
    """Per variant label, over tasks: mean rank of its median (1 = best), on how many tasks it is
    ``better`` or ``worse`` than the reference on the primary metric (the family-adjusted verdicts), and
    the random-effects pooled primary effect with its interval, tau^2, I^2 and verdict."""
    scores: dict[str, dict[str, float]] = {}
    for entry in summary:
        scores.setdefault(entry["task"], {})[entry["variant"]] = entry["median_mean"]
    ranks = mean_ranks(scores)
    primary = conclusions.primary() if conclusions is not None else []
    pooled = {p.variant: p for p in conclusions.pooled} if conclusions is not None else {}
    nan = math.nan
    out = []
    for label in sorted(ranks, key=variant_sort_key):
        mine = [p for p in paired_rows if p["variant"] == label]
        verdicts = [c.verdict for c in primary if c.variant == label]
        effect = pooled.get(label)
        out.append({"variant": label, "tasks": sum(label in by_variant for by_variant in scores.values()),
                    "mean_rank": ranks[label], "reference": reference,
                    "median_diff_mean": float(np.mean([p["median_diff"] for p in mine])) if mine else math.nan,
                    "beats_reference": verdicts.count("better"), "trails_reference": verdicts.count("worse"),
                    "paired_tasks": len(mine),
                    "primary_metric": conclusions.settings.primary_metric if conclusions is not None else "",
                    "pooled_estimate": effect.estimate if effect else nan, "pooled_low": effect.low if effect else nan,
                    "pooled_high": effect.high if effect else nan, "pooled_tau2": effect.tau2 if effect else nan,
                    "pooled_i2": effect.i2 if effect else nan,
                    "pooled_verdict": effect.verdict if effect else ""})
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
    """Paired differences as Markdown: mean difference [simultaneous 95% interval] and the Holm-adjusted p
    per column; ``*`` marks a difference whose family-adjusted verdict is better or worse."""
    if not rows:
        return "No paired differences (the reference variant has no finished replicate).\n"
    reference = rows[0]["reference"]
    head = ["task", f"variant - {reference}", "pairs"] + [f"Δ {c} [adj. 95% CI]" for c in PAIRED_COLUMNS] + \
        [f"adj. p ({c})" for c in PAIRED_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (2 * len(PAIRED_COLUMNS))) + "|"]
    for row in rows:
        cells = [row["task"], row["variant"], str(row["pairs"])]
        for column in PAIRED_COLUMNS:
            mark = "*" if row.get(f"{column}_verdict", "unresolved") != "unresolved" else ""
            cells.append(f"{row[f'{column}_diff']:+.3f} [{_fmt(row.get(f'{column}_adj_low', math.nan))}, "
                         f"{_fmt(row.get(f'{column}_adj_high', math.nan))}]{mark}")
        cells += [_fmt(row.get(f"{column}_p_adj", math.nan)) for column in PAIRED_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    units = {r["interval_unit"] for r in rows}
    over = "LM-seed means of the differences" if units == {"lm_seed"} else \
        "differences on one LM (design seeds)" if units == {"seed"} else "LM-seed means (one-LM rows: design seeds)"
    note = (f"Pairs share task, LM seed and design seed. Each column is a family (every variant x task comparison "
            f"of that metric): interval: Bonferroni t interval over {over}, simultaneous over the family (Stein's "
            "two-stage interval for the primary metric of a replicated plan); adj. p: Holm's step-down over the "
            "family; * marks adj. p < 0.05. The unadjusted 95% intervals and the exact sign-flip p-values are in "
            "paired.csv; the verdicts in conclusions.md.")
    return "\n".join(lines) + "\n\n" + note + "\n"


def across_tasks_markdown(rows: list[dict[str, Any]]) -> str:
    """The cross-task aggregate as Markdown."""
    if not rows:
        return ""
    reference = rows[0]["reference"]
    metric = rows[0].get("primary_metric") or "median"
    lines = [f"| variant | tasks | mean rank (median) | mean Δ median vs {reference} | better than {reference} | "
             f"worse than {reference} | pooled Δ {metric} [adj. 95% CI] | tau^2 | I^2 | pooled verdict |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        n = row["paired_tasks"]
        diff = "–" if math.isnan(row["median_diff_mean"]) else format(row["median_diff_mean"], "+.3f")
        beats, trails = (f"{row['beats_reference']} of {n}", f"{row['trails_reference']} of {n}") if n else \
            ("(reference)", "(reference)")
        pooled = "–" if math.isnan(row.get("pooled_estimate", math.nan)) else \
            f"{row['pooled_estimate']:+.3f} [{_fmt(row['pooled_low'])}, {_fmt(row['pooled_high'])}]"
        tau2 = "–" if math.isnan(row.get("pooled_tau2", math.nan)) else f"{row['pooled_tau2']:.4f}"
        i2 = "–" if math.isnan(row.get("pooled_i2", math.nan)) else f"{100 * row['pooled_i2']:.0f}%"
        lines.append(f"| {row['variant']} | {row['tasks']} | {row['mean_rank']:.2f} | {diff} | {beats} | {trails} | "
                     f"{pooled} | {tau2} | {i2} | {row.get('pooled_verdict') or '–'} |")
    note = (f"Rank 1 = the best mean median on a task (ties share a rank). Better/worse: tasks on which the "
            f"family-adjusted verdict on {metric} is better/worse (conclusions.md). Pooled: DerSimonian-Laird random "
            "effects over the tasks' paired effects, Hartung-Knapp-Sidik-Jonkman interval at the Bonferroni level "
            "over the variants pooled, Holm-adjusted verdict.")
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
        cols += [f"{column}_diff", f"{column}_ci_low", f"{column}_ci_high", f"{column}_p", f"{column}_excludes_zero",
                 f"{column}_adj_low", f"{column}_adj_high", f"{column}_p_adj", f"{column}_verdict"]
    return cols


def across_tasks_csv_columns() -> list[str]:
    """The cross-task CSV header."""
    return ["variant", "tasks", "mean_rank", "reference", "median_diff_mean", "beats_reference",
            "trails_reference", "paired_tasks", "primary_metric", "pooled_estimate", "pooled_low", "pooled_high",
            "pooled_tau2", "pooled_i2", "pooled_verdict"]


def to_csv(summary: list[dict[str, Any]]) -> str:
    """The summary as CSV at full precision (floats as shortest round-trip text; missing = empty)."""
    return csv_text(summary, csv_columns())


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
    conclusions: Conclusions | None = None
    conclusions_md: Path | None = None
    conclusions_csv: Path | None = None
    pooled_csv: Path | None = None

    @property
    def paths(self) -> list[Path]:
        """The files written, in the order they are logged."""
        files = [self.table_md, self.table_csv, self.paired_md, self.paired_csv, self.across_md, self.across_csv,
                 self.conclusions_md, self.conclusions_csv, self.pooled_csv,
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
        if self.conclusions_md is not None:
            parts.append(f"Verdicts:\n\n{self.conclusions_md.read_text()}")
        return "\n".join(parts)


def trajectory_data(client: Any, rows: list[dict[str, Any]], metric: str) -> dict[str, dict[str, np.ndarray]]:
    """Per variant label (table order): ``steps`` and the ``mean``, ``min``, ``max`` over the rows' runs of
    ``metric`` at each design step, read from the runs' MLflow histories (final records left out, see
    :mod:`bib_ray.tracking.history`). A step some seed lacks is summarised over the seeds that have it."""
    labels = sorted({r["variant"] for r in rows}, key=variant_sort_key)
    return {label: seed_band(metric_per_step(client, r["run_id"], metric) for r in rows if r["variant"] == label)
            for label in labels}


def trajectory_panels(client: Any, rows: list[dict[str, Any]]) -> list[TrajectoryPanel]:
    """One :class:`~bib_ray.tracking.plots.TrajectoryPanel` per task: the max score (normalized with an
    oracle, else the proxy's) per design step and variant."""
    panels = []
    for task, task_rows in _group(rows, "task").items():
        source = score_source(task_rows)
        metric = score_metric(source, "max")
        panels.append(TrajectoryPanel(task=str(task), metric=metric, lines=trajectory_data(client, task_rows, metric),
                                      proxy=source != "normalized"))
    return panels


def secondary_metrics(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """The score metrics of the summary columns (max, median, mean) for every task's score source."""
    names: list[str] = []
    for task_rows in _group(rows, "task").values():
        source = score_source(task_rows)
        names += [score_metric(source, c) for c in PAIRED_COLUMNS if score_metric(source, c) not in names]
    return tuple(names)


def settings_from_tags(tags: dict[str, str], rows: list[dict[str, Any]]) -> InferenceSettings:
    """The plan's inference settings as the driver recorded them on the parent run (defaults for a parent
    from before they were recorded: primary ``normalized_median``, no two-stage replication)."""
    def number(key: str, kind: type) -> Any:
        value = tags.get(key)
        return None if value in (None, "", "None") else kind(value)

    return InferenceSettings(primary_metric=tags.get(PRIMARY_TAG) or DEFAULT_PRIMARY,
                             secondary_metrics=secondary_metrics(rows),
                             initial_lm_seeds=number("replication.initial_lm_seeds", int),
                             target_half_width=number("replication.target_half_width", float),
                             max_lm_seeds=number("replication.max_lm_seeds", int))


def build_report(store_or_client: Any, parent_id: str, out_dir: str | Path, reference: str | None = None) -> Report:
    """Tables (Markdown, CSV) and plots of an ablation, written and logged.

    ``table``: per task and variant, replicates, mean, std and 95% interval. ``paired``: differences to
    the reference variant (the plan's ``reference``, recorded on the parent run; else ``fixed``).
    ``across_tasks`` (several tasks only): mean rank and tasks won or lost against the reference. Files go
    to ``out_dir`` and, as artifacts, to ``report/`` of the parent run, so the MLflow UI shows the same
    tables the terminal printed. Rebuilding overwrites both (the report is a pure function of the store).
    """
    client = client_of(store_or_client)
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
    out = prepare_output_dir(out_dir)
    parent = retrying(lambda: client.get_run(parent_id))
    if reference is None:
        reference = parent.data.tags.get("reference") or default_reference(r["variant"] for r in rows)
    labels = {r["variant"] for r in rows}
    if reference not in labels:
        raise BibInputError("reference", f"{reference!r} has no finished replicate in this ablation "
                            f"({', '.join(sorted(labels, key=variant_sort_key))})", "name one of those variants")
    summary = summarise(rows)
    markdown = to_markdown(summary)
    table_csv = to_csv(summary)
    conclusions = conclude(rows, reference, settings_from_tags(parent.data.tags, rows))
    paired_rows = paired(rows, reference, conclusions)
    report = Report(parent_id=parent_id, summary=summary, markdown=markdown, csv=table_csv,
                    table_md=out / "table.md", table_csv=out / "table.csv", scores_png=out / "scores.png",
                    trajectory_png=out / "trajectory.png", paired=paired_rows, paired_md=out / "paired.md",
                    paired_csv=out / "paired.csv", paired_png=out / "paired.png", skipped=skipped,
                    conclusions=conclusions, conclusions_md=out / "conclusions.md",
                    conclusions_csv=out / "conclusions.csv")
    report.table_md.write_text(markdown)
    report.table_csv.write_text(table_csv)
    report.paired_md.write_text(paired_markdown(paired_rows))
    report.paired_csv.write_text(csv_text(paired_rows, paired_csv_columns()))
    if len(summary) and len({e["task"] for e in summary}) > 1:
        report.across_tasks = across_tasks(summary, paired_rows, reference, conclusions)
        report.across_md, report.across_csv = out / "across_tasks.md", out / "across_tasks.csv"
        report.across_md.write_text(across_tasks_markdown(report.across_tasks))
        report.across_csv.write_text(csv_text(report.across_tasks, across_tasks_csv_columns()))
    report.conclusions_md.write_text(conclusions_markdown(conclusions, (r.get("machine", "unrecorded") for r in rows)))
    report.conclusions_csv.write_text(conclusions_csv(conclusions))
    if conclusions.pooled:
        report.pooled_csv = out / "pooled.csv"
        report.pooled_csv.write_text(pooled_csv(conclusions))
    plot_scores(rows, summary, report.scores_png)
    plot_paired(paired_rows, report.paired_png)
    plot_trajectories(trajectory_panels(client, rows), report.trajectory_png)
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


def run_report(target: str, tracking_uri: str | None = None, output: str | Path = DEFAULT_OUTPUT,
               reference: str | None = None) -> int:
    """``bib-ray report TARGET``: find the parent (an ablation's or a search's, by run id or name), rebuild
    and log its report, print the tables; 0 when done. Bad input raises :class:`BibInputError`.

    ``tracking_uri``: else $MLFLOW_TRACKING_URI, else ``sqlite:///mlruns.db`` here; ``output``: the local
    folder for the files; ``reference``: the variant label paired differences compare against (else the
    plan's). A search's report is the criteria's agreement table; an ablation's is its comparison table,
    plus the agreement table when its cells ran on a task with an oracle.
    """
    uri = resolve_tracking_uri(tracking_uri)
    _check_store(uri)
    from mlflow.tracking import MlflowClient

    from bib_ray.tracking.agreement import find_report_parent, print_agreement

    client = MlflowClient(tracking_uri=uri)
    try:
        parent = find_report_parent(client, target)  # an ablation's or a search's parent
    except BibInputError:
        raise
    except Exception as err:  # noqa: BLE001 - only an unreachable server becomes a user error
        if _is_unreachable(err):
            raise BibInputError("tracking-uri", f"cannot reach the MLflow server at {uri}",
                                "start it or give another --tracking-uri") from None
        raise
    out_dir = output or DEFAULT_OUTPUT
    if parent.data.tags.get(KIND_TAG) == "search":  # a search's report is the criteria's agreement table
        print_agreement(client, parent, out_dir, uri)
        return 0
    report = build_report(client, parent.info.run_id, out_dir, reference)
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
