"""Soft sequences: logits Z (M, L, V) to the soft one-hot the LM reads.

The authors use a straight-through one-hot (the forward pass sees the argmax sequence, the backward
pass the softmax gradient); ``softmax`` is the smooth relaxation, whose derivatives are exact and so
checkable by finite differences.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def straight_through(logits: torch.Tensor) -> torch.Tensor:
    """Argmax one-hot forward, softmax gradient backward."""
    probs = torch.softmax(logits, dim=-1)
    hard = F.one_hot(probs.argmax(dim=-1), probs.shape[-1]).to(probs.dtype)
    return hard + probs - probs.detach()


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """Plain softmax relaxation."""
    return torch.softmax(logits, dim=-1)


RELAXATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "straight_through": straight_through,
    "softmax": softmax,
}
