"""Agreement of the offline-safe criteria with the oracle, across the trials of a search (or an ablation's cells).

Why: a user with their own data must pick hyperparameters by an offline-safe criterion; on a benchmark
task bib-ray has both sides of every trial, so it can measure which criterion picks what the oracle picks.
For each criterion (bib_ray.criteria) and task: Spearman and Kendall correlation across trials with the
oracle's median and max of the final designs, each with a bootstrap 95% interval (trials resampled with
replacement), and the regret of choosing by the criterion: the oracle-best trial's median minus the oracle
median of the criterion's top-1 trial (and minus the mean of its top 3).

Conventions. Correlations are oriented so that positive means "the trials the criterion prefers have
higher oracle scores": a criterion to be minimised (``offline_nearest_distance``) is negated first. Ties in
the criterion (a trial-level criterion shared by trials with the same LM and ``beta_scale``) are broken at
random in expectation: the top-k mean gives each tied trial at the boundary an equal share. Only trials
that ran to the end (their final record, with ``design_seconds``, is logged) count; trials stopped early
by ASHA are left out and counted. Everything is read from MLflow, so the report can be rebuilt anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from bib_ray.criteria import CRITERIA, CRITERIA_BY_NAME
from bib_ray.errors import BibInputError
from bib_ray.tracking.agreement_plots import plot_agreement
from bib_ray.tracking.history import FINAL_METRIC
from bib_ray.tracking.metric_keys import named_metrics
from bib_ray.tracking.output import csv_text, prepare_output_dir
from bib_ray.tracking.runs import KIND_TAG, NAME_TAG, child_runs, collect_cells, find_parent
from bib_ray.tracking.store import retrying

ORACLE_MEDIAN = "normalized_median"
ORACLE_MAX = "normalized_max"
REPORT_DIR = "report"
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0
PARENT_KINDS = ("ablation", "search")
FIND_FIX = "give a search or ablation parent run id or name; list them in the MLflow UI"
STATS = ("spearman_median", "spearman_max", "kendall_median", "kendall_max")


# --- finding the parent ----------------------------------------------------------------------------
def find_report_parent(client, target: str):
    """The parent run of a search or an ablation, by run id or by name (the newest parent of that name)."""
    return find_parent(client, target, kinds=PARENT_KINDS, fix=FIND_FIX)


# --- rows --------------------------------------------------------------------------------------------
def trial_rows(client, parent) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Finished trials (searches) or cells (ablations) that ran to the end: ``run_id, name, task, metrics``;
    and how many children were left out, by reason."""
    parent_id = parent.info.run_id
    children = child_runs(client, parent_id)
    left_out: dict[str, int] = {}
    for run in children:
        if run.info.status != "FINISHED":
            left_out[run.info.status.lower()] = left_out.get(run.info.status.lower(), 0) + 1
    if parent.data.tags.get(KIND_TAG) == "ablation":
        finished = [{"run_id": r["run_id"], "name": r["cell"], "task": r["task"], "metrics": r["metrics"]}
                    for r in collect_cells(client, parent_id, children)]
    else:
        finished = [{"run_id": r.info.run_id, "name": r.info.run_name or r.info.run_id,
                     "task": r.data.tags.get("task", "?"), "metrics": named_metrics(r.data.metrics)}
                    for r in children if r.info.status == "FINISHED"]
    rows = [r for r in finished if FINAL_METRIC in r["metrics"]]
    if len(rows) < len(finished):
        left_out["stopped early"] = len(finished) - len(rows)
    return sorted(rows, key=lambda r: (r["task"], r["name"], r["run_id"])), left_out


# --- statistics --------------------------------------------------------------------------------------
def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of (B, n) arrays (average ranks for ties, as scipy); NaN for a row
    where either side is constant. Vectorised so a 1000-resample bootstrap costs milliseconds."""
    from scipy.stats import rankdata

    ra, rb = rankdata(np.atleast_2d(a), axis=1), rankdata(np.atleast_2d(b), axis=1)
    ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
    denom = np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(1) / np.where(denom > 0, denom, 1.0), np.nan)


def kendall_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair of (B, n) arrays (scipy's default variant); NaN where either side
    is constant: (concordant - discordant) / sqrt((pairs - ties in a) (pairs - ties in b))."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    sa = np.sign(a[:, :, None] - a[:, None, :])
    sb = np.sign(b[:, :, None] - b[:, None, :])
    upper = np.triu(np.ones(a.shape[1], dtype=bool), 1)
    score = (sa * sb)[:, upper].sum(1)
    na, nb = np.abs(sa)[:, upper].sum(1), np.abs(sb)[:, upper].sum(1)
    denom = np.sqrt(na * nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, score / np.where(denom > 0, denom, 1.0), np.nan)


def bootstrap_interval(a: np.ndarray, b: np.ndarray, stat: Callable[[np.ndarray, np.ndarray], np.ndarray],
                       samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile 95% interval of a row-wise statistic (:func:`spearman_rows`, :func:`kendall_rows`) over
    trials resampled with replacement; resamples where it is undefined (a constant resample) are dropped;
    NaNs with fewer than 3 trials."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = len(a)
    if n < 3:
        return math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    values = stat(a[idx], b[idx])
    values = values[np.isfinite(values)]
    if not values.size:
        return math.nan, math.nan
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def expected_top_mean(score: np.ndarray, oracle: np.ndarray, k: int) -> float:
    """Mean oracle value of the k trials with the highest score; trials tied at the boundary share the
    remaining places equally (the expectation under random tie-breaking)."""
    score, oracle = np.asarray(score, dtype=float), np.asarray(oracle, dtype=float)
    k = min(k, len(score))
    if k == 0:
        return math.nan
    threshold = np.sort(score)[::-1][k - 1]
    above = score > threshold
    tied = score == threshold
    weights = above.astype(float)
    weights[tied] = (k - above.sum()) / tied.sum()
    return float((weights * oracle).sum() / k)


def agreement_row(task: str, criterion: str, rows: list[dict[str, Any]], samples: int = BOOTSTRAP_SAMPLES,
                  seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """One criterion on one task's trials: correlations with intervals, top-k oracle medians, regrets."""
    direction = CRITERIA_BY_NAME[criterion].direction
    usable = [r for r in rows if all(math.isfinite(r["metrics"].get(k, math.nan))
                                     for k in (criterion, ORACLE_MEDIAN, ORACLE_MAX))]
    sign = -1.0 if direction == "min" else 1.0
    score = np.array([sign * r["metrics"][criterion] for r in usable], dtype=float)
    median = np.array([r["metrics"][ORACLE_MEDIAN] for r in usable], dtype=float)
    best_max = np.array([r["metrics"][ORACLE_MAX] for r in usable], dtype=float)
    out: dict[str, Any] = {"task": task, "criterion": criterion, "direction": direction, "trials": len(usable)}
    for name, rows_stat, target in (("spearman_median", spearman_rows, median), ("spearman_max", spearman_rows, best_max),
                                    ("kendall_median", kendall_rows, median), ("kendall_max", kendall_rows, best_max)):
        out[name] = float(rows_stat(score, target)[0]) if len(usable) >= 3 else math.nan
        out[f"{name}_lo"], out[f"{name}_hi"] = bootstrap_interval(score, target, rows_stat, samples, seed)
    best = float(median.max()) if len(usable) else math.nan
    out["best_median"] = best
    out["top1_median"] = expected_top_mean(score, median, 1)
    out["top3_median"] = expected_top_mean(score, median, 3)
    out["regret_top1"] = best - out["top1_median"]
    out["regret_top3"] = best - out["top3_median"]
    return out


def agreement_table(rows: list[dict[str, Any]], criteria: Iterable[str] | None = None,
                    samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> list[dict[str, Any]]:
    """Per task with an oracle (its trials carry ``normalized_median``), one row per criterion."""
    names = list(criteria) if criteria is not None else [c.name for c in CRITERIA]
    by_task: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if ORACLE_MEDIAN in row["metrics"]:
            by_task.setdefault(row["task"], []).append(row)
    return [agreement_row(task, name, by_task[task], samples, seed) for task in sorted(by_task) for name in names]


# --- text ----------------------------------------------------------------------------------------------
def _num(value: float, digits: int = 2) -> str:
    return "–" if not math.isfinite(value) else f"{value:.{digits}f}"


def _with_ci(entry: dict[str, Any], stat: str) -> str:
    if not math.isfinite(entry[stat]):
        return "–"
    return f"{entry[stat]:.2f} [{_num(entry[stat + '_lo'])}, {_num(entry[stat + '_hi'])}]"


def to_markdown(table: list[dict[str, Any]]) -> str:
    """The agreement table: one row per (task, criterion), correlations with 95% intervals, regrets."""
    head = ["task", "criterion", "trials", "Spearman median", "Spearman max", "Kendall median", "Kendall max",
            "top-1 median", "top-3 median", "regret top-1", "regret top-3"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for e in table:
        name = e["criterion"] + (" (min)" if e["direction"] == "min" else "")
        cells = [e["task"], name, str(e["trials"])] + [_with_ci(e, s) for s in STATS]
        cells += [_num(e[k], 3) for k in ("top1_median", "top3_median", "regret_top1", "regret_top3")]
        lines.append("| " + " | ".join(cells) + " |")
    best = {e["task"]: e["best_median"] for e in table}
    note = ("correlations across trials with the oracle's normalized median / max of the final designs, "
            "[bootstrap 95% interval]; (min): the criterion is minimised, so it is negated before correlating; "
            "regret = oracle-best trial's median (" + ", ".join(f"{t} {_num(v, 3)}" for t, v in best.items()) +
            ") minus the oracle median of the criterion's top-1 trial (top-3: their mean)")
    return "\n".join(lines) + "\n\n" + note + ".\n"


CSV_COLUMNS = (["task", "criterion", "direction", "trials"] +
               [f"{s}{suffix}" for s in STATS for suffix in ("", "_lo", "_hi")] +
               ["best_median", "top1_median", "top3_median", "regret_top1", "regret_top3"])


def to_csv(table: list[dict[str, Any]]) -> str:
    """The table at full precision (missing = empty)."""
    return csv_text(table, CSV_COLUMNS)


# --- the report ------------------------------------------------------------------------------------------
@dataclass
class AgreementReport:
    """What :func:`build_agreement` wrote and logged."""

    parent_id: str
    table: list[dict[str, Any]]
    markdown: str
    csv_path: Path
    md_path: Path
    plots: list[Path] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)
    no_oracle: list[str] = field(default_factory=list)


def build_agreement(client, parent, out_dir: str | Path, samples: int = BOOTSTRAP_SAMPLES) -> AgreementReport:
    """Compute the agreement table of a search or ablation parent, write agreement.csv/.md and agreement.png
    (one scatter panel per task and criterion), and log them under ``report/`` of the parent.

    Why a table artifact and no ``agreement.*`` metrics: MLflow's UI sorts metrics by name, so the
    40-odd agreement numbers of a parent came first in the chart view and the Columns list, as
    single-bar charts, ahead of every trial's headline metrics; the table holds the same numbers.

    One-line input errors: no trial ran to the end; no task of the trials has an oracle.
    """
    parent_id = parent.info.run_id
    kind = parent.data.tags.get(KIND_TAG, "search")
    rows, left_out = trial_rows(client, parent)
    if not rows:
        states = ", ".join(f"{n} {s}" for s, n in sorted(left_out.items())) or "no trials"
        raise BibInputError("report", f"{kind} parent run {parent_id} has no trial that ran to the end ({states})",
                            "let the search finish a trial (or resume it with --resume)")
    no_oracle = sorted({r["task"] for r in rows if ORACLE_MEDIAN not in r["metrics"]})
    table = agreement_table(rows, samples=samples)
    if not table:
        raise BibInputError("report", f"task {', '.join(no_oracle)} has no oracle, so no criterion can be checked "
                            "against one", "the agreement report needs a benchmark task (tfbind8, aav, ehrlich)")
    out = prepare_output_dir(out_dir)
    markdown = to_markdown(table)
    report = AgreementReport(parent_id=parent_id, table=table, markdown=markdown, csv_path=out / "agreement.csv",
                             md_path=out / "agreement.md", left_out=left_out, no_oracle=no_oracle)
    report.csv_path.write_text(to_csv(table))
    report.md_path.write_text(markdown)
    oracle_rows = [r for r in rows if ORACLE_MEDIAN in r["metrics"]]
    stats = {(e["task"], e["criterion"]): e for e in table}
    panels = []
    for task in sorted({r["task"] for r in oracle_rows}):
        for criterion in CRITERIA:
            usable = [r for r in oracle_rows if r["task"] == task and criterion.name in r["metrics"]]
            panels.append({"task": task, "criterion": criterion.name, "direction": criterion.direction,
                           "x": [r["metrics"][criterion.name] for r in usable],
                           "y": [r["metrics"][ORACLE_MEDIAN] for r in usable],
                           "spearman": stats[(task, criterion.name)]["spearman_median"]})
    report.plots.append(plot_agreement(panels, out / "agreement.png"))
    for path in [report.csv_path, report.md_path] + report.plots:
        retrying(lambda path=path: client.log_artifact(parent_id, str(path), REPORT_DIR))
    return report


def print_agreement(client, parent, out_dir: str | Path, uri: str) -> AgreementReport:
    """Build the agreement report and print its table and where the files went."""
    report = build_agreement(client, parent, out_dir)
    kind = parent.data.tags.get(KIND_TAG, "search")
    name = parent.data.tags.get(NAME_TAG, "?")
    unit = "cells" if kind == "ablation" else "trials"
    print(f"agreement of the offline-safe criteria with the oracle across the {unit} of {kind} {name!r}:")
    print(report.markdown, end="")
    if report.left_out:
        print(f"left out {unit}: " + ", ".join(f"{n} {s}" for s, n in sorted(report.left_out.items())))
    if report.no_oracle:
        print(f"no oracle, not in the table: {', '.join(report.no_oracle)}")
    print(f"wrote agreement.csv, agreement.md and agreement.png (one scatter per criterion) to {report.csv_path.parent}; "
          f"logged under {REPORT_DIR}/ of parent run {report.parent_id} at {uri}")
    return report
