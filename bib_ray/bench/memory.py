"""Peak memory of one trial, known before it starts: ``bib-ray bench memory`` and the pre-start check.

Why an estimate and not a trial run: a trial that does not fit its GPU share fails minutes in, after
the LM is loaded, and takes its neighbours on the same GPU with it. The estimate builds the LM from
its config on torch's ``meta`` device (shapes and dtypes, no weights, no memory, no compute), runs the
autograd calls of one design step of :class:`~bib_ray.core.engine.BIBEngine` in the engine's order on
it, and counts the bytes autograd keeps for backward with ``torch.autograd.graph.saved_tensors_hooks``
while they are alive. The estimate is

    LM parameters and buffers + design state (logits, Adam moments, gradient) + offline fit and f_a
    + the peak of the saved tensors alive during the step.

Not counted: the CUDA context (about 0.3-0.5 GiB per process), the allocator's rounding and cache, and
short-lived forward temporaries that are not saved for backward. On meta the attention runs eager
(the plain kernel), which saves the attention probabilities where a fused (flash) kernel saves its
output and log-sum-exp: within 3% of CPU's fused kernel on a small BERT (tests), an upper bound on GPUs.
No Ray or MLflow here.
"""

from __future__ import annotations

import sys
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

import torch

from bib_ray.core.auxiliary import fit_auxiliary
from bib_ray.core.engine import BIBEngine
from bib_ray.core.ridge import OfflineFit
from bib_ray.errors import BibInputError, first_line
from bib_ray.proxy.antiberty import antiberty_files, antiberty_tokenizer, is_antiberty
from bib_ray.proxy.lm_proxy import LMProxy, check_model_source
from bib_ray.spec import RunSpec

META = torch.device("meta")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class SavedTensorMeter:
    """Bytes of autograd's saved activations alive now, and at the peak, while the meter is entered.

    Only saved tensors that require grad are counted: the activations a step derives from the designs.
    Frozen weights and constants that autograd also saves are the LM's own memory (counted once, as
    parameters). A tensor counts its whole storage (a view keeps its base alive), and saved views of one
    storage count once: on a real device by the storage's address; on ``meta``, where storages have no
    address, by the view's base tensor (alive as long as a saved view of it is, so its id is stable).
    """

    def __init__(self) -> None:
        self.alive = 0
        self.peak = 0
        self._storages: dict[int, list[int]] = {}  # storage key -> [saved references, bytes]
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def __enter__(self) -> "SavedTensorMeter":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def _pack(self, tensor: torch.Tensor):
        if not tensor.requires_grad:
            return tensor
        held = _Held(tensor)
        storage = tensor.untyped_storage()
        nbytes = storage.nbytes()
        if tensor.device.type == "meta":  # no addresses: a view's base tensor names its storage
            base = tensor._base if tensor._base is not None else tensor
            key = id(base)
        else:
            key = storage.data_ptr()
        if key not in self._storages:
            self.alive += nbytes
            self._storages[key] = [0, nbytes]
        self._storages[key][0] += 1
        self.peak = max(self.peak, self.alive)
        weakref.finalize(held, self._release, key)
        return held

    def _release(self, key: int) -> None:
        entry = self._storages[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.alive -= entry[1]
            del self._storages[key]

    @staticmethod
    def _unpack(packed):
        return packed.tensor if isinstance(packed, _Held) else packed


class _Held:
    """What the pack hook hands autograd: freed (and uncounted) when autograd frees the graph."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


def replay_step(engine: BIBEngine) -> None:
    """The autograd calls of one :meth:`BIBEngine.step`, through the engine's own pieces and in its
    order, without the step's checks and records (they read values, which ``meta`` tensors lack)."""
    z = engine.z.detach().requires_grad_(True)
    phi = engine.phi(z)
    grads, _ = engine.graph_gradients(z, phi, *engine.losses(phi))
    if engine.adaptive_gamma is not None:
        engine.gamma_hypergradient(z, *grads, engine.gamma, engine.config.lr)


def peak_saved_bytes(engine: BIBEngine, step: Callable[[BIBEngine], object] = replay_step) -> int:
    """Peak bytes of saved activations alive during one step of ``engine`` (``step``: the real
    ``lambda e: e.step(0)`` on a real device, :func:`replay_step` on meta)."""
    with SavedTensorMeter() as meter:
        step(engine)
    return meter.peak


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one trial holds at its peak, by part."""

    parameters: int  # LM parameter count
    parameter_bytes: int  # LM parameters and buffers
    state_bytes: int  # design logits, Adam moments, gradient; offline fit; f_a
    activation_bytes: int  # peak of the saved activations alive during a step

    @property
    def estimate_bytes(self) -> int:
        return self.parameter_bytes + self.state_bytes + self.activation_bytes

    def lines(self) -> list[str]:
        """``key=value`` lines, as ``bib-ray bench memory`` prints them."""
        gib = 2 ** 30
        return [f"estimate_bytes={self.estimate_bytes}", f"estimate_gib={self.estimate_bytes / gib:.3f}",
                f"parameters={self.parameters}", f"parameter_bytes={self.parameter_bytes}",
                f"activation_bytes={self.activation_bytes}", f"state_bytes={self.state_bytes}"]


def _letter_tokenizer(alphabet: str):
    """One token per letter framed by [CLS] ... [SEP]: how a config-only folder (no tokenizer) is read."""
    from transformers import BertTokenizer

    from bib_ray.proxy.small_lm import SPECIAL_TOKENS

    vocab = {token: i for i, token in enumerate(list(SPECIAL_TOKENS) + list(alphabet))}
    return BertTokenizer(vocab=vocab, do_lower_case=False)


def meta_proxy(spec: RunSpec, alphabet: str, length: int) -> LMProxy:
    """The run's LM as an :class:`LMProxy` on ``meta``, in the run's precision, from its config only.

    ``spec.lm`` is a folder or hub id read with ``AutoConfig`` (and its tokenizer when it has one; a
    folder with only ``config.json`` is read as one token per letter); no ``lm``: the default small LM's
    architecture (``spec.lm_pretrain``), never pre-trained for this.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from bib_ray.proxy.lm_proxy import _quiet_transformers
    from bib_ray.proxy.small_lm import build_small_bert

    _quiet_transformers()
    if spec.lm is None:
        with META:
            model, tokenizer = build_small_bert(alphabet, spec.lm_pretrain, length)
        model.set_attn_implementation("eager")  # as LMProxy.load runs bib-ray's own LM
        name = "default small LM"
    else:
        antiberty = is_antiberty(spec.lm)
        name = str(antiberty_files()[0]) if antiberty else check_model_source(spec.lm)
        try:
            config = AutoConfig.from_pretrained(name)
        except (OSError, ValueError) as err:
            first = first_line(err)
            raise BibInputError("lm", f"cannot read the config of {name!r}: {first}",
                                "give a folder with config.json or a hub id available offline") from err
        with META:
            try:
                model = AutoModel.from_config(config, add_pooling_layer=False)
            except TypeError:
                model = AutoModel.from_config(config)
        has_tokenizer = not Path(name).is_dir() or any(
            (Path(name) / f).exists() for f in ("tokenizer_config.json", "vocab.txt", "tokenizer.json"))
        tokenizer = (antiberty_tokenizer() if antiberty else AutoTokenizer.from_pretrained(name) if has_tokenizer
                     else _letter_tokenizer(alphabet))
        if hasattr(model, "set_attn_implementation"):
            # On meta, SDPA runs its math kernel, which computes bf16 attention in fp32; eager attention
            # saves the same tensors in the LM's own dtype (fused GPU kernels save a little less).
            model.set_attn_implementation("eager")
    proxy = LMProxy(model, tokenizer, alphabet, name, META)
    return proxy.astype(DTYPES[spec.precision]) if spec.precision != "fp32" else proxy


def meta_engine(spec: RunSpec, proxy: LMProxy, alphabet: str, length: int) -> BIBEngine:
    """A :class:`BIBEngine` for ``spec`` on meta: M start designs, a meta offline fit and f_a of the
    run's shapes (f_a is fitted on 8 random rows on CPU, seconds at most, then moved)."""
    cfg = spec.engine
    d = proxy.dim
    phi = torch.randn(8, d)
    aux = fit_auxiliary(phi, torch.randn(8), cfg.aux_heads, cfg.aux_hidden, 1, cfg.seed).to(META)
    f64 = dict(dtype=torch.float64, device=META)
    fit = OfflineFit(w=torch.empty(d, **f64), gram=torch.empty(d, d, **f64), cross=torch.empty(d, **f64),
                     y_sq_mean=torch.empty((), **f64), beta_l=torch.empty((), **f64), beta_scale=cfg.beta_scale)
    start = torch.zeros(cfg.designs, length, dtype=torch.long)
    return BIBEngine(proxy.embed, fit, aux, cfg, start, len(alphabet), META)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def estimate_trial_memory(spec: RunSpec, alphabet: str, length: int) -> MemoryEstimate:
    """Peak bytes of one trial of ``spec`` on a task with this alphabet and sequence length."""
    proxy = meta_proxy(spec, alphabet, length)
    engine = meta_engine(spec, proxy, alphabet, length)
    activations = peak_saved_bytes(engine)
    model = proxy.model
    parameter_bytes = _nbytes(model.parameters()) + _nbytes(model.buffers()) + _nbytes(
        [proxy._content_table, proxy._prefix, proxy._suffix])
    fit = engine.fit
    state = (4 * _nbytes([engine.z])  # logits, Adam m and v, the design gradient
             + _nbytes([fit.w, fit.gram, fit.cross]) + _nbytes(engine.auxiliary.parameters()))
    return MemoryEstimate(parameters=sum(p.numel() for p in model.parameters()), parameter_bytes=parameter_bytes,
                          state_bytes=state, activation_bytes=activations)


def estimate_for_spec(spec: RunSpec) -> MemoryEstimate:
    """The estimate for a run spec's own task (built for its alphabet and length; no LM is loaded)."""
    from bib_ray.workbench import build_task

    task = build_task(spec.task)
    return estimate_trial_memory(spec, task.alphabet, task.length)


def _memory_key(spec: RunSpec) -> tuple:
    """What a trial's memory depends on (seeds and learning rates do not change it)."""
    cfg = spec.engine
    return (spec.task.key(), spec.lm, None if spec.lm else spec.lm_pretrain.model_dump_json(), spec.precision,
            cfg.designs, cfg.variant, cfg.adaptive_eta, cfg.relaxation, cfg.aux_heads, cfg.aux_hidden)


def visible_gpu_memory() -> int | None:
    """Total memory of GPU 0 as the driver reports it, or None when this process sees no GPU."""
    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(0).total_memory)


def warn_if_gpu_share_too_small(specs: list[RunSpec], gpu_share: float, gpu_memory: int | None = None,
                                out: TextIO | None = None) -> str | None:
    """Before a search or ablation starts: one warning line when ``gpu_share`` x the GPU's memory is
    below the largest estimated trial peak of ``specs``; returns the line (None: no warning).

    ``gpu_memory`` (bytes) defaults to what this process sees (:func:`visible_gpu_memory`). When it
    sees no GPU (a CPU driver of a GPU cluster, or no GPU at all) the check is skipped: the trials' GPUs
    are not measurable from here. A share of 0 (CPU trials) is never checked, and neither is an LM whose
    config this process cannot read or run on meta (the check advises; it never stops a run).
    """
    if gpu_share <= 0 or not specs:
        return None
    memory = visible_gpu_memory() if gpu_memory is None else gpu_memory
    if memory is None:
        return None
    try:
        estimates = [(estimate_for_spec(s), s) for s in {_memory_key(s): s for s in specs}.values()]
    except (BibInputError, OSError, RuntimeError, NotImplementedError):
        return None  # an LM whose config cannot be read or run on meta here: the trials will say more

    estimate, spec = max(estimates, key=lambda pair: pair[0].estimate_bytes)
    share = gpu_share * memory
    if share >= estimate.estimate_bytes:
        return None
    gib = 2 ** 30
    line = (f"bib-ray: warning: resources.gpu={gpu_share:g} gives each trial {share / gib:.1f} GiB of a "
            f"{memory / gib:.1f} GiB GPU, but a trial ({spec.task.name}, M={spec.engine.designs}, "
            f"{spec.engine.variant}{'+eta' if spec.engine.adaptive_eta else ''}, {spec.precision}) is estimated "
            f"at {estimate.estimate_bytes / gib:.1f} GiB (bib-ray bench memory): raise resources.gpu, lower "
            "engine.designs or set precision: bf16")
    print(line, file=out or sys.stderr, flush=True)
    return line


def main(task: str = "tfbind8", lm: str | None = None, designs: int = 128, variant: str = "learned",
         adaptive_eta: bool = False, precision: str = "fp32") -> int:
    """``bib-ray bench memory``: print the estimate for one trial as ``key=value`` lines."""
    spec = RunSpec().with_updates({"task.name": task, "lm": lm, "engine.designs": designs,
                                   "engine.variant": variant, "engine.adaptive_eta": adaptive_eta,
                                   "precision": precision})
    from bib_ray.workbench import build_task

    built = build_task(spec.task)
    estimate = estimate_trial_memory(spec, built.alphabet, built.length)
    print(f"task={built.name} length={built.length} lm={lm or 'default small LM'} M={designs} variant={variant} "
          f"adaptive_eta={str(adaptive_eta).lower()} precision={precision}")
    for line in estimate.lines():
        print(line)
    return 0
