"""Per-design optimiser state: the design Adam, Adaptive-gamma and Adaptive-eta.

Each design is an independent problem (the authors loop over designs one at a time), so every state
here is a vector over the M designs: running them in one batch gives the loop's numbers.
"""

from __future__ import annotations

import torch


class BatchedAdam:
    """Adam over a tensor whose first axis indexes independent problems, each with its own lr.

    Same update as torch.optim.Adam (bias-corrected moments), but the learning rate is a vector, and
    the direction of the next step can be read before it is taken (Adaptive-eta needs it).
    """

    def __init__(self, like: torch.Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.m = torch.zeros_like(like)
        self.v = torch.zeros_like(like)
        self.t = 0
        self.beta1, self.beta2 = betas
        self.eps = eps

    def _moments(self, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.beta1 * self.m + (1 - self.beta1) * grad
        v = self.beta2 * self.v + (1 - self.beta2) * grad * grad
        return m, v

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """The step direction m_hat / (sqrt(v_hat) + eps) that ``grad`` would produce, state untouched."""
        m, v = self._moments(grad)
        t = self.t + 1
        m_hat = m / (1 - self.beta1 ** t)
        v_hat = v / (1 - self.beta2 ** t)
        return m_hat / (v_hat.sqrt() + self.eps)

    def step(self, param: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor | float) -> torch.Tensor:
        """Take the step in place and return ``param``; ``lr`` is a scalar or one value per problem."""
        direction = self.direction(grad)
        self.m, self.v = self._moments(grad)
        self.t += 1
        if isinstance(lr, torch.Tensor):
            lr = lr.reshape(-1, *([1] * (param.dim() - 1))).to(param.dtype)
        param.sub_(lr * direction)
        return param


class AdaptiveGamma:
    """Learned forward/backward weight: ascends f_a after one design step, by its own Adam.

    With Z' = Z - lr (gamma g_f + (1 - gamma) g_b), the hypergradient is
    h = d f_a(Z') / d gamma = < grad f_a(Z'), -lr (g_f - g_b) >; gamma moves to increase f_a and is
    clamped to [0, 1].
    """

    def __init__(self, designs: int, init: float, lr: float, device: torch.device | str = "cpu",
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.gamma = torch.full((designs,), float(init), dtype=torch.float64, device=device)
        self.lr = lr
        self._adam = BatchedAdam(self.gamma, betas, eps)

    def update(self, hypergradient: torch.Tensor) -> torch.Tensor:
        """One Adam ascent step on gamma given h = d f_a / d gamma, (M,); returns the new gamma."""
        self._adam.step(self.gamma, -hypergradient.to(self.gamma.dtype), self.lr)
        self.gamma.clamp_(0.0, 1.0)
        return self.gamma


class AdaptiveEta:
    """Learned design learning rate: eta = clamp(eta_0 - c < grad f_a, d >, lo, hi), per design.

    d is the next Adam direction, so -<grad f_a, d> = d f_a(Z - eta d) / d eta at eta = 0: the rate
    grows when the step climbs f_a. Not accumulated across steps, as in the authors' code.
    """

    def __init__(self, base: float, scale: float, low: float, high: float) -> None:
        self.base, self.scale, self.low, self.high = base, scale, low, high

    def rate(self, grad_fa: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        """Per-design learning rate, (M,)."""
        inner = (grad_fa.double() * direction.double()).flatten(1).sum(1)
        return (self.base - self.scale * inner).clamp(self.low, self.high)
