"""Which searched hyperparameters mattered: Optuna's parameter importances of a search's study, as files.

Why Optuna's own evaluator: the study already holds every trial's parameters and objective, and
``optuna.importance.get_param_importances`` is the public, documented way to ask it; a reader can
recompute the table from ``optuna.load_study``. Why fANOVA with a fixed seed: its random forest makes the
numbers vary from call to call otherwise, and a report rebuilt from the same study must print the same
table. Each importance is the part of the objective's variance a parameter explains alone (its main
effect), normalised so that the importances sum to 1; the plot and the table say so.

Nothing is written when there is nothing to say: fewer than two COMPLETE trials, fewer than two
parameters that took more than one value, a multi-objective study, or an objective that never varied.
The caller gets an empty list of paths and a short reason, never an exception, so a search's end is not
spoilt by its summary.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bib_ray.tracking.output import prepare_output_dir
from bib_ray.tracking.plots import plot_param_importances

if TYPE_CHECKING:
    import optuna

IMPORTANCE_SEED = 0
CSV_NAME, MD_NAME, PNG_NAME = "param_importances.csv", "param_importances.md", "param_importances.png"


@dataclass(frozen=True)
class ParamImportances:
    """What :func:`write_param_importances` found and wrote.

    ``importances``: (parameter, importance) pairs, most important first (ties by name); ``paths``: the
    CSV, Markdown and PNG written, in that order, or empty with ``reason`` saying why.
    """

    trials: int
    importances: list[tuple[str, float]] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    reason: str = ""


def _complete_trials(study: "optuna.Study") -> list:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]


def _varied_params(trials: list) -> list[str]:
    """Parameters present in every trial that took more than one value across them."""
    if not trials:
        return []
    common = set(trials[0].params)
    for trial in trials[1:]:
        common &= set(trial.params)
    return sorted(p for p in common if len({repr(t.params[p]) for t in trials}) > 1)


def param_importances(study: "optuna.Study", seed: int = IMPORTANCE_SEED) -> ParamImportances:
    """The study's fANOVA importances (seeded, normalised), or a reason there are none; writes nothing."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    if len(study.directions) > 1:
        return ParamImportances(0, reason="the study has several objectives")
    trials = _complete_trials(study)
    if len(trials) < 2:
        return ParamImportances(len(trials), reason=f"{len(trials)} complete trial(s), at least 2 are needed")
    varied = _varied_params(trials)
    if len(varied) < 2:
        named = f" ({varied[0]})" if varied else ""
        return ParamImportances(len(trials), reason=f"{len(varied)} searched parameter{named} took several values; "
                                "importances need at least 2")
    try:
        found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed), params=varied)
    except (RuntimeError, ValueError) as err:  # e.g. "zero total variance": the objective never varied
        return ParamImportances(len(trials), reason=f"Optuna could not assess importances: {err}")
    ranked = sorted(((str(name), float(value)) for name, value in found.items()), key=lambda kv: (-kv[1], kv[0]))
    return ParamImportances(len(trials), importances=ranked)


def importances_csv(importances: list[tuple[str, float]]) -> str:
    """``parameter,importance`` rows at full precision, in the given order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["parameter", "importance"])
    for name, value in importances:
        writer.writerow([name, repr(value)])
    return buffer.getvalue()


def importances_markdown(importances: list[tuple[str, float]], trials: int, seed: int = IMPORTANCE_SEED) -> str:
    """The importances as a Markdown table with a note on how they were computed."""
    lines = ["| parameter | importance |", "|---|---:|"]
    lines += [f"| {name} | {value:.3f} |" for name, value in importances]
    note = (f"fANOVA importances (Optuna, seed {seed}) over {trials} complete trials: the variance of the objective "
            "each parameter explains alone (main effect), normalised to sum to 1.")
    return "\n".join(lines) + "\n\n" + note + "\n"


def write_param_importances(study: "optuna.Study", out_dir: str | Path, seed: int = IMPORTANCE_SEED
                            ) -> ParamImportances:
    """Write ``param_importances.csv``, ``.md`` and ``.png`` of the study into ``out_dir``.

    Returns what was written (``paths``, to log as artifacts of the search's parent run); with nothing to
    assess, ``paths`` is empty, ``reason`` says why, and no file is written.
    """
    result = param_importances(study, seed)
    if not result.importances:
        return result
    out = prepare_output_dir(out_dir)
    csv_path, md_path, png_path = out / CSV_NAME, out / MD_NAME, out / PNG_NAME
    csv_path.write_text(importances_csv(result.importances))
    md_path.write_text(importances_markdown(result.importances, result.trials, seed))
    names = [name for name, _ in result.importances]
    plot_param_importances(names, [value for _, value in result.importances], png_path,
                           title=f"Parameter importances (fANOVA, {result.trials} trials)")
    return ParamImportances(result.trials, result.importances, [csv_path, md_path, png_path])
