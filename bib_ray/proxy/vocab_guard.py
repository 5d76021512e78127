"""Checks that an LM can read a task's letters as what they are, before any embedding is computed.

Why: the letters A, C, G, T are nucleotides to a DNA LM and Ala, Cys, Gly, Thr to a protein LM. A
protein vocabulary holds every DNA letter, so the token lookup alone would accept a protein LM on a
DNA task and embed DNA as a peptide of four amino acids, without a word. What decides, from the
tokenizer's vocabulary alone:

* a **protein vocabulary** holds at least :data:`PROTEIN_MIN` of the 16 amino-acid letters that are
  not nucleotide letters (``DEFHIKLMNPQRSVWY``; ESM-2, ProtBERT, AntiBERTy hold all 16);
* a **nucleotide vocabulary** holds nucleotide letters or k-mers of them and none of those 16;
* a **DNA/RNA task** has an alphabet of nucleotide letters only (``ACGT``, ``ACGU``, with ``N``);
  a **protein task** has at least :data:`PROTEIN_MIN` of the 16 (AAV, Ehrlich over 20 letters).

A protein vocabulary on a DNA/RNA task, or a nucleotide one on a protein task, is refused in one line
naming both. A tokenizer left with special tokens only (its vocabulary file missing) is refused
naming the file it needs.
"""

from __future__ import annotations

from pathlib import Path

from bib_ray.errors import BibInputError

NUCLEOTIDES = frozenset("ACGTUN")
AMINO_ONLY = frozenset("DEFHIKLMNPQRSVWY") - {"N"}  # N is also "any nucleotide": it decides nothing
PROTEIN_MIN = 12
"""Amino-acid-only letters a vocabulary (or an alphabet) must hold to count as protein (of the 15 that
are not also nucleotide codes): a few missing letters still make a protein LM, a DNA one holds none."""
VOCAB_FILES = ("vocab.txt", "tokenizer.json", "vocab.json")


def _letters(vocab: dict[str, int]) -> set[str]:
    """The single-letter tokens of a vocabulary, upper-cased (some vocabularies are lower case)."""
    return {token.upper() for token in vocab if len(token) == 1 and token.isalpha()}


def vocabulary_kind(vocab: dict[str, int]) -> str:
    """'protein', 'nucleotide' or 'other', as the module text says."""
    letters = _letters(vocab)
    if len(letters & AMINO_ONLY) >= PROTEIN_MIN:
        return "protein"
    if letters & AMINO_ONLY:
        return "other"
    kmers = any(len(token) >= 3 and set(token.upper()) <= NUCLEOTIDES for token in vocab)
    return "nucleotide" if letters & NUCLEOTIDES or kmers else "other"


def alphabet_kind(alphabet: str) -> str:
    """'nucleotide' (letters of ACGTUN only), 'protein' (enough amino-acid-only letters) or 'other'."""
    letters = set(alphabet.upper())
    if letters <= NUCLEOTIDES:
        return "nucleotide"
    return "protein" if len(letters & AMINO_ONLY) >= PROTEIN_MIN else "other"


def _missing_vocab_file(source: str) -> str:
    folder = Path(source).expanduser()
    if not folder.is_dir():
        return f"the tokenizer of {source!r} has only its special tokens (no vocabulary)"
    present = [name for name in VOCAB_FILES if (folder / name).is_file()]
    if present:
        return f"the tokenizer in {source} has only its special tokens ({', '.join(present)} holds no letters)"
    return (f"the tokenizer in {source} has only its special tokens: no vocab.txt or tokenizer.json in that "
            "folder")


def check_vocabulary(tokenizer, alphabet: str, source: str) -> None:
    """Refuse an LM whose vocabulary cannot stand for this alphabet (see the module text)."""
    vocab = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_tokens", ()) or ())
    if not set(vocab) - special:
        raise BibInputError("lm", _missing_vocab_file(source),
                            "put the vocabulary file (vocab.txt for BERT-style models) beside config.json, "
                            "e.g. with tokenizer.save_pretrained(folder)")
    lm_kind, task_kind = vocabulary_kind(vocab), alphabet_kind(alphabet)
    if {lm_kind, task_kind} == {"protein", "nucleotide"}:
        names = {"protein": "amino acids", "nucleotide": "DNA/RNA letters"}
        raise BibInputError("lm", f"{source!r} is an LM over {names[lm_kind]} but the task's alphabet {alphabet!r} "
                            f"is {names[task_kind]}: its letters would be read as other molecules",
                            f"use an LM trained on {names[task_kind]} (DNA: DNABERT; protein: ProtBERT or "
                            "ESM-2), or leave --lm out for the default LM")
