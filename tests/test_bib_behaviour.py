"""BIB's own behaviour, checked against independent computations rather than against itself.

* Designs improve on their starts, by the oracle and by the proxy, on an additive task whose proxy
  is exact (one-hot embedding: the forward ridge is the true additive model up to scale and shift),
  so improvement is certain and a regression that stalls or reverses the climb fails.
* Adaptive-gamma ascends the auxiliary score: its first step (Adam's first step has the sign of the
  hypergradient) gives a higher look-ahead f_a than gamma moved by the same amount the other way.
* The Adaptive-eta rate equals hand-worked numbers and, in the engine, the formula computed from
  independently taken gradients.
* ``BatchedAdam`` equals ``torch.optim.Adam`` run on each problem alone.
* Learned, grad and Adaptive-eta equal a per-design loop written from BIB_NOTES.md's kernel formulas
  (K_hh of size 1, an explicit n x n solve, Adam written out), not from the engine's pieces.
* The forward and backward variants equal a reference loop that descends L_f (respectively L_b)
  with ``torch.optim.Adam``: swapping the two losses' weights fails.
* The auxiliary ensemble predicts held-out data better than a constant.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bib_ray.core.adaptive import AdaptiveEta, BatchedAdam
from bib_ray.core.auxiliary import fit_auxiliary
from bib_ray.core.config import EngineConfig
from bib_ray.core.engine import BIBEngine, initial_logits
from bib_ray.core.ridge import OfflineFit, backward_loss, forward_loss, forward_prediction


def one_hot_embed(designs) -> torch.Tensor:
    """The flattened (soft) one-hot: a linear kernel on it is an additive, per-position model. The engine
    hands its proxy a relaxation record (``letters`` is what a one-letter-per-token LM reads)."""
    return getattr(designs, "letters", designs).flatten(1)


@pytest.fixture()
def additive_setting(toy_task):
    x = torch.as_tensor(toy_task.offline_x)
    phi = one_hot_embed(F.one_hot(x, 4).float())
    y = torch.as_tensor(toy_task.offline_y)
    y = (y - y.mean()) / y.std()
    fit = OfflineFit.fit(phi, y)
    aux = fit_auxiliary(phi, y, heads=3, hidden=0, seed=0)
    start = x[torch.argsort(y)[-16:]]  # the 16 best offline sequences, as the runner starts
    return toy_task, fit, aux, start


# --- designs improve ------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["forward", "fixed", "learned", "grad"])
@pytest.mark.parametrize("eta", [False, True])
def test_designs_improve_on_their_starts(additive_setting, variant, eta):
    task, fit, aux, start = additive_setting
    engine = BIBEngine(one_hot_embed, fit, aux, EngineConfig(variant=variant, adaptive_eta=eta, lr=0.1), start, 4)
    designs = list(engine.run(30))[-1].designs
    start_oracle, end_oracle = task.oracle(start.numpy()), task.oracle(designs.numpy())
    assert (end_oracle >= start_oracle - 1e-12).all(), (start_oracle, end_oracle)  # no design got worse
    assert end_oracle.mean() > start_oracle.mean() + 0.5 * (task.y_max - start_oracle.mean())
    proxy = [forward_prediction(one_hot_embed(F.one_hot(d, 4).double()), fit) for d in (start, designs)]
    assert proxy[1].mean() > proxy[0].mean() + 0.5
    assert (proxy[1] >= proxy[0] - 1e-9).all()


def test_designs_improve_by_the_lm_proxy(lm_setting):
    """Through a (random, tiny) LM the oracle may not follow, but the proxy BIB climbs must rise."""
    proxy, fit, aux, start = lm_setting
    engine = BIBEngine(proxy.embed, fit, aux, EngineConfig(variant="learned", lr=0.5), start, 4)
    designs = list(engine.run(15))[-1].designs
    before = forward_prediction(proxy.embed_sequences(start), fit)
    after = forward_prediction(proxy.embed_sequences(designs), fit)
    assert after.mean() > before.mean(), (before, after)


# --- Adaptive-gamma climbs f_a --------------------------------------------------------------------
@pytest.mark.parametrize("gamma0", [0.2, 0.5, 0.8])
def test_adaptive_gamma_step_climbs_the_auxiliary_score(lm_setting, gamma0):
    proxy, fit, aux, start = lm_setting
    config = EngineConfig(variant="learned", relaxation="softmax", lr=0.5, gamma=gamma0, gamma_lr=0.1)
    engine = BIBEngine(proxy.embed, fit, aux, config, start, 4)
    z0, g0 = engine.z.detach().clone(), engine.gamma.clone()
    zg = z0.clone().requires_grad_(True)
    phi = engine.phi(zg)
    (g_f,) = torch.autograd.grad(forward_loss(phi, fit, config.target).sum(), zg, retain_graph=True)
    (g_b,) = torch.autograd.grad(backward_loss(phi, fit, config.target).sum(), zg)
    engine.step(0)
    g1 = engine.gamma.clone()

    def lookahead_score(gamma: torch.Tensor) -> torch.Tensor:
        g = gamma.to(z0.dtype).reshape(-1, 1, 1)
        with torch.no_grad():
            return engine.auxiliary_score(z0 - config.lr * (g * g_f + (1 - g) * g_b))

    moved = (g1 - g0).abs()
    assert (moved > 0.05).all(), moved  # Adam's first step: gamma_lr in the hypergradient's direction
    learned, reflected = lookahead_score(g1), lookahead_score(2 * g0 - g1)
    assert (learned > reflected).all(), (learned - reflected)


# --- Adaptive-eta ---------------------------------------------------------------------------------
def test_adaptive_eta_rate_hand_worked():
    eta = AdaptiveEta(base=0.1, scale=0.01, low=1e-3, high=0.12)
    grad_fa = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]], [[-1.0, 0.5]]])  # (M=3, L=1, V=2)
    direction = torch.tensor([[[0.5, -1.0]], [[20.0, 10.0]], [[1.0, 2.0]]])
    # design 0: <g, d> = 0.5 - 2 = -1.5 -> 0.1 + 0.015 = 0.115
    # design 1: <g, d> = 60 + 40 = 100 -> 0.1 - 1.0 < low -> 1e-3
    # design 2: <g, d> = -1 + 1 = 0 -> 0.1
    torch.testing.assert_close(eta.rate(grad_fa, direction), torch.tensor([0.115, 1e-3, 0.1], dtype=torch.float64))
    assert float(AdaptiveEta(0.1, 0.01, 1e-3, 0.11).rate(grad_fa[:1], direction[:1])[0]) == pytest.approx(0.11)


def test_engine_eta_is_the_formula_on_independent_gradients(lm_setting):
    """First step, forward variant: Adam's direction is g / (|g| + eps), so
    eta = clamp(eta_0 - c * sum(grad f_a * g / (|g| + eps)))."""
    proxy, fit, aux, start = lm_setting
    config = EngineConfig(variant="forward", adaptive_eta=True, relaxation="softmax", eta_base=0.1, eta_scale=0.05,
                          eta_min=1e-4, eta_max=0.5)
    engine = BIBEngine(proxy.embed, fit, aux, config, start, 4)
    z = engine.z.detach().clone().requires_grad_(True)
    phi = proxy.embed(torch.softmax(z, -1))
    (g,) = torch.autograd.grad(forward_loss(phi, fit, config.target).sum(), z, retain_graph=True)
    (g_fa,) = torch.autograd.grad(aux(phi).sum(), z)
    inner = (g_fa.double() * (g / (g.abs() + 1e-8)).double()).flatten(1).sum(1)
    expected = (0.1 - 0.05 * inner).clamp(1e-4, 0.5)
    record = engine.step(0)
    assert (expected > 1e-4).any() and (expected < 0.5).any() and not torch.allclose(expected, expected[0])
    torch.testing.assert_close(record.eta, expected, rtol=1e-4, atol=1e-7)


# --- BatchedAdam = torch.optim.Adam ----------------------------------------------------------------
def test_batched_adam_equals_torch_adam_one_problem_at_a_time():
    gen = torch.Generator().manual_seed(0)
    lrs = torch.tensor([0.01, 0.1, 0.5, 1.0], dtype=torch.float64)
    start = torch.randn(4, 3, 5, generator=gen, dtype=torch.float64)
    grads = [torch.randn(4, 3, 5, generator=gen, dtype=torch.float64) * (1 + k) for k in range(12)]
    batched = start.clone()
    adam = BatchedAdam(batched)
    for grad in grads:
        before = (adam.m.clone(), adam.v.clone(), adam.t)
        first, second = adam.direction(grad), adam.direction(grad)
        assert torch.equal(first, second) and torch.equal(adam.m, before[0]) and adam.t == before[2]
        adam.step(batched, grad, lrs)
    for i in range(4):
        param = torch.nn.Parameter(start[i].clone())
        reference = torch.optim.Adam([param], lr=float(lrs[i]))
        for grad in grads:
            param.grad = grad[i].clone()
            reference.step()
        torch.testing.assert_close(batched[i], param.detach(), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(batched[0] - start[0], batched[3] - start[3])  # the lrs really differ


# --- forward and backward are what they say --------------------------------------------------------
def _reference_descent(proxy, fit, start_row: torch.Tensor, config: EngineConfig, loss: str, steps: int):
    """One design alone, torch.optim.Adam on gamma L_f + (1 - gamma) L_b (softmax relaxation)."""
    z = torch.nn.Parameter(initial_logits(start_row, 4, config.init_noise, config.seed).double())
    opt = torch.optim.Adam([z], lr=config.lr)
    weight = {"forward": 1.0, "backward": 0.0, "fixed": config.gamma}[loss]
    for _ in range(steps):
        opt.zero_grad()
        phi = proxy.embed(torch.softmax(z, -1))
        total = weight * forward_loss(phi, fit, config.target) + (1 - weight) * backward_loss(phi, fit, config.target)
        total.sum().backward()
        opt.step()
    return z.detach()


def _float64_engine(proxy, fit, aux, config: EngineConfig, start: torch.Tensor) -> tuple[BIBEngine, object]:
    """The engine computing in float64 end to end (Adam normalises tiny gradients, so float32 rounding
    can flip a near-zero component's step)."""
    proxy64 = proxy.astype(torch.float64)
    engine = BIBEngine(proxy64.embed, fit, aux.double(), config, start, 4)
    engine.z = engine.z.double()
    engine.adam = BatchedAdam(engine.z)
    return engine, proxy64


@pytest.mark.parametrize("variant", ["forward", "backward", "fixed"])
def test_variants_descend_their_own_loss(lm_setting, variant):
    proxy, fit, aux, start = lm_setting
    config = EngineConfig(variant=variant, relaxation="softmax", lr=0.05, gamma=0.3)
    engine, proxy64 = _float64_engine(proxy, fit, aux, config, start)
    list(engine.run(5))
    for i in range(start.shape[0]):
        reference = _reference_descent(proxy64, fit, start[i:i + 1], config, variant, 5)
        torch.testing.assert_close(engine.z[i:i + 1], reference, rtol=1e-9, atol=1e-9)


def test_forward_and_backward_variants_differ(lm_setting):
    """Guard against a vacuous comparison above: the two losses pull the designs apart."""
    proxy, fit, aux, start = lm_setting
    ends = []
    for variant in ("forward", "backward"):
        engine, _ = _float64_engine(proxy, fit, aux, EngineConfig(variant=variant, relaxation="softmax", lr=0.05),
                                    start)
        list(engine.run(5))
        ends.append(engine.z.clone())
    assert (ends[0] - ends[1]).abs().max() > 0.05


# --- learned, grad and Adaptive-eta against a loop written from BIB_NOTES.md -----------------------
def _notes_start_logits(start_row: torch.Tensor, vocab: int, noise_std: float, seed: int) -> torch.Tensor:
    """BIB_NOTES: Z starts as N(0, s^2) noise with each row's largest entry swapped onto the start letter."""
    noise = torch.randn(start_row.shape[1], vocab, generator=torch.Generator().manual_seed(seed)) * noise_std
    z = noise.clone()
    for pos, letter in enumerate(start_row[0].tolist()):
        top = int(noise[pos].argmax())
        z[pos, top], z[pos, letter] = noise[pos, letter], noise[pos, top]
    return z.unsqueeze(0).double()


def _adam_direction(m, v, t, grad, b1=0.9, b2=0.999, eps=1e-8):
    """Adam's next moments and bias-corrected step direction, written out."""
    m, v, t = b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * grad * grad, t + 1
    return m, v, t, (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)


def _notes_reference(embed, phi_l, y_l, aux, start_row, config: EngineConfig, steps: int) -> list[dict]:
    """One design alone, K_hh of size 1, in the kernel forms of BIB_NOTES.md (explicit n x n solve, not
    the engine's primal d x d form): per step its losses, gamma, eta and the logits after the step."""
    y_h, lr, n = config.target, config.lr, len(y_l)
    k_ll = phi_l @ phi_l.T
    beta_l = config.beta_scale * 1e-6 * torch.trace(k_ll) / n
    alpha = torch.linalg.solve(k_ll + beta_l * torch.eye(n, dtype=k_ll.dtype), y_l)
    z = _notes_start_logits(start_row, 4, config.init_noise, config.seed)
    m, v, t = torch.zeros_like(z), torch.zeros_like(z), 0
    gamma, gm, gv, gt = torch.tensor(config.gamma, dtype=torch.float64), 0.0, 0.0, 0
    soft = lambda logits: torch.softmax(logits, -1)  # noqa: E731

    def grad_of(value, at):
        return torch.autograd.grad(value.sum(), at, retain_graph=True)[0]

    out = []
    for _ in range(steps):
        zg = z.clone().requires_grad_(True)
        phi = embed(soft(zg))  # (1, d)
        pred_h = (phi @ phi_l.T) @ alpha  # forward: low to high
        loss_f = (pred_h - y_h) ** 2
        k_hh = phi @ phi.T  # (1, 1)
        beta_h = config.beta_scale * 1e-6 * k_hh
        pred_l = (phi_l @ phi.T) @ torch.linalg.solve(k_hh + beta_h, torch.full((1, 1), y_h, dtype=phi.dtype))
        loss_b = ((pred_l.reshape(-1) - y_l) ** 2).mean().reshape(1)  # backward: high to low
        if config.variant == "grad":
            grad = grad_of(-pred_h, zg)
        elif config.variant == "learned":
            g_f, g_b = grad_of(loss_f, zg), grad_of(loss_b, zg)
            look = (z - lr * (gamma * g_f + (1 - gamma) * g_b)).requires_grad_(True)
            h = (grad_of(aux(embed(soft(look))), look) * (-lr * (g_f - g_b))).sum()
            gm, gv, gt, step = _adam_direction(gm, gv, gt, -h)  # Adam on -h: gamma ascends f_a
            gamma = (gamma - config.gamma_lr * step).clamp(0.0, 1.0)
            grad = gamma * g_f + (1 - gamma) * g_b
        else:
            grad = grad_of(gamma * loss_f + (1 - gamma) * loss_b, zg)
        m, v, t, direction = _adam_direction(m, v, t, grad.detach())
        if config.adaptive_eta:
            inner = (grad_of(aux(phi), zg) * direction).sum()
            eta = (config.eta_base - config.eta_scale * inner).clamp(config.eta_min, config.eta_max)
        else:
            eta = torch.tensor(lr, dtype=torch.float64)
        z = (z - eta * direction).detach()
        out.append({"forward_loss": loss_f.detach(), "backward_loss": loss_b.detach(), "gamma": gamma.detach(),
                    "eta": eta.detach(), "z": z})
    return out


@pytest.mark.parametrize("variant,eta", [("learned", False), ("grad", False), ("fixed", True), ("learned", True)])
def test_engine_equals_a_per_design_loop_from_the_notes(lm_setting, toy_task, variant, eta):
    """The batched engine (float64) against :func:`_notes_reference` run on each design alone: same losses,
    gamma, eta and logits at every step. Flipping Adaptive-gamma's ascent, the hypergradient's sign, the
    eta formula or the grad variant's objective fails here."""
    proxy, fit, aux, start = lm_setting
    x = torch.as_tensor(toy_task.offline_x)
    y = torch.as_tensor(toy_task.offline_y)
    y_l = ((y - y.mean()) / y.std()).double()
    phi_l = proxy.embed_sequences(x).double()  # what the fixture's fit was computed from
    config = EngineConfig(variant=variant, adaptive_eta=eta, relaxation="softmax", lr=0.3, eta_scale=0.05)
    engine, proxy64 = _float64_engine(proxy, fit, aux, config, start)
    steps = 4
    batch = []
    for record in engine.run(steps):
        batch.append((record, engine.z.clone()))
    for i in range(start.shape[0]):
        reference = _notes_reference(proxy64.embed, phi_l, y_l, aux, start[i:i + 1], config, steps)
        for (record, z), ref in zip(batch, reference):
            close = dict(rtol=1e-6, atol=1e-8)
            torch.testing.assert_close(record.forward_loss[i:i + 1], ref["forward_loss"], **close)
            torch.testing.assert_close(record.backward_loss[i:i + 1], ref["backward_loss"], **close)
            if variant != "grad":  # grad ascends the prediction: no gamma (the engine records 1.0)
                torch.testing.assert_close(record.gamma[i], ref["gamma"], **close)
            torch.testing.assert_close(record.eta[i], ref["eta"], **close)
            torch.testing.assert_close(z[i:i + 1], ref["z"], **close)
    gammas = torch.stack([r.gamma for r, _ in batch])
    etas = torch.stack([r.eta for r, _ in batch])
    if variant == "learned":  # the comparison is not vacuous: gamma moved, differently per design
        assert (gammas[-1] != 0.5).all() and gammas[-1].std() > 0
    if eta:
        assert etas.std() > 0


# --- the auxiliary ensemble learns -----------------------------------------------------------------
@pytest.mark.parametrize("hidden", [0, 16])
def test_auxiliary_beats_a_constant_on_held_out_data(hidden):
    gen = torch.Generator().manual_seed(0)
    phi = torch.randn(400, 12, generator=gen)
    w = torch.randn(12, generator=gen)
    y = phi @ w + 0.3 * torch.randn(400, generator=gen)
    y = (y - y.mean()) / y.std()
    train, test = slice(0, 300), slice(300, 400)
    aux = fit_auxiliary(phi[train], y[train], heads=5, hidden=hidden, epochs=300, seed=1)
    with torch.no_grad():
        error = ((aux(phi[test]) - y[test]) ** 2).mean()
    constant = ((y[train].mean() - y[test]) ** 2).mean()
    assert error < 0.25 * constant, (float(error), float(constant))
