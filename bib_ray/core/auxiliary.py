"""The auxiliary model f_a that Adaptive-gamma and Adaptive-eta climb.

An ensemble of small heads on the LM embedding, each trained on a bootstrap resample of the offline
data with its own seed, averaged. (The authors meant 5 heads but loaded one head five times; here each
member is really different.) It is separate from the forward ridge so that the bi-level steps climb
an independent estimate of the score, not the loss they weigh.
"""

from __future__ import annotations

import torch
from torch import nn


class AuxiliaryEnsemble(nn.Module):
    """f_a(phi) = mean over heads; scores in z units of the offline labels."""

    def __init__(self, heads: nn.Module) -> None:
        super().__init__()
        self.heads = heads  # maps (M, d) to (k, M): k members evaluated in one batched pass

    def forward(self, phi: torch.Tensor) -> torch.Tensor:
        """Score each embedding, (M, d) -> (M,)."""
        phi = phi.to(next(self.parameters()).dtype)
        return self.heads(phi).mean(0)


class _MLPHeads(nn.Module):
    """k independent one-hidden-layer heads evaluated as one batched computation."""

    def __init__(self, k: int, d: int, hidden: int, gen: torch.Generator) -> None:
        super().__init__()
        bound1, bound2 = d ** -0.5, hidden ** -0.5
        self.w1 = nn.Parameter((torch.rand(k, d, hidden, generator=gen) * 2 - 1) * bound1)
        self.b1 = nn.Parameter((torch.rand(k, 1, hidden, generator=gen) * 2 - 1) * bound1)
        self.w2 = nn.Parameter((torch.rand(k, hidden, 1, generator=gen) * 2 - 1) * bound2)
        self.b2 = nn.Parameter((torch.rand(k, 1, 1, generator=gen) * 2 - 1) * bound2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(k, n, d) or (n, d) inputs to (k, n) outputs."""
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.w1.shape[0], -1, -1)
        hidden = torch.relu(torch.baddbmm(self.b1, x, self.w1))
        return torch.baddbmm(self.b2, hidden, self.w2).squeeze(-1)


class _LinearHeads(nn.Module):
    """k ridge heads without bias, (k, d) weights."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weights)

    def forward(self, phi: torch.Tensor) -> torch.Tensor:
        return self.weight @ phi.T


def _ridge_heads(phi: torch.Tensor, y: torch.Tensor, samples: torch.Tensor) -> nn.Module:
    n, d = phi.shape
    weights = []
    for rows in samples:
        x64, t64 = phi[rows].double(), y[rows].double()
        gram = x64.T @ x64
        beta = 1e-3 * torch.trace(gram) / n
        weights.append(torch.linalg.solve(gram + beta * torch.eye(d, dtype=torch.float64), x64.T @ t64))
    return _LinearHeads(torch.stack(weights).float())


def fit_auxiliary(phi_l: torch.Tensor, y_l: torch.Tensor, heads: int = 5, hidden: int = 64,
                  epochs: int = 200, seed: int = 0) -> AuxiliaryEnsemble:
    """Train the ensemble on offline embeddings (n, d) and z-scored labels (n,), deterministically."""
    phi = phi_l.detach().float().cpu()
    y = y_l.detach().float().cpu().reshape(-1)
    gen = torch.Generator().manual_seed(seed)
    n, d = phi.shape
    samples = torch.randint(0, n, (heads, n), generator=gen)  # one bootstrap resample per head
    if hidden == 0:
        members = _ridge_heads(phi, y, samples)
    else:
        batched = _MLPHeads(heads, d, hidden, gen)
        x, t = phi[samples], y[samples]  # (k, n, d), (k, n)
        opt = torch.optim.Adam(batched.parameters(), lr=1e-2, weight_decay=1e-4)
        for _ in range(epochs):
            opt.zero_grad()
            loss = ((batched(x) - t) ** 2).mean(1).sum()
            loss.backward()
            opt.step()
        members = batched
    ensemble = AuxiliaryEnsemble(members)
    ensemble.requires_grad_(False)
    return ensemble.eval()
