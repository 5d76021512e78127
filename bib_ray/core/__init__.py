"""BIB itself, in plain torch: kernel-ridge losses, variants, Adaptive-gamma/eta and the design loop.

Nothing here imports Ray, Tune, Optuna or MLflow, nor knows which task or LM it runs on.
"""
