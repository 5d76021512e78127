"""Map a task's alphabet onto an LM's vocabulary.

Single-letter vocabularies (ProtBERT, ESM-2, our small BERT) map each letter to one token. k-mer
vocabularies (DNABERT reads overlapping 3-mers) map each k-mer to one token; the soft k-mer is the
product of its k soft letters, and the straight-through relaxation acts on that product
(``bib_ray.core.relaxation.RelaxedDesigns.kmers``), as the authors feed DNABERT.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from bib_ray.errors import BibInputError


@dataclass(frozen=True)
class TokenMap:
    """How soft letters become soft tokens."""

    k: int  # 1 for letter tokens, k for k-mer tokens
    token_ids: tuple[int, ...]  # V**k ids, k-mers in lexicographic order of letter indices
    prefix_ids: tuple[int, ...]  # special tokens before the sequence ([CLS], <cls>)
    suffix_ids: tuple[int, ...]  # after it ([SEP], <eos>)


def _lookup(vocab: dict[str, int], token: str) -> int | None:
    for candidate in (token, token.upper(), token.lower()):
        if candidate in vocab:
            return vocab[candidate]
    return None


def build_token_map(tokenizer, alphabet: str, model_name: str) -> TokenMap:
    """Find each letter (or k-mer) of ``alphabet`` in the tokenizer's vocabulary, and the framing tokens."""
    vocab = tokenizer.get_vocab()
    letter_ids = [_lookup(vocab, letter) for letter in alphabet]
    k = 1
    ids: list[int | None] = letter_ids
    if any(i is None for i in letter_ids):
        for size in (3, 4, 5, 6):
            kmer_ids = [_lookup(vocab, "".join(p)) for p in itertools.product(alphabet, repeat=size)]
            if all(i is not None for i in kmer_ids):
                k, ids = size, kmer_ids
                break
        else:
            missing = next(letter for letter, i in zip(alphabet, letter_ids) if i is None)
            raise BibInputError("lm", f"letter {missing!r} of the task's alphabet has no token in {model_name}'s "
                                "vocabulary", "use an LM trained on this alphabet (DNA: DNABERT; protein: "
                                "ProtBERT or ESM-2) or the default LM")
    content = [ids[0]] * 3
    framed = _framed(tokenizer, content)
    start = next(i for i in range(len(framed)) if framed[i:i + 3] == content)
    return TokenMap(k=k, token_ids=tuple(int(i) for i in ids), prefix_ids=tuple(framed[:start]),
                    suffix_ids=tuple(framed[start + 3:]))


def _framed(tokenizer, content: list[int]) -> list[int]:
    """``content`` with the special tokens the tokenizer puts around a single sequence."""
    if hasattr(type(tokenizer), "build_inputs_with_special_tokens"):  # transformers < 5
        return list(tokenizer.build_inputs_with_special_tokens(content))
    text = " ".join(tokenizer.convert_ids_to_tokens(content))
    framed = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    plain = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if plain != content:
        raise BibInputError("lm", "the tokenizer does not split sequences into single tokens as expected",
                            "use a character- or k-mer-level tokenizer")
    return framed
