"""The BIB design loop: M soft designs optimised in one batch.

One LM forward per step serves all M designs; each design keeps its own Adam moments, gamma and
learning rate, so the batch reproduces the authors' one-design-at-a-time loop. The loop is a
generator of :class:`StepRecord`, so callers (CLI, Tune trainables) report per step without the
engine knowing about them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from bib_ray.core.adaptive import AdaptiveEta, AdaptiveGamma, BatchedAdam
from bib_ray.core.config import EngineConfig
from bib_ray.core.relaxation import RELAXATIONS, RelaxedDesigns
from bib_ray.core.ridge import OfflineFit, backward_loss, forward_loss, forward_prediction

Embed = Callable[[RelaxedDesigns], torch.Tensor]
"""Relaxed designs (M, L, V) to embeddings phi (M, d), differentiable (the LM picks letters or k-mers)."""


class NonFiniteLossError(FloatingPointError):
    """A loss or gradient turned NaN or infinite: the run cannot go on."""


@dataclass(frozen=True)
class StepRecord:
    """What one design step produced (after the update)."""

    step: int
    designs: torch.Tensor  # (M, L) argmax sequences, int64, cpu
    forward_loss: torch.Tensor  # (M,) float64, cpu, before the update
    backward_loss: torch.Tensor  # (M,)
    prediction: torch.Tensor  # (M,) forward ridge prediction, z units
    gamma: torch.Tensor  # (M,) weight used this step
    eta: torch.Tensor  # (M,) learning rate used this step


def initial_logits(start: torch.Tensor, vocab: int, noise_std: float, seed: int) -> torch.Tensor:
    """Start logits as in the paper: one N(0, s^2) noise matrix (L, V) per seed, each row's largest
    entry swapped onto the start residue, so argmax(Z) is the start sequence. Shared by all designs,
    so a design's start does not depend on its batch."""
    m, length = start.shape
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(length, vocab, generator=gen, dtype=torch.float32) * noise_std
    z = noise.expand(m, length, vocab).clone()
    top_value, top_index = noise.max(dim=-1)  # (L,)
    start_cpu = start.cpu()
    at_start = noise.gather(1, start_cpu.T).T  # (M, L) noise value at the start residue
    z.scatter_(2, top_index.expand(m, length).unsqueeze(-1), at_start.unsqueeze(-1))
    z.scatter_(2, start_cpu.unsqueeze(-1), top_value.expand(m, length).unsqueeze(-1))
    return z


class BIBEngine:
    """BIB on a batch of designs: forward/backward kernel-ridge losses through a frozen LM proxy."""

    def __init__(self, embed: Embed, fit: OfflineFit, auxiliary: torch.nn.Module, config: EngineConfig,
                 start: torch.Tensor, vocab: int, device: torch.device | str = "cpu") -> None:
        self.embed = embed
        self.fit = fit.to(device)
        self.auxiliary = auxiliary.to(device)
        self.config = config
        self.device = torch.device(device)
        self.start = start.to(self.device)
        self.relax = RELAXATIONS[config.relaxation]
        m = start.shape[0]
        self.z = initial_logits(start, vocab, config.init_noise, config.seed).to(self.device)
        self.adam = BatchedAdam(self.z)
        variant = config.variant
        fixed = {"forward": 1.0, "backward": 0.0, "fixed": config.gamma, "learned": config.gamma, "grad": 1.0}
        self.gamma = torch.full((m,), fixed[variant], dtype=torch.float64, device=self.device)
        self.adaptive_gamma = (AdaptiveGamma(m, config.gamma, config.gamma_lr, self.device)
                               if variant == "learned" else None)
        self.adaptive_eta = (AdaptiveEta(config.eta_base, config.eta_scale, config.eta_min, config.eta_max)
                             if config.adaptive_eta else None)

    # --- pieces, public so tests can check each one -------------------------------------------
    def phi(self, z: torch.Tensor) -> torch.Tensor:
        """Embeddings of the relaxed designs."""
        return self.embed(self.relax(z))

    def auxiliary_score(self, z: torch.Tensor) -> torch.Tensor:
        """f_a of each design, (M,)."""
        return self.auxiliary(self.phi(z))

    def auxiliary_gradient(self, z: torch.Tensor) -> torch.Tensor:
        """d f_a / d Z for each design (designs are independent, so the gradient of the sum)."""
        z = z.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.auxiliary_score(z).sum(), z)
        return grad

    def gamma_hypergradient(self, z: torch.Tensor, grad_f: torch.Tensor, grad_b: torch.Tensor,
                            gamma: torch.Tensor, lr: float) -> torch.Tensor:
        """h = d f_a(Z - lr (gamma g_f + (1 - gamma) g_b)) / d gamma, exact at the stepped point."""
        g = _per_design(gamma, grad_f)
        lookahead = z.detach() - lr * (g * grad_f + (1 - g) * grad_b)
        tangent = -lr * (grad_f - grad_b)
        return (self.auxiliary_gradient(lookahead) * tangent).flatten(1).sum(1).to(torch.float64)

    def losses(self, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L_f, L_b and the forward ridge prediction of each design, (M,) each."""
        target = self.config.target
        return (forward_loss(phi, self.fit, target), backward_loss(phi, self.fit, target),
                forward_prediction(phi, self.fit))

    def graph_gradients(self, z: torch.Tensor, phi: torch.Tensor, loss_f: torch.Tensor, loss_b: torch.Tensor,
                        prediction: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        """Every gradient a step takes through its LM graph, which the last one frees: the design
        gradient (``(grad,)``, or ``(grad_f, grad_b)`` for the learned weight) and Adaptive-eta's
        gradient of f_a (None without it).

        Why f_a's gradient is taken here, before Adaptive-gamma's look-ahead: once it is taken the graph
        is freed, so the look-ahead's forward builds its graph alone: one LM graph alive at the peak,
        not two (the same backward of the same graph, so the same numbers)."""
        keep = self.adaptive_eta is not None
        if self.config.variant == "grad":
            grads = torch.autograd.grad(-prediction.sum(), z, retain_graph=keep)
        elif self.adaptive_gamma is not None:
            grads = _two_gradients(loss_f.sum(), loss_b.sum(), z, keep)
        else:
            weighted = (self.gamma * loss_f + (1 - self.gamma) * loss_b).sum()
            grads = torch.autograd.grad(weighted, z, retain_graph=keep)
        grad_fa = torch.autograd.grad(self.auxiliary(phi).sum(), z)[0] if keep else None
        return tuple(grads), grad_fa

    # --- the loop -------------------------------------------------------------------------------
    def step(self, index: int) -> StepRecord:
        """One design step for all M designs."""
        cfg = self.config
        z = self.z.detach().requires_grad_(True)
        phi = self.phi(z)
        loss_f, loss_b, prediction = self.losses(phi)
        _check_finite(loss_f, loss_b, index)
        grads, grad_fa = self.graph_gradients(z, phi, loss_f, loss_b, prediction)
        if self.adaptive_gamma is not None:
            grad_f, grad_b = grads
            h = self.gamma_hypergradient(z, grad_f, grad_b, self.gamma, cfg.lr)
            self.gamma = self.adaptive_gamma.update(h).clone()
            g = _per_design(self.gamma, grad_f)
            grad = g * grad_f + (1 - g) * grad_b
        else:
            (grad,) = grads
        if not torch.isfinite(grad).all():
            raise NonFiniteLossError(f"design gradient turned NaN or infinite at step {index}")
        if grad_fa is not None:
            eta = self.adaptive_eta.rate(grad_fa, self.adam.direction(grad))
        else:
            eta = torch.full((z.shape[0],), cfg.lr, dtype=z.dtype, device=z.device)
        with torch.no_grad():
            self.adam.step(self.z, grad, eta)
        return StepRecord(step=index, designs=self.designs().cpu(), forward_loss=loss_f.detach().cpu(),
                          backward_loss=loss_b.detach().cpu(), prediction=prediction.detach().cpu(),
                          gamma=self.gamma.detach().cpu().clone(), eta=eta.detach().double().cpu())

    def designs(self) -> torch.Tensor:
        """Current hard designs, (M, L) int64."""
        return self.z.detach().argmax(dim=-1)

    def run(self, steps: int) -> Iterator[StepRecord]:
        """Yield one record per step."""
        for index in range(steps):
            yield self.step(index)


def _per_design(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def _two_gradients(a: torch.Tensor, b: torch.Tensor, z: torch.Tensor, keep: bool) -> tuple[torch.Tensor, torch.Tensor]:
    (grad_a,) = torch.autograd.grad(a, z, retain_graph=True)
    (grad_b,) = torch.autograd.grad(b, z, retain_graph=keep)
    return grad_a, grad_b


def _check_finite(loss_f: torch.Tensor, loss_b: torch.Tensor, index: int) -> None:
    if not (torch.isfinite(loss_f).all() and torch.isfinite(loss_b).all()):
        raise NonFiniteLossError(f"BIB losses turned NaN or infinite at step {index}")

