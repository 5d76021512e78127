"""Soft sequences: logits Z (M, L, V) to the soft one-hot the LM reads.

The authors use a straight-through one-hot (the forward pass sees the argmax sequence, the backward
pass the softmax gradient); ``softmax`` is the smooth relaxation, whose derivatives are exact and so
checkable by finite differences.

A relaxation returns :class:`RelaxedDesigns`, not a bare tensor, because where the straight-through
trick acts depends on the LM's tokens. An LM with one token per letter reads ``letters``: the
straight-through one-hot of each letter. An LM with k-mer tokens (DNABERT) reads :meth:`kmers`: the
soft k-mer is the product of its k soft letters (softmax probabilities), and the straight-through
trick acts on that product, as the authors' DNA code does: the forward pass sees the hard k-mer
one-hot, the gradient flows through the product of the probabilities. Applying the trick to each
letter before the product gives the same forward pass but another gradient (each letter's
derivative is then weighted by the other letters' hard one-hots, not by their probabilities).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


def soft_kmers(letters: torch.Tensor, k: int) -> torch.Tensor:
    """Soft letters (M, L, V) to soft overlapping k-mers (M, L - k + 1, V**k).

    Entry ``(m, l, i)`` is the product of the k letters' probabilities for the k-mer with index
    ``i`` in lexicographic order of letter indices (first letter most significant). A hard one-hot
    sequence gives the hard k-mer one-hot exactly.
    """
    m, length, vocab = letters.shape
    count = length - k + 1
    joint = letters[:, :count]
    for offset in range(1, k):
        nxt = letters[:, offset: count + offset]
        joint = (joint.unsqueeze(-1) * nxt.unsqueeze(-2)).reshape(m, count, -1)
    return joint


@dataclass(frozen=True)
class RelaxedDesigns:
    """A batch of relaxed designs: what a letter LM reads, and the soft letters behind it.

    ``letters`` (M, L, V) is exactly what the relaxation produced before k-mers were handled: the
    straight-through one-hot ``hard + probs - probs.detach()`` or the softmax itself. ``probs`` are
    the softmax probabilities that carry the gradient; ``hard`` the argmax one-hot (``None`` for the
    softmax relaxation).
    """

    letters: torch.Tensor
    probs: torch.Tensor
    hard: torch.Tensor | None

    @property
    def straight_through(self) -> bool:
        """Whether the forward pass sees hard one-hots."""
        return self.hard is not None

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "RelaxedDesigns":
        """The same designs on ``device`` in ``dtype`` (autograd follows the move)."""
        hard = None if self.hard is None else self.hard.to(device, dtype)
        return RelaxedDesigns(self.letters.to(device, dtype), self.probs.to(device, dtype), hard)

    def kmers(self, k: int) -> torch.Tensor:
        """What a k-mer LM reads, (M, L - k + 1, V**k); ``letters`` itself when ``k == 1``.

        Straight-through: hard k-mer one-hot forward, gradient of the soft k-mer (product of the
        probabilities) backward. Softmax: the soft k-mer.
        """
        if k == 1:
            return self.letters
        soft = soft_kmers(self.probs, k)
        if self.hard is None:
            return soft
        return soft_kmers(self.hard, k) + soft - soft.detach()


def straight_through(logits: torch.Tensor) -> RelaxedDesigns:
    """Argmax one-hot forward, softmax gradient backward (per letter, or per k-mer: see the module)."""
    probs = torch.softmax(logits, dim=-1)
    hard = F.one_hot(probs.argmax(dim=-1), probs.shape[-1]).to(probs.dtype)
    return RelaxedDesigns(letters=hard + probs - probs.detach(), probs=probs, hard=hard)


def softmax(logits: torch.Tensor) -> RelaxedDesigns:
    """Plain softmax relaxation."""
    probs = torch.softmax(logits, dim=-1)
    return RelaxedDesigns(letters=probs, probs=probs, hard=None)


RELAXATIONS: dict[str, Callable[[torch.Tensor], RelaxedDesigns]] = {
    "straight_through": straight_through,
    "softmax": softmax,
}
