"""Files a run leaves behind: result.json (metrics, config, trajectory) and designs.csv."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from bib_ray.runner import RunResult


def designs_rows(result: RunResult) -> list[dict]:
    """One row per design: start, design, oracle score (or empty) and proxy prediction."""
    scores = result.scores or [None] * len(result.designs)
    return [{"start": s, "design": d, "oracle_score": "" if o is None else o, "proxy_prediction": p}
            for s, d, o, p in zip(result.start, result.designs, scores, result.predictions)]


def write_designs_csv(result: RunResult, path: Path) -> Path:
    """designs.csv of a run."""
    rows = designs_rows(result)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["start", "design", "oracle_score", "proxy_prediction"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_run_outputs(result: RunResult, out_dir: str | Path) -> Path:
    """Write result.json and designs.csv into ``out_dir`` (created) and return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result.to_json(), indent=2))
    write_designs_csv(result, out / "designs.csv")
    return out


def summary_table(metrics: dict) -> str:
    """The short table ``bib-ray run`` prints."""
    rows = []
    if metrics.get("has_oracle"):
        rows += [("normalized max", metrics["normalized_max"]), ("normalized median", metrics["normalized_median"]),
                 ("normalized mean", metrics["normalized_mean"]),
                 ("best offline (normalized)", metrics["best_offline_normalized"])]
    else:
        rows += [("proxy max", metrics["proxy_max"]), ("proxy median", metrics["proxy_median"]),
                 ("best offline score", metrics["best_offline_raw"])]
    rows += [("mean edit distance", metrics["mean_edit_distance"]), ("final gamma (mean)", metrics["gamma"]),
             ("unique designs", metrics["unique_designs"])]
    head = f"BIB {metrics['variant']}{' +eta' if metrics['adaptive_eta'] else ''} on {metrics['task']}, " \
           f"seed {metrics['seed']}, {metrics['designs']} designs, {metrics['steps']} steps"
    width = max(len(name) for name, _ in rows)
    lines = [head] + [f"  {name:<{width}}  {value:.4f}" for name, value in rows]
    if not metrics.get("has_oracle"):
        lines.append("  (no oracle for this task: scores are proxy predictions)")
    return "\n".join(lines)
