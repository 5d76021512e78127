"""MLflow: where every run, trial and ablation cell lands; reports and plots rebuilt from it."""
