"""Compare the verdict columns of two reports' conclusions.csv (the same plan on two machines or kernel paths).

    python scripts/compare_verdicts.py A/conclusions.csv B/conclusions.csv

Prints one line per comparison (verdict on each side, and the estimates, whose digits may differ), then
`verdicts_agree=<true|false>`; exits 0 when every verdict matches and both files list the same comparisons.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def verdicts(path: str) -> dict[tuple[str, str, str], tuple[str, str]]:
    with Path(path).open(newline="") as handle:
        return {(r["task"], r["variant"] + " - " + r["reference"], r["metric"]): (r["verdict"], r["estimate"])
                for r in csv.DictReader(handle)}


def main(a: str, b: str) -> int:
    left, right = verdicts(a), verdicts(b)
    agree = set(left) == set(right)
    for key in sorted(set(left) | set(right)):
        va, ea = left.get(key, ("missing", ""))
        vb, eb = right.get(key, ("missing", ""))
        same = va == vb
        agree &= same
        print(f"{'same' if same else 'DIFF'}  {' | '.join(key)}: {va} ({float(ea or 'nan'):+.3f}) vs "
              f"{vb} ({float(eb or 'nan'):+.3f})")
    print(f"verdicts_agree={str(agree).lower()}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
