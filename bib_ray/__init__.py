"""bib_ray: BIB (bidirectional learning for offline biological sequence design) at scale.

The method lives in :mod:`bib_ray.core` (plain torch); tasks in :mod:`bib_ray.tasks`; LM proxies in
:mod:`bib_ray.proxy`. Ray, Tune, Optuna and MLflow wrap them from :mod:`bib_ray.distributed` and
:mod:`bib_ray.tracking`.
"""

__version__ = "0.1.0"
