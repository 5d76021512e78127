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

* ``suggest``: each new Optuna trial gets the Tune trial id as the user attribute ``ray.trial_id``, and the
  searcher remembers its number, so the MLflow callback can tag the trial's child run with it
  (``optuna.trial_number``) and write the child's run id and UI address back onto the Optuna trial
  (``mlflow.run_id``, ``mlflow.run_url``): optuna-dashboard and the MLflow UI link to each other instead of
  being matched by value. Everything goes through Optuna's public storage API.

* ``save`` / ``restore``: Tune pickles the searcher into its folder. Ray's copy would pickle the Optuna
  storage, and with it the storage URL, password included; here every storage object is written as a
  placeholder and, on ``--resume``, replaced by the storage the resumed driver opened from the URL it was
  given again.

Kept apart from optuna_study.py so importing the storage checks does not import Ray.
"""

from __future__ import annotations

import pickle
import threading
from typing import Any, ClassVar

from optuna.exceptions import UpdateFinishedTrialError
from ray.tune.search.optuna import OptunaSearch

from bib_ray.trial_records import is_final

RAY_TRIAL_ATTR = "ray.trial_id"
MLFLOW_RUN_ATTR = "mlflow.run_id"
MLFLOW_URL_ATTR = "mlflow.run_url"
LINK_WAIT_SECONDS = 10.0  # at most this long, once per trial, for the MLflow writer to link a trial's run


class BibOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose study holds COMPLETE only for trials that ran to their final record, and
    whose repeated reports of a trial the study already finished (a resumed driver) are dropped.

    An Optuna storage object given as ``storage`` (the one the study lives in) turns on the links between
    Optuna trials and MLflow runs; without it (an in-memory study) there is nothing to link.
    """

    _active: ClassVar[dict[str, "BibOptunaSearch"]] = {}  # study name -> the searcher of this driver

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from optuna.storages import BaseStorage

        storage = kwargs.get("storage")
        self.study_storage = storage if isinstance(storage, BaseStorage) else None
        self.linked_study = kwargs.get("study_name") if self.study_storage is not None else None
        self.trial_numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number (saved with the searcher)
        self._link_written: dict[str, threading.Event] = {}  # trials asked by this process (never pickled)
        self._register()

    def _register(self) -> None:
        if self.linked_study:
            BibOptunaSearch._active[self.linked_study] = self

    def save(self, checkpoint_path: str) -> None:
        state = self.__dict__.copy()
        state.pop("_link_written", None)
        with open(checkpoint_path, "wb") as out:
            _StorageFreePickler(out).dump(state)

    def restore(self, checkpoint_path: str) -> None:
        live = self.study_storage  # opened by this driver from the URL it was given
        with open(checkpoint_path, "rb") as saved:
            state = _LiveStorageUnpickler(saved, live).load()
        state["study_storage"] = live
        state["_link_written"] = {}
        self.__dict__.update(state)
        self._register()  # Tune's copy after --resume: the callback must find this one

    @classmethod
    def active(cls, study_name: str) -> "BibOptunaSearch | None":
        """The searcher this driver process runs for ``study_name`` (after ``--resume``, Tune's restored copy)."""
        return cls._active.get(study_name)

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if config is not None and self.linked_study and trial_id not in self.trial_numbers:
            study_id = self.study_storage.get_study_id_from_name(self.linked_study)
            number = self.study_storage.get_n_trials(study_id) - 1  # just asked: numbers run 0..n-1, one driver asks
            self.study_storage.set_trial_user_attr(self._storage_trial_id(number, study_id), RAY_TRIAL_ATTR,
                                                   trial_id)
            self.trial_numbers[trial_id] = number
            self._link_written[trial_id] = threading.Event()
        return config

    def _storage_trial_id(self, number: int, study_id: int | None = None) -> int:
        """The storage's id of the study's trial ``number`` (Optuna's public storage API only)."""
        if study_id is None:
            study_id = self.study_storage.get_study_id_from_name(self.linked_study)
        return self.study_storage.get_trial_id_from_study_id_trial_number(study_id, number)

    def optuna_number(self, trial_id: str) -> int | None:
        """The Optuna trial number of a Tune trial (None when this searcher did not ask it)."""
        return self.trial_numbers.get(trial_id)

    def link_run(self, trial_id: str, run_id: str, run_url: str) -> None:
        """Write the MLflow child's run id and UI address onto the trial's Optuna trial (a trial Optuna
        already finished, e.g. one re-run after a killed driver, keeps the attributes it has)."""
        number = self.trial_numbers.get(trial_id)
        if number is None or not self.linked_study:
            return
        optuna_id = self._storage_trial_id(number)
        try:
            self.study_storage.set_trial_user_attr(optuna_id, MLFLOW_RUN_ATTR, run_id)
            self.study_storage.set_trial_user_attr(optuna_id, MLFLOW_URL_ATTR, run_url)
        except UpdateFinishedTrialError:
            pass
        finally:
            written = self._link_written.get(trial_id)
            if written is not None:
                written.set()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            pass  # finished in the study before the driver died: its result is already there

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        # A finished Optuna trial takes no more attributes: let the MLflow writer (a thread that may lag a
        # little behind Tune) link the trial's run first; an outage only delays the link, never the search.
        written = self._link_written.pop(trial_id, None)
        if written is not None:
            written.wait(timeout=LINK_WAIT_SECONDS)
        if error:
            super().on_trial_complete(trial_id, None, error=True)  # FAIL, whatever it reported before
        elif result is not None and not is_final(result):  # Tune gives searchers a flattened copy
            super().on_trial_complete(trial_id, None, error=False)  # stopped early: PRUNED
        else:
            super().on_trial_complete(trial_id, result, error=False)


STORAGE_PLACEHOLDER = "bib_ray.optuna_storage"


class _StorageFreePickler(pickle.Pickler):
    """Pickles the searcher's state with each Optuna database storage (the object that holds the URL)
    replaced by a placeholder; an in-memory study pickles as Ray's would."""

    def persistent_id(self, obj: Any) -> str | None:
        from optuna.storages import RDBStorage

        return STORAGE_PLACEHOLDER if isinstance(obj, RDBStorage) else None


class _LiveStorageUnpickler(pickle.Unpickler):
    """Reads a state written by :class:`_StorageFreePickler`, handing the live storage for each placeholder."""

    def __init__(self, file: Any, storage: Any) -> None:
        super().__init__(file)
        self.storage = storage

    def persistent_load(self, pid: Any) -> Any:
        if pid != STORAGE_PLACEHOLDER or self.storage is None:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r} in the searcher state")
        return self.storage
