"""BIB's losses equal an explicit kernel ridge computed another way (numpy, n x n kernels)."""

import numpy as np
import torch

from bib_ray.core.ridge import OfflineFit, backward_loss, forward_loss


def _explicit(phi_l, y_l, phi_h, target, scale):
    k_ll = phi_l @ phi_l.T
    beta_l = scale * 1e-6 * np.trace(k_ll) / len(k_ll)
    alpha = np.linalg.solve(k_ll + beta_l * np.eye(len(k_ll)), y_l)
    forward, backward = [], []
    for phi in phi_h:
        pred_h = phi @ phi_l.T @ alpha
        forward.append((pred_h - target) ** 2)
        k_hh = np.array([[phi @ phi]])
        beta_h = scale * 1e-6 * np.trace(k_hh) / 1
        coef = np.linalg.solve(k_hh + beta_h * np.eye(1), np.array([target]))
        pred_l = (phi_l @ phi[:, None]) @ coef
        backward.append(np.mean((pred_l - y_l) ** 2))
    return np.array(forward), np.array(backward)


def test_losses_match_explicit_kernel_ridge():
    rng = np.random.default_rng(0)
    phi_l = rng.normal(size=(60, 8))
    y_l = rng.normal(size=60)
    phi_h = rng.normal(size=(5, 8))
    for scale in (1.0, 1e3):
        fit = OfflineFit.fit(torch.from_numpy(phi_l), torch.from_numpy(y_l), scale)
        f = forward_loss(torch.from_numpy(phi_h), fit, 10.0).numpy()
        b = backward_loss(torch.from_numpy(phi_h), fit, 10.0).numpy()
        f_ref, b_ref = _explicit(phi_l, y_l, phi_h, 10.0, scale)
        np.testing.assert_allclose(f, f_ref, rtol=1e-8)
        np.testing.assert_allclose(b, b_ref, rtol=1e-8)


def test_losses_match_sklearn_kernel_ridge():
    from sklearn.kernel_ridge import KernelRidge

    rng = np.random.default_rng(1)
    phi_l, y_l, phi_h = rng.normal(size=(40, 6)), rng.normal(size=40), rng.normal(size=(3, 6))
    fit = OfflineFit.fit(torch.from_numpy(phi_l), torch.from_numpy(y_l), 1.0)
    beta = float(fit.beta_l)
    ref = KernelRidge(alpha=beta, kernel="linear").fit(phi_l, y_l).predict(phi_h)
    np.testing.assert_allclose(forward_loss(torch.from_numpy(phi_h), fit, 3.0).numpy(), (ref - 3.0) ** 2,
                               rtol=1e-8)


def test_backward_loss_is_differentiable_and_finite():
    phi_l = torch.randn(30, 4, dtype=torch.float64)
    fit = OfflineFit.fit(phi_l, torch.randn(30, dtype=torch.float64))
    phi_h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    backward_loss(phi_h, fit, 10.0).sum().backward()
    assert torch.isfinite(phi_h.grad).all() and phi_h.grad.abs().sum() > 0
