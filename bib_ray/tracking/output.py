"""The local folder a report writes into, and the CSV form of its tables.

Why shared: the ablation report, the agreement report and the parameter importances all write into a
folder the user named with ``--output``, and all must refuse a bad one with the same one-line error
rather than a traceback from deep inside a plot; the report tables share one CSV convention.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable

from bib_ray.errors import BibInputError


def prepare_output_dir(out_dir: str | Path) -> Path:
    """``out_dir``, created if missing; a one-line ``--output`` error for a file or an unwritable path."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BibInputError("--output", f"{str(out)!r} is a file, not a folder", "give a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BibInputError("--output", f"cannot create folder {str(out)!r}: {err.strerror}",
                            "give a writable folder") from None
    return out


def csv_text(entries: Iterable[dict[str, Any]], columns: list[str]) -> str:
    """A table as CSV at full precision: floats as shortest round-trip text, NaN (missing) as empty,
    booleans as ``true``/``false``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for entry in entries:
        row = []
        for col in columns:
            value = entry[col]
            if isinstance(value, bool):
                value = str(value).lower()
            elif isinstance(value, float):
                value = "" if math.isnan(value) else repr(value)
            row.append(value)
        writer.writerow(row)
    return buffer.getvalue()
