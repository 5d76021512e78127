"""The batched engine: equals the one-at-a-time loop, exact Adaptive-gamma, variants as gammas."""

import pytest
import torch

from bib_ray.core.config import EngineConfig
from bib_ray.core.engine import BIBEngine, initial_logits


@pytest.fixture()
def setting(lm_setting):
    return lm_setting


def _run(setting, config, start=None, steps=4):
    proxy, fit, aux, default_start = setting
    start = default_start if start is None else start
    engine = BIBEngine(proxy.embed, fit, aux, config, start, 4)
    return list(engine.run(steps)), engine


def test_initial_logits_argmax_is_start():
    start = torch.tensor([[0, 1, 2, 3], [3, 3, 0, 1]])
    z = initial_logits(start, 4, 0.01, seed=3)
    assert torch.equal(z.argmax(-1), start)
    assert not torch.equal(z[0, 0], z[1, 0])


@pytest.mark.parametrize("variant,eta", [("learned", True), ("fixed", False), ("grad", True)])
def test_batch_equals_loop(setting, variant, eta):
    config = EngineConfig(variant=variant, adaptive_eta=eta, lr=0.5, aux_hidden=8)
    batch, _ = _run(setting, config)
    start = setting[3]
    for i in range(start.shape[0]):
        single, _ = _run(setting, config, start[i:i + 1])
        for b, s in zip(batch, single):
            assert torch.equal(b.designs[i], s.designs[0])
            torch.testing.assert_close(b.forward_loss[i:i + 1], s.forward_loss, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(b.backward_loss[i:i + 1], s.backward_loss, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(b.gamma[i:i + 1], s.gamma, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(b.eta[i:i + 1], s.eta, rtol=1e-4, atol=1e-6)


def test_designs_move(setting):
    """The designs leave their starts, and by what the forward variant optimises they get better: the
    forward loss falls and the ridge prediction rises (an update of the wrong sign fails both)."""
    records, _ = _run(setting, EngineConfig(variant="forward", lr=1.0), steps=10)
    assert (records[-1].designs != setting[3]).any()
    assert records[-1].forward_loss.mean() < records[0].forward_loss.mean()
    assert records[-1].prediction.mean() > records[0].prediction.mean()
    assert (records[-1].forward_loss <= records[0].forward_loss).sum() > records[0].forward_loss.numel() // 2


def test_gamma_hypergradient_matches_finite_difference(setting):
    config = EngineConfig(variant="learned", relaxation="softmax")
    _, engine = _run(setting, config, steps=0)
    z = engine.z.clone().double()
    engine.embed = setting[0].astype(torch.float64).embed
    engine.auxiliary = engine.auxiliary.double()
    zg = z.clone().requires_grad_(True)
    phi = engine.phi(zg)
    from bib_ray.core.ridge import backward_loss, forward_loss
    (gf,) = torch.autograd.grad(forward_loss(phi, engine.fit, 10.0).sum(), zg, retain_graph=True)
    (gb,) = torch.autograd.grad(backward_loss(phi, engine.fit, 10.0).sum(), zg)
    gamma = torch.full((z.shape[0],), 0.3, dtype=torch.float64)
    lr = 0.05
    h = engine.gamma_hypergradient(z, gf, gb, gamma, lr)

    def score(g):
        gg = g.reshape(-1, 1, 1)
        with torch.no_grad():
            return engine.auxiliary_score(z - lr * (gg * gf + (1 - gg) * gb))

    eps = 1e-5
    fd = (score(gamma + eps) - score(gamma - eps)) / (2 * eps)
    assert h.abs().max() > 0
    torch.testing.assert_close(h, fd, rtol=1e-4, atol=1e-8)


def test_learned_gamma_moves_and_stays_in_unit_interval(setting):
    records, _ = _run(setting, EngineConfig(variant="learned", lr=0.5, aux_hidden=8), steps=5)
    gammas = torch.stack([r.gamma for r in records])
    assert (gammas >= 0).all() and (gammas <= 1).all()
    assert not torch.allclose(gammas[-1], torch.full_like(gammas[-1], 0.5))


def test_learned_gamma_first_step_follows_the_hypergradient(setting):
    """Adam's first step moves gamma by gamma_lr with the sign of h = d f_a / d gamma (an ascent): from 0.5,
    to 0.6 where raising gamma raises the look-ahead score, to 0.4 where it lowers it."""
    config = EngineConfig(variant="learned", lr=0.5, aux_hidden=8, gamma_lr=0.1)
    _, engine = _run(setting, config, steps=0)
    z = engine.z.detach().clone().requires_grad_(True)
    phi = engine.phi(z)
    from bib_ray.core.ridge import backward_loss, forward_loss

    (g_f,) = torch.autograd.grad(forward_loss(phi, engine.fit, config.target).sum(), z, retain_graph=True)
    (g_b,) = torch.autograd.grad(backward_loss(phi, engine.fit, config.target).sum(), z)
    h = engine.gamma_hypergradient(z.detach(), g_f, g_b, engine.gamma, config.lr)
    record = engine.step(0)
    assert (h.abs() > 1e-6).all(), h
    torch.testing.assert_close(record.gamma, 0.5 + 0.1 * torch.sign(h), rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant,gamma", [("forward", 1.0), ("backward", 0.0)])
def test_one_direction_variants_are_fixed_gamma(setting, variant, gamma):
    one, _ = _run(setting, EngineConfig(variant=variant, lr=0.5))
    fixed, _ = _run(setting, EngineConfig(variant="fixed", gamma=gamma, lr=0.5))
    for a, b in zip(one, fixed):
        assert torch.equal(a.designs, b.designs)
        torch.testing.assert_close(a.forward_loss, b.forward_loss)
        assert torch.all(a.gamma == gamma)


def test_adaptive_eta_stays_in_bounds(setting):
    for scale in (1e-3, 1e4):
        config = EngineConfig(variant="fixed", adaptive_eta=True, eta_scale=scale, eta_min=0.01, eta_max=0.3)
        records, _ = _run(setting, config)
        etas = torch.stack([r.eta for r in records])
        assert (etas >= 0.01).all() and (etas <= 0.3).all()
        if scale < 1:
            assert etas.std() > 0 and ((etas > 0.01) & (etas < 0.3)).all()
    assert ((etas == 0.01) | (etas == 0.3)).any()  # a large scale reaches the clamps


def test_deterministic_for_seed(setting):
    a, engine_a = _run(setting, EngineConfig(variant="learned", seed=4, aux_hidden=8))
    b, engine_b = _run(setting, EngineConfig(variant="learned", seed=4, aux_hidden=8))
    assert all(torch.equal(x.designs, y.designs) and torch.equal(x.forward_loss, y.forward_loss)
               and torch.equal(x.gamma, y.gamma) for x, y in zip(a, b))
    assert torch.equal(engine_a.z, engine_b.z)
    # A different seed draws other start noise: the logits (and so the learned gammas) differ.
    c, engine_c = _run(setting, EngineConfig(variant="learned", seed=5, aux_hidden=8))
    assert not torch.equal(engine_a.z, engine_c.z)
    assert not torch.equal(a[-1].gamma, c[-1].gamma)
