"""A frozen Hugging Face masked LM as BIB's proxy.

Soft designs enter through the model's input embeddings: probabilities times the embedding table's
rows for the alphabet's tokens, framed by the model's special-token embeddings and passed as
``inputs_embeds``. No model surgery, so any BERT-style or ESM-2 model loads by hub id or local path.
phi(x) is the mean of the last hidden states over the real (non-special) positions.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from bib_ray.core.relaxation import RelaxedDesigns, soft_kmers
from bib_ray.errors import BibInputError, first_line
from bib_ray.proxy.antiberty import ANTIBERTY, is_antiberty, load_antiberty
from bib_ray.proxy.tokens import TokenMap, build_token_map
from bib_ray.proxy.vocab_guard import check_vocabulary

HUB_PROBE_SECONDS = 3.0


def resolve_device(device: str | None) -> torch.device:
    """'auto' (or None) picks cuda when present; otherwise the given device, checked."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise BibInputError("device", f"{device!r} is not a torch device", "use cpu, cuda or cuda:N") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BibInputError("device", "cuda asked for but no GPU is visible", "use --device cpu")
    return dev


def check_model_source(source: str) -> str:
    """A local model folder (expanded) or a hub id; a path that does not exist is a clear input error.

    Anything that looks like a path (``./``, ``../``, ``~``, absolute) must exist; anything else is
    left to Hugging Face as a hub id.
    """
    local = Path(source).expanduser()
    if local.exists():
        return str(local)
    if source.startswith((".", "~")) or local.is_absolute():
        raise BibInputError("lm", f"model path {source!r} does not exist",
                            "give an existing directory saved with save_pretrained, or a hub id")
    return source


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether the Hugging Face endpoint ($HF_ENDPOINT, else huggingface.co) accepts a TCP connection."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_load_options(source: str) -> dict:
    """How to load ``source`` without a minute of retries when there is no network.

    A local folder needs nothing. A hub id in the local Hugging Face cache is loaded from it alone
    (``local_files_only``) when offline mode is on ($HF_HUB_OFFLINE) or the hub is unreachable
    (one TCP connect, a few seconds at most); a hub id that is not cached is then a one-line error,
    where Hugging Face's client would retry for about 49 s first.
    """
    if Path(source).expanduser().is_dir():
        return {}
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(source, "config.json"), str)
    except ValueError:  # not a valid repo id: let from_pretrained word the error
        return {}
    offline = _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")
    if not offline and _hub_reachable():
        return {}
    if cached:
        return {"local_files_only": True}
    why = "offline mode is on (HF_HUB_OFFLINE)" if offline else "the Hugging Face hub cannot be reached (no network)"
    raise BibInputError("lm", f"{source!r} is not in the local Hugging Face cache and {why}",
                        "download it where there is network (huggingface-cli download ID) and copy the cache "
                        "or the folder here, give a local folder, or leave --lm out for the default LM")


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class LMProxy:
    """Embeds soft sequences over a task's alphabet with a frozen LM."""

    def __init__(self, model, tokenizer, alphabet: str, name: str, device: torch.device | str = "cpu") -> None:
        self.name = name
        self.alphabet = alphabet
        self.device = torch.device(device)
        self.model = model.base_model.to(self.device).eval()  # the encoder; an MLM head is not needed
        self.model.requires_grad_(False)
        check_vocabulary(tokenizer, alphabet, name)
        self.tokens: TokenMap = build_token_map(tokenizer, alphabet, name)
        table = self.model.get_input_embeddings().weight.detach()
        ids = torch.tensor(self.tokens.token_ids, device=self.device)
        self._content_table = table[ids]  # (V**k, h)
        self._prefix = table[torch.tensor(self.tokens.prefix_ids, dtype=torch.long, device=self.device)]
        self._suffix = table[torch.tensor(self.tokens.suffix_ids, dtype=torch.long, device=self.device)]
        self.dim = int(self.model.config.hidden_size)

    @classmethod
    def load(cls, source: str, alphabet: str, device: torch.device | str = "cpu") -> "LMProxy":
        """Load by hub id or local directory; a path that does not exist is a clear input error."""
        from transformers import AutoModel, AutoTokenizer

        _quiet_transformers()
        if is_antiberty(source):  # the packaged protein LM: no folder, no hub
            model, tokenizer = load_antiberty()
            return cls(model, tokenizer, alphabet, ANTIBERTY, device)
        source = check_model_source(source)
        options = hub_load_options(source)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **options)
            try:
                model = AutoModel.from_pretrained(source, add_pooling_layer=False, **options)  # no pooler
            except TypeError:
                model = AutoModel.from_pretrained(source, **options)
        except OSError as err:
            first = first_line(err)
            raise BibInputError("lm", f"cannot load {source!r}: {first}",
                                "give a local model directory or a hub id available offline") from err
        if (Path(source) / "bib_ray_pretrain.json").exists() and hasattr(model, "set_attn_implementation"):
            # bib-ray's own small LM: at head size 16 the plain attention kernels beat the fused
            # (flash/SDPA) ones on CPU by about 15% per design step (bib-ray bench engine).
            model.set_attn_implementation("eager")
        return cls(model, tokenizer, alphabet, source, device)

    def fingerprint(self) -> str:
        """Hash of the loaded encoder's tensors (names, shapes, dtypes, values), its config (what the
        tensors are run through: activation, norms), the alphabet and the token map: the LM's provenance in every run record, and the key of the embedding and auxiliary caches.

        Why the tensors and not the path: the same folder can hold other weights tomorrow (a re-trained or
        copied LM), and the same weights can sit in two folders; only the values say which LM ran. A pooler
        that the checkpoint lacks would be freshly initialised on every load, so pooler tensors are left out.
        """
        if getattr(self, "_fingerprint", None):
            return self._fingerprint
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            if name.startswith("pooler."):
                continue
            data = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
            digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        config = {k: v for k, v in self.model.config.to_dict().items()
                   if k not in ("_name_or_path", "transformers_version", "_commit_hash", "name_or_path")}
        digest.update(json.dumps(config, sort_keys=True, default=str).encode())  # activation, norms, ...
        digest.update(self.alphabet.encode())
        digest.update(repr((self.tokens.k, self.tokens.token_ids, self.tokens.prefix_ids,
                            self.tokens.suffix_ids)).encode())
        self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def astype(self, dtype: torch.dtype) -> "LMProxy":
        """A copy computing in ``dtype`` (float64 for exact derivative checks, bf16 for ``precision: bf16``).

        Its embeddings come back in fp32 (see :meth:`embed`); its fingerprint is its own weights' (a
        bf16 copy's caches are not the fp32 LM's)."""
        import copy

        other = copy.copy(self)
        other._fingerprint = None
        other.model = copy.deepcopy(self.model).to(dtype)
        other._content_table = self._content_table.to(dtype)
        other._prefix = self._prefix.to(dtype)
        other._suffix = self._suffix.to(dtype)
        return other

    def _content_tokens(self, designs: torch.Tensor | RelaxedDesigns) -> torch.Tensor:
        """What fills the content positions: soft letters (k = 1) or soft k-mers, on our device and dtype.

        A :class:`RelaxedDesigns` is read as the relaxation means it (straight-through on the k-mer
        for k-mer vocabularies, as the authors feed DNABERT); a bare tensor is read as soft letters,
        whose k-mers are plain products (exact for hard one-hots).
        """
        k = self.tokens.k
        if isinstance(designs, RelaxedDesigns):
            return designs.to(self.device, self._content_table.dtype).kmers(k)
        probs = designs.to(self.device, self._content_table.dtype)
        return probs if k == 1 else soft_kmers(probs, k)

    def embed(self, designs: torch.Tensor | RelaxedDesigns) -> torch.Tensor:
        """Soft one-hot designs (M, L, V), bare or relaxed, to phi (M, d): mean last hidden state over real tokens."""
        content = self._content_tokens(designs) @ self._content_table
        m = content.shape[0]
        pieces = [self._prefix.expand(m, -1, -1), content, self._suffix.expand(m, -1, -1)]
        inputs = torch.cat(pieces, dim=1)
        # Every position is a real token (designs have one length), so no attention mask: the model
        # then skips building and adding one, which is measurable at this size.
        hidden = self.model(inputs_embeds=inputs).last_hidden_state
        first = len(self.tokens.prefix_ids)
        phi = hidden[:, first: first + content.shape[1]].mean(dim=1)
        # A bf16 LM's phi comes out in fp32: the kernel, losses and ridge solves of a bf16 run stay in
        # fp32 (fp32 and fp64 LMs are left as they are: fp64 serves exact derivative checks).
        return phi.float() if phi.dtype.itemsize < 4 else phi

    @torch.no_grad()
    def embed_sequences(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Hard sequences (n, L) int64 to phi (n, d), in batches, without gradients."""
        vocab = len(self.alphabet)
        out = []
        for chunk in torch.split(x, batch_size):
            onehot = torch.nn.functional.one_hot(chunk.to(self.device), vocab).float()
            out.append(self.embed(onehot).cpu())
        return torch.cat(out)
