"""Ray's Optuna searcher, told the truth about stopped trials and safe to resume after a killed driver.

Two public hooks of ``OptunaSearch`` are overridden, nothing else:

* ``on_trial_complete``: Ray tells Optuna COMPLETE whenever a trial's last result carries the metric, so
  a trial ASHA cut at a rung would land in the study as COMPLETE with a partial score (the study's best
  could be a stopped trial, not ``best.yaml``'s; importances and TPE's densities would mix partial and
  final scores). bib-ray knows which trials ran to the end: their last result is the final record
  (:func:`~bib_ray.trial_records.is_final`). A stopped trial is handed to Ray's code result-less, which
  Ray tells Optuna as PRUNED; an error as FAIL (Ray would tell an errored trial with a partial result
  COMPLETE too).
* ``on_trial_result``: the study lives in Optuna's own storage (:mod:`bib_ray.distributed.optuna_study`),
  written when a trial ends, while Tune's experiment state is saved every few seconds. A driver killed
  between the two leaves a trial COMPLETE in the study that Tune's saved state still holds as running; on
  ``--resume`` Tune runs it again (same seed, same numbers; the MLflow callback logs none of its steps
  twice) and its intermediate reports would raise Optuna's ``UpdateFinishedTrialError``, failing the whole
  resumed search. The study already holds that trial's result, so the repeated reports are dropped.

Kept apart from optuna_study.py so importing the storage checks does not import Ray.
"""

from __future__ import annotations

from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from ray.tune.search.optuna import OptunaSearch

from bib_ray.trial_records import is_final


class BibOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose study holds COMPLETE only for trials that ran to their final record, and
    whose repeated reports of a trial the study already finished (a resumed driver) are dropped."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            pass  # finished in the study before the driver died: its result is already there

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if error:
            super().on_trial_complete(trial_id, None, error=True)  # FAIL, whatever it reported before
        elif result is not None and not is_final(result):  # Tune gives searchers a flattened copy
            super().on_trial_complete(trial_id, None, error=False)  # stopped early: PRUNED
        else:
            super().on_trial_complete(trial_id, result, error=False)
