"""A search's Optuna study in Optuna's own storage, so Optuna's tools can read it.

Why: inside Tune, Optuna's study lives in the searcher's pickled state, where optuna-dashboard,
``optuna.load_study`` and Optuna's visualisations (parameter importances, parallel coordinates) cannot
see it. Ray's ``OptunaSearch`` takes an Optuna storage and a study name (public arguments); we open the
storage, check that it holds no study of another search space under the search's name, and hand it
over. The study is named after the search, like its MLflow experiment and its Tune folder.

A fresh run replaces the study of its name, as it replaces its Tune folder (MLflow keeps every run);
``--resume`` continues the same study (Tune restores the searcher, which holds the storage's URL).
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from bib_ray.errors import BibInputError, first_line

if TYPE_CHECKING:
    import optuna

    from bib_ray.distributed.space import SearchSpace

OPTION = "--optuna-storage"
SPACE_ATTR = "bib_ray.space_signature"  # a study's user attribute: which search space made it
DB_NAME = "optuna.db"


def default_storage_url(tracking_uri: str, tune_storage: Path) -> str:
    """An SQLite file beside the MLflow store: next to its SQLite file or inside its folder's parent;
    for a tracking server or a database, in the Tune storage folder (on the driver's machine)."""
    parsed = urllib.parse.urlparse(tracking_uri)
    scheme = parsed.scheme.lower()
    if scheme == "sqlite" and tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri.removeprefix("sqlite:///")).expanduser().resolve().parent
    elif scheme in ("", "file"):
        folder = Path(parsed.path if scheme == "file" else tracking_uri).expanduser().resolve().parent
    else:
        folder = tune_storage
    return f"sqlite:///{folder / DB_NAME}"


def space_signature(space: "SearchSpace") -> str:
    """What makes two searches the same study: their sampled parameters, metric and mode."""
    params = {name: dist.model_dump(mode="json") for name, dist in sorted(space.params.items())}
    text = json.dumps({"params": params, "metric": space.metric, "mode": space.mode}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


DEFAULT_OPTION = "Optuna storage"  # what an error names when the user gave no --optuna-storage


def open_storage(url: str, option: str = OPTION) -> "optuna.storages.RDBStorage":
    """Optuna's RDB storage at ``url``; an unreachable or malformed URL is one line naming the option
    (``option``: the flag the user gave, or :data:`DEFAULT_OPTION` for the default storage)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no per-trial lines: MLflow and Tune report those
    fix = ("give an SQLAlchemy URL Optuna can open, e.g. sqlite:///PATH/optuna.db" if option == OPTION else
           f"check that the folder is writable, or give {OPTION} sqlite:///PATH/optuna.db")
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as err:  # noqa: BLE001 - SQLAlchemy's many kinds: a bad URL, no server, no driver
        first = first_line(err)[:200]
        raise BibInputError(option, f"cannot open the Optuna storage {url!r} ({first})", fix) from None


def prepare_study(space: "SearchSpace", url: str, resume: bool, option: str = OPTION) -> "optuna.storages.RDBStorage":
    """The storage, with the search's study ready for Ray's OptunaSearch (which loads it by name).

    A study of the same name made by another search space is refused: its trials would steer the
    sampler with parameters of another space. A fresh run deletes the old study of its own space.
    A default SQLite file's folder (the Tune storage folder, which may not exist yet) is created first.
    """
    import optuna

    if option != OPTION and url.startswith("sqlite:///"):
        folder = Path(url.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BibInputError(option, f"cannot create the folder {str(folder)!r} of the Optuna study "
                                f"({err.strerror or err})", f"give --storage a writable folder, or {OPTION} "
                                "sqlite:///PATH/optuna.db") from None
    storage = open_storage(url, option)
    signature = space_signature(space)
    names = {s.study_name: s for s in storage.get_all_studies()}
    if space.name in names:
        found = names[space.name].user_attrs.get(SPACE_ATTR)
        if found != signature:
            raise BibInputError(option, f"{url} already holds an Optuna study {space.name!r} of another search "
                                "space", "rename the search (name: in the space file) or give another "
                                f"{OPTION}")
        if not resume:
            optuna.delete_study(study_name=space.name, storage=storage)
    study = optuna.create_study(study_name=space.name, storage=storage, load_if_exists=True,
                                direction="maximize" if space.mode == "max" else "minimize")
    study.set_user_attr(SPACE_ATTR, signature)
    study.set_user_attr("bib_ray.metric", space.metric)
    with warnings.catch_warnings():  # "experimental since 3.2": stable in use, and no line for the user
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([space.metric])  # optuna-dashboard titles the objective with it, not "Objective 0"
    return storage


def close_stale_trials(storage: "optuna.storages.RDBStorage", study_name: str) -> int:
    """Trials an interrupted driver left RUNNING (asked, never told) are marked FAIL once the search has
    ended, so the study's COMPLETE trials are exactly the trials that ran. Returns how many."""
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study_name)
    stale = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        storage.set_trial_state_values(trial_id_of(storage, study_id, trial), TrialState.FAIL)
    return len(stale)


def trial_id_of(storage: "optuna.storages.RDBStorage", study_id: int, trial: "optuna.trial.FrozenTrial") -> int:
    """The storage's id of a study's trial, by its number (public API only)."""
    return storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
