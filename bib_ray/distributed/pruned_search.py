"""Ray's Optuna searcher, telling Optuna the truth about trials the scheduler stopped early.

Why: Ray's ``OptunaSearch.on_trial_complete`` tells Optuna COMPLETE whenever the trial's last result
carries the metric, so a trial ASHA cut at a rung lands in the study as COMPLETE with a partial score:
the study's best can be a stopped trial (not the search's ``best.yaml``), and Optuna's importances
and TPE's density estimates mix partial scores with final ones. bib-ray knows which trials ran to the
end: their last result is the final record (:func:`~bib_ray.trial_records.is_final`). This subclass
overrides only that public hook and hands Ray's own code a result-less completion, which Ray tells
Optuna as PRUNED (Optuna keeps the last reported intermediate value) or, for an error, FAIL (Ray would
tell an errored trial with a partial result COMPLETE too).
"""

from __future__ import annotations

from typing import Any

from ray.tune.search.optuna import OptunaSearch

from bib_ray.trial_records import is_final


class EarlyStopAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose study holds COMPLETE only for trials that ran to their final record."""

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if error:
            super().on_trial_complete(trial_id, None, error=True)  # FAIL, whatever it reported before
        elif result is not None and not is_final(result):  # Tune gives searchers a flattened copy
            super().on_trial_complete(trial_id, None, error=False)  # stopped early: PRUNED
        else:
            super().on_trial_complete(trial_id, result, error=False)
