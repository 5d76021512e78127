"""Ray's ``OptunaSearch`` made safe to resume after the driver was killed.

Why: the study lives in Optuna's own storage (:mod:`bib_ray.distributed.optuna_study`), which is written
when a trial ends, while Tune's experiment state is saved every few seconds. A driver killed between
the two leaves a trial COMPLETE in the study that Tune's saved state still holds as running; on
``--resume`` Tune runs that trial again (same seed, same numbers; the MLflow callback logs none of its
steps twice) and the searcher's report of its intermediate values would raise Optuna's
``UpdateFinishedTrialError``, failing the whole resumed search. The study already holds that trial's
result, so its repeated reports are dropped. Ray's own ``on_trial_complete`` already tolerates a
finished trial. Kept apart from optuna_study.py so importing the storage checks does not import Ray.
"""

from __future__ import annotations

from optuna.exceptions import UpdateFinishedTrialError
from ray.tune.search.optuna import OptunaSearch


class ResumableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose intermediate reports of an already finished Optuna trial are dropped."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            pass  # finished in the study before the driver died: its result is already there
