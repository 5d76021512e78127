"""BIB's two closed-form kernel-ridge losses on a linear kernel K(a, b) = phi(a) . phi(b).

Why primal forms: the kernel is linear in a d-dimensional embedding, so every n x n solve has an
exact d x d twin (push-through identity). We solve the offline side once in float64 and reduce each
design's losses to O(d^2) work; the numbers equal the kernel forms (tests check against an explicit
kernel solve to 1e-8).

Forward (low to high): alpha = (K_ll + beta_l I)^-1 y_l, pred_h = phi_h Phi_l^T alpha,
L_f = (pred_h - y_h)^2. With w = Phi_l^T alpha = (Phi_l^T Phi_l + beta_l I)^-1 Phi_l^T y_l,
pred_h = phi_h . w.

Backward (high to low), one design at a time as in the authors' loop (K_hh is 1 x 1):
pred_l = K_lh y_h / (K_hh + beta_h), L_b = mean_l (pred_l - y_l)^2, beta_h = s 1e-6 K_hh. Expanded,
L_b = c^2 phi^T G phi - 2 c phi . u + mean(y_l^2) with G = Phi^T Phi / n, u = Phi^T y / n,
c = y_h / (K_hh + beta_h).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

RIDGE_FACTOR = 1e-6


def ridge_beta(trace: torch.Tensor, size: int, scale: float) -> torch.Tensor:
    """The ridge of the notes: scale * 1e-6 * trace(K) / size."""
    return scale * RIDGE_FACTOR * trace / size


@dataclass(frozen=True)
class OfflineFit:
    """What the losses need from the offline data, computed once in float64."""

    w: torch.Tensor  # (d,) forward ridge weights
    gram: torch.Tensor  # (d, d) Phi^T Phi / n
    cross: torch.Tensor  # (d,) Phi^T y / n
    y_sq_mean: torch.Tensor  # () mean(y^2)
    beta_l: torch.Tensor  # () forward ridge
    beta_scale: float

    @classmethod
    def fit(cls, phi_l: torch.Tensor, y_l: torch.Tensor, beta_scale: float = 1.0) -> "OfflineFit":
        """Solve the forward ridge and precompute the backward statistics (float64)."""
        phi = phi_l.to(torch.float64)
        y = y_l.to(torch.float64).reshape(-1)
        n, d = phi.shape
        gram_full = phi.T @ phi
        beta_l = ridge_beta(torch.trace(gram_full), n, beta_scale)  # trace(K_ll) = trace(Phi^T Phi)
        eye = torch.eye(d, dtype=torch.float64, device=phi.device)
        w = torch.linalg.solve(gram_full + beta_l * eye, phi.T @ y)
        return cls(w=w, gram=gram_full / n, cross=phi.T @ y / n, y_sq_mean=(y * y).mean(),
                   beta_l=beta_l, beta_scale=beta_scale)

    def to(self, device: torch.device | str) -> "OfflineFit":
        """The same fit on another device."""
        return OfflineFit(self.w.to(device), self.gram.to(device), self.cross.to(device),
                          self.y_sq_mean.to(device), self.beta_l.to(device), self.beta_scale)


def forward_prediction(phi_h: torch.Tensor, fit: OfflineFit) -> torch.Tensor:
    """Ridge prediction of each design from the offline data, (M,)."""
    return phi_h.to(torch.float64) @ fit.w


def forward_loss(phi_h: torch.Tensor, fit: OfflineFit, target: float) -> torch.Tensor:
    """L_f per design, (M,): push the prediction from the offline fit toward y_h."""
    return (forward_prediction(phi_h, fit) - target) ** 2


def backward_loss(phi_h: torch.Tensor, fit: OfflineFit, target: float) -> torch.Tensor:
    """L_b per design, (M,): a ridge fit on the design alone (label y_h) must predict the offline y."""
    phi = phi_h.to(torch.float64)
    k_hh = (phi * phi).sum(-1)
    beta_h = ridge_beta(k_hh, 1, fit.beta_scale)
    coef = target / (k_hh + beta_h)
    quad = ((phi @ fit.gram) * phi).sum(-1)
    return coef * coef * quad - 2.0 * coef * (phi @ fit.cross) + fit.y_sq_mean
