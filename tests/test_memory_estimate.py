"""The memory estimate from the LM's config on ``meta`` against real tensors on CPU, Adaptive-eta's peak,
and the pre-start warning for a GPU share too small."""

from __future__ import annotations

import io

import pytest
import torch

from bib_ray.bench.memory import (SavedTensorMeter, estimate_trial_memory, peak_saved_bytes,
                                  visible_gpu_memory, warn_if_gpu_share_too_small)
from bib_ray.core.auxiliary import fit_auxiliary
from bib_ray.core.engine import BIBEngine
from bib_ray.core.ridge import OfflineFit, backward_loss, forward_loss
from bib_ray.proxy.lm_proxy import LMProxy
from bib_ray.proxy.small_lm import SmallLMConfig, build_small_bert
from bib_ray.spec import RunSpec

ALPHABET, LENGTH, DESIGNS = "ACGT", 8, 16
SMALL_BERT = SmallLMConfig(hidden=32, layers=2, heads=4, intermediate=64, steps=0)


@pytest.fixture(scope="module")
def small_bert_dir(tmp_path_factory) -> str:
    """A small BERT saved by path: loaded as any Hugging Face LM (fused SDPA attention on CPU)."""
    model, tokenizer = build_small_bert(ALPHABET, SMALL_BERT, LENGTH)
    path = tmp_path_factory.mktemp("small_bert")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _cpu_engine(proxy: LMProxy, spec: RunSpec) -> BIBEngine:
    """A real engine on CPU: real random weights, real offline embeddings and f_a."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, len(ALPHABET), (64, LENGTH), generator=gen)
    phi = proxy.embed_sequences(x)
    y = torch.randn(64, generator=gen)
    fit = OfflineFit.fit(phi, y)
    cfg = spec.engine
    aux = fit_auxiliary(phi, y, cfg.aux_heads, cfg.aux_hidden, 5, cfg.seed)
    return BIBEngine(proxy.embed, fit, aux, cfg, x[:cfg.designs], len(ALPHABET), "cpu")


def _default_lm_proxy(spec: RunSpec) -> LMProxy:
    model, tokenizer = build_small_bert(ALPHABET, spec.lm_pretrain, LENGTH)
    model.set_attn_implementation("eager")  # as LMProxy.load runs bib-ray's own LM
    return LMProxy(model, tokenizer, ALPHABET, "default")


def _spec(lm: str | None, variant: str, eta: bool) -> RunSpec:
    return RunSpec().with_updates({"lm": lm, "engine.designs": DESIGNS, "engine.variant": variant,
                                   "engine.adaptive_eta": eta, "engine.aux_hidden": 8})


@pytest.mark.parametrize("which", ["default_lm", "small_bert"])
@pytest.mark.parametrize("variant,eta,precision", [("learned", False, "fp32"), ("learned", True, "fp32"),
                                                   ("fixed", True, "fp32"), ("grad", False, "fp32"),
                                                   ("learned", True, "bf16")])
def test_estimate_within_20_percent_of_cpu_saved_bytes(which, variant, eta, precision, small_bert_dir):
    lm = None if which == "default_lm" else small_bert_dir
    spec = _spec(lm, variant, eta).with_updates({"precision": precision})
    estimate = estimate_trial_memory(spec, ALPHABET, LENGTH)  # meta: no weights, no data
    proxy = _default_lm_proxy(spec) if lm is None else LMProxy.load(lm, ALPHABET, "cpu")
    if precision == "bf16":
        proxy = proxy.astype(torch.bfloat16)
    engine = _cpu_engine(proxy, spec)
    measured = peak_saved_bytes(engine, lambda e: e.step(0))  # real tensors, a real engine step
    assert measured > 0
    assert abs(estimate.activation_bytes - measured) <= 0.2 * measured, (estimate.activation_bytes, measured)
    real_params = sum(p.numel() for p in proxy.model.parameters())
    assert estimate.parameters == real_params
    assert estimate.parameter_bytes >= proxy.model.dtype.itemsize * real_params


def test_meter_releases_a_freed_graph():
    w = torch.randn(32, 32)
    z = torch.randn(8, 32, requires_grad=True)
    with SavedTensorMeter() as meter:
        loss = torch.tanh(z @ w).pow(2).sum()
        held = meter.alive
        loss.backward()
    # tanh saves its output, pow the same tensor as its input: one (8, 32) fp32 storage, counted once;
    # w (a frozen weight that the matmul saves) is not an activation
    assert held == 8 * 32 * 4
    assert meter.peak == held and meter.alive == 0


def test_adaptive_eta_keeps_one_lm_graph_at_the_peak():
    """Before, the step's LM graph was retained for Adaptive-eta while Adaptive-gamma's look-ahead built a
    second one: two graphs at the peak. Now the peak stays near one graph's saved bytes."""
    spec = _spec(None, "learned", True)
    engine = _cpu_engine(_default_lm_proxy(spec), spec)

    def one_graph(keep_first: bool) -> int:
        with SavedTensorMeter() as meter:
            z = engine.z.detach().requires_grad_(True)
            phi = engine.phi(z)
            loss = (forward_loss(phi, engine.fit, 10.0) + backward_loss(phi, engine.fit, 10.0)).sum()
            if not keep_first:
                torch.autograd.grad(loss, z)
            engine.auxiliary_gradient(engine.z)  # the look-ahead forward and backward
            if keep_first:
                torch.autograd.grad(loss, z)
        return meter.peak

    single, both = one_graph(False), one_graph(True)
    assert both > 1.8 * single  # what keeping the first graph costs: measured, not assumed
    peak = peak_saved_bytes(engine, lambda e: e.step(0))
    assert peak < 1.2 * single, (peak, single, both)
    no_eta = _spec(None, "learned", False)
    assert peak < 1.2 * peak_saved_bytes(_cpu_engine(_default_lm_proxy(no_eta), no_eta), lambda e: e.step(0))


def test_bf16_estimate_is_about_half():
    fp32 = estimate_trial_memory(_spec(None, "learned", False), ALPHABET, LENGTH)
    bf16 = estimate_trial_memory(_spec(None, "learned", False).with_updates({"precision": "bf16"}), ALPHABET, LENGTH)
    assert abs(2 * bf16.parameter_bytes - fp32.parameter_bytes) < 0.01 * fp32.parameter_bytes  # int buffers stay
    assert 0.4 * fp32.activation_bytes < bf16.activation_bytes < 0.7 * fp32.activation_bytes


def test_warning_fires_when_the_gpu_share_is_below_the_estimate():
    spec = RunSpec().with_updates({"engine.designs": 128, "engine.adaptive_eta": True})
    needed = estimate_trial_memory(spec, "ACGT", 8).estimate_bytes  # tfbind8: DNA, length 8
    out = io.StringIO()
    line = warn_if_gpu_share_too_small([spec], 0.25, gpu_memory=int(needed * 2), out=out)
    assert line is not None and out.getvalue() == line + "\n"
    assert line.startswith("bib-ray: warning: resources.gpu=0.25") and "bench memory" in line
    assert warn_if_gpu_share_too_small([spec], 0.25, gpu_memory=int(needed * 4.1), out=out) is None
    assert warn_if_gpu_share_too_small([spec], 0.0, gpu_memory=1, out=out) is None  # CPU trials: no check
    assert out.getvalue().count("\n") == 1
    if visible_gpu_memory() is None:  # no GPU in this process: nothing to compare with, no line
        assert warn_if_gpu_share_too_small([spec], 0.25, out=out) is None


def test_bench_memory_command_prints_key_value_lines(tmp_path):
    from helpers import run_cli

    proc = run_cli(["bench", "memory", "--designs", "16", "--adaptive-eta", "--precision", "bf16"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines()[1:])
    expected = estimate_trial_memory(RunSpec().with_updates({"engine.designs": 16, "engine.adaptive_eta": True,
                                                             "precision": "bf16"}), "ACGT", 8)
    assert int(values["estimate_bytes"]) == expected.estimate_bytes > 0
    assert int(values["parameters"]) == expected.parameters
    assert not (tmp_path / "cache").exists()  # nothing was pre-trained or loaded


def test_bench_memory_bad_lm_path_is_one_line(tmp_path):
    from helpers import assert_one_line_error, run_cli

    proc = run_cli(["bench", "memory", "--lm", "./no_such_model"], tmp_path)
    assert_one_line_error(proc, "lm", "does not exist")
