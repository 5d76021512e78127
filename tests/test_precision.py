"""``precision: bf16``: the LM runs in bfloat16, embeddings, losses and ridge solves stay fp32."""

from __future__ import annotations

import pytest
import torch

from bib_ray.core.config import EngineConfig
from bib_ray.core.engine import BIBEngine
from bib_ray.core.ridge import OfflineFit
from bib_ray.errors import BibInputError
from bib_ray.proxy.small_lm import SmallLMConfig, build_small_bert
from bib_ray.proxy.lm_proxy import LMProxy
from bib_ray.spec import RunSpec
from bib_ray.workbench import clear_workbenches, get_workbench

# bf16 keeps 8 bits of mantissa (relative rounding 2**-9, about 2e-3 per operation); through a few
# layers the embedding's relative error measured here is about 5e-3.
COSINE_AT_LEAST = 0.999
RELATIVE_ERROR_BELOW = 2e-2


def _proxy(config: SmallLMConfig) -> LMProxy:
    model, tokenizer = build_small_bert("ACGT", config, 8)
    return LMProxy(model, tokenizer, "ACGT", "tiny")


@pytest.mark.parametrize("config", [SmallLMConfig(hidden=16, layers=1, heads=2, intermediate=32),
                                    SmallLMConfig()], ids=["tiny", "default_shape"])
def test_bf16_embeddings_agree_with_fp32(config):
    fp32 = _proxy(config)
    bf16 = fp32.astype(torch.bfloat16)
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert next(fp32.model.parameters()).dtype == torch.float32  # the copy leaves the original alone
    soft = torch.softmax(3 * torch.randn(64, 8, 4, generator=torch.Generator().manual_seed(0)), -1)
    a, b = fp32.embed(soft), bf16.embed(soft)
    assert b.dtype == torch.float32  # the kernel and the losses see fp32
    assert not torch.equal(a, b)  # it really ran in bf16
    cosine = torch.nn.functional.cosine_similarity(a, b)
    relative = (a - b).norm(dim=1) / a.norm(dim=1)
    assert cosine.min() > COSINE_AT_LEAST, cosine.min()
    assert relative.max() < RELATIVE_ERROR_BELOW, relative.max()


@pytest.mark.parametrize("variant,eta", [("learned", True), ("fixed", False)])
def test_bf16_engine_run_has_finite_losses_close_to_fp32(lm_setting, toy_task, variant, eta):
    """Each precision with its own offline embeddings and fits, as a run does. The ridge is made well
    conditioned (beta_scale 1e5): at the default ridge this random tiny LM's Gram matrix has a condition
    number near 1e16 and ||w|| near 500, so any change of phi, bf16's included, moves the predictions by
    O(1); that is the ridge's sensitivity, not a bf16 fault, and would hide one."""
    proxy, _, aux, start = lm_setting
    x = torch.as_tensor(toy_task.offline_x)
    y = torch.as_tensor(toy_task.offline_y)
    y = (y - y.mean()) / y.std()
    config = EngineConfig(variant=variant, adaptive_eta=eta, aux_hidden=8, beta_scale=1e5)
    runs = {}
    for name, lm in (("fp32", proxy), ("bf16", proxy.astype(torch.bfloat16))):
        fit = OfflineFit.fit(lm.embed_sequences(x), y, config.beta_scale)
        runs[name] = list(BIBEngine(lm.embed, fit, aux, config, start, 4).run(6))
    for record in runs["bf16"]:
        for values in (record.forward_loss, record.backward_loss, record.prediction, record.eta, record.gamma):
            assert torch.isfinite(values).all()
        assert record.forward_loss.dtype == torch.float64  # losses and solves in fp64, never bf16
    first, reference = runs["bf16"][0], runs["fp32"][0]
    torch.testing.assert_close(first.prediction, reference.prediction, rtol=0, atol=5e-2)
    torch.testing.assert_close(first.backward_loss, reference.backward_loss, rtol=2e-2, atol=5e-2)


def test_precision_setting_is_validated():
    assert RunSpec().precision == "fp32"
    assert RunSpec().with_updates({"precision": "bf16"}).precision == "bf16"
    with pytest.raises(BibInputError, match="precision"):
        RunSpec().with_updates({"precision": "fp16"})


def test_bf16_workbench_embeds_the_offline_set_with_the_bf16_lm(tiny_lm_dir):
    clear_workbenches()
    spec = RunSpec().with_updates({"lm": tiny_lm_dir})
    fp32 = get_workbench(spec)
    bf16 = get_workbench(spec.with_updates({"precision": "bf16"}))
    assert bf16 is not fp32
    assert next(bf16.proxy.model.parameters()).dtype == torch.bfloat16
    assert next(fp32.proxy.model.parameters()).dtype == torch.float32
    assert bf16.cache_key != fp32.cache_key  # its own embeddings and f_a caches
    assert bf16.phi_l.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(bf16.phi_l, fp32.phi_l).min() > COSINE_AT_LEAST
    assert not torch.equal(bf16.phi_l, fp32.phi_l)
    x = torch.tensor(bf16.task.offline_x[:8], dtype=torch.long)
    onehot = torch.nn.functional.one_hot(x, len(bf16.task.alphabet)).float()
    torch.testing.assert_close(bf16.proxy.embed(onehot), bf16.phi_l[:8], rtol=0, atol=1e-2)  # same LM, same phi
    clear_workbenches()
