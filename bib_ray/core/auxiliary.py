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

    def __init__(self, heads: list[nn.Module]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, phi: torch.Tensor) -> torch.Tensor:
        """Score each embedding, (M, d) -> (M,)."""
        phi = phi.to(next(self.parameters()).dtype)
        return torch.stack([head(phi).reshape(-1) for head in self.heads]).mean(0)


def _train_head(phi: torch.Tensor, y: torch.Tensor, hidden: int, epochs: int, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    n, d = phi.shape
    sample = torch.randint(0, n, (n,), generator=gen)
    x, t = phi[sample], y[sample]
    if hidden == 0:
        x64, t64 = x.double(), t.double()
        gram = x64.T @ x64
        beta = 1e-3 * torch.trace(gram) / n
        w = torch.linalg.solve(gram + beta * torch.eye(d, dtype=torch.float64), x64.T @ t64)
        head = nn.Linear(d, 1, bias=False)
        head.weight.data.copy_(w.float().reshape(1, d))
        return head
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(epochs):
        opt.zero_grad()
        loss = ((head(x).reshape(-1) - t) ** 2).mean()
        loss.backward()
        opt.step()
    return head


def fit_auxiliary(phi_l: torch.Tensor, y_l: torch.Tensor, heads: int = 5, hidden: int = 64,
                  epochs: int = 200, seed: int = 0) -> AuxiliaryEnsemble:
    """Train the ensemble on offline embeddings (n, d) and z-scored labels (n,), deterministically."""
    phi = phi_l.detach().float().cpu()
    y = y_l.detach().float().cpu().reshape(-1)
    members = [_train_head(phi, y, hidden, epochs, seed * 1000 + k) for k in range(heads)]
    ensemble = AuxiliaryEnsemble(members)
    ensemble.requires_grad_(False)
    return ensemble.eval()
