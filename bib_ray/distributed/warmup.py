"""Ray worker start-up hook: import the heavy libraries (torch, transformers' BERT) as soon as a
worker process starts, so the import overlaps with the driver's own start-up (MLflow store, Tune)
instead of delaying the first trial each worker runs."""

from __future__ import annotations


def import_heavy_modules() -> None:
    """Import what every trial needs; errors are left for the trial to report."""
    try:
        import scipy.stats  # noqa: F401 - the criteria's rank statistics (about 1.3 s to import)
        import transformers  # noqa: F401
        from transformers import AutoModel, AutoTokenizer, BertModel  # noqa: F401

        import bib_ray.workbench  # noqa: F401
    except Exception:  # noqa: BLE001 - a trial will raise it with context
        pass
