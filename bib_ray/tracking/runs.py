"""Finding a search's or an ablation's parent run in MLflow and reading its children as plain rows.

Why a module of its own: the ablation report, the agreement report and the plots all work on the same
rows (one dict per finished cell: task, variant label, seeds, latest metrics), and the two reports find
their parent the same way. Kept apart from the reports, neither report imports the other for these, and
the plots need nothing from MLflow at all: they take the rows.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from bib_ray.errors import BibInputError
from bib_ray.tracking.metric_keys import named_metrics
from bib_ray.tracking.store import retrying

KIND_TAG = "bib_ray.kind"
NAME_TAG = "bib_ray.name"
PARENT_TAG = "mlflow.parentRunId"
VARIANT_ORDER = ("forward", "backward", "fixed", "learned", "grad")
ETA_SUFFIX = "+eta"
FIND_FIX = "give a parent run id or an ablation name; list them in the MLflow UI"

# Summary columns: name -> (metric when the task has an oracle, metric when it has only the proxy).
COLUMNS: dict[str, tuple[str, str]] = {
    "max": ("normalized_max", "proxy_max"),
    "median": ("normalized_median", "proxy_median"),
    "mean": ("normalized_mean", "proxy_mean"),
    "edit_distance": ("mean_edit_distance", "mean_edit_distance"),
    "offline_proxy_mean": ("offline_proxy_mean", "offline_proxy_mean"),
}
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


# --- lookup -------------------------------------------------------------------------------------
def client_of(client_or_store: Any):
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

    client = client_of(client_or_store)
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
            "machine": machine_of(tags), "metrics": named_metrics(run.data.metrics)}


def machine_of(tags: dict[str, str]) -> str:
    """Which machine made a run, from its provenance tags: CPU model, torch's CPU kernel path, versions."""
    parts = [tags.get("cpu_model", ""), tags.get("cpu_capability", "") and f"kernels {tags['cpu_capability']}",
             tags.get("torch_version", "") and f"torch {tags['torch_version']}",
             tags.get("transformers_version", "") and f"transformers {tags['transformers_version']}"]
    return ", ".join(p for p in parts if p) or "unrecorded"


def child_runs(client_or_store: Any, parent_id: str) -> list:
    """Every (non-deleted) child run of the parent, whatever its status."""
    client = client_of(client_or_store)
    parent = retrying(lambda: client.get_run(parent_id))
    return _search_all(client, [parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent_id}'")


def collect_cells(client_or_store: Any, parent_id: str, children: Iterable | None = None) -> list[dict[str, Any]]:
    """One row per FINISHED cell: ``run_id, task, variant`` (label), ``seed, cell, status, metrics``.

    ``metrics`` holds ``run.data.metrics`` under bib-ray's names, i.e. each metric's latest value, which
    is the final record the driver logs last (at the trial's last step, after that step's own record).
    Why only FINISHED: a failed or killed cell has partial or no finals and
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
    return sorted(rows, key=lambda r: (r["task"], variant_sort_key(r["variant"]), lm_seed_sort_key(r["lm_seed"]),
                                       seed_sort_key(r["seed"]), r["run_id"]))


def lm_seed_sort_key(lm_seed: int | str | None) -> tuple:
    """An explicit LM (no LM seed) first, then LM seeds as :func:`seed_sort_key` orders them."""
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


def group_rows(rows: Iterable[dict[str, Any]], key: str) -> dict[Any, list[dict[str, Any]]]:
    """Rows grouped by ``row[key]``, groups in the order of their key's text."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    return {k: groups[k] for k in sorted(groups, key=str)}


def compared_variants(rows: list[dict[str, Any]], reference: str):
    """Per task (in order) that ran ``reference``, each other variant label in table order: yields
    ``(task, label, task_rows, variant_rows, reference_rows)``, what a paired comparison needs."""
    for task, task_rows in group_rows(rows, "task").items():
        groups = group_rows(task_rows, "variant")
        if reference not in groups:
            continue
        for label in sorted(groups, key=variant_sort_key):
            if label != reference:
                yield task, label, task_rows, groups[label], groups[reference]

