"""Ray layer: trials and ablation cells as Tune trials on LM-hosting worker processes.

Free of BIB math: it turns YAML files into RunSpecs, runs them through :mod:`bib_ray.runner` on Ray
workers, and streams their metrics to MLflow through a driver-side Tune callback.
"""
