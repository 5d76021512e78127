"""The default proxy: a small BERT masked LM that bib_ray pre-trains on a task's own sequences.

No pre-trained DNA or protein LM can be downloaded everywhere bib_ray runs, so the default LM is
trained here, on the task's unlabelled offline sequences, and cached on disk (keyed by the task's
data, the architecture and the budget). Concurrent workers that ask for the same LM wait on a file
lock and then load the one copy.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
DEFAULT_STEPS = 8000
RECIPE_VERSION = 2
"""Version of the pre-training code (2: cosine schedule with warm-up, single-threaded). Bump it whenever a change to this module (masking, optimiser,
schedule, initialisation, data order) changes the weights a config trains: it is part of every cached
LM's key, so an LM trained by older code is never reused silently."""


class SmallLMConfig(BaseModel):
    """Architecture and pre-training budget of the default LM."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden: int = Field(64, ge=8, le=1024)
    layers: int = Field(2, ge=1, le=12)
    heads: int = Field(4, ge=1, le=16)
    intermediate: int = Field(128, ge=8, le=4096)
    steps: int | None = Field(None, ge=0, le=1_000_000,
                              description="MLM optimiser steps (the pre-training budget); None: a fixed token "
                                          "budget, 8000 steps for sequences of up to 8 letters, fewer for longer")
    batch_size: int = Field(128, ge=1, le=65536)
    lr: float = Field(2e-3, gt=0)
    mask_prob: float = Field(0.15, gt=0, lt=1)
    schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="learning rate after warm-up: constant, or cosine decay to 0 at the last step")
    warmup: float = Field(0.05, ge=0, lt=1, description="share of the steps with a linear warm-up from 0")
    seed: int = Field(0, ge=0, description="pre-training seed (initialisation, batches, masks): an LM replicate")

    def key(self) -> str:
        """Short hash of the config and the recipe version: part of the cache folder name."""
        text = f"recipe{RECIPE_VERSION}:" + self.model_dump_json()
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def resolved(self, length: int) -> "SmallLMConfig":
        """The config with ``steps`` fixed for sequences of ``length`` letters.

        Why a token budget: 8000 steps on TFBind8's 8-mers take about two minutes on 2 cores and are
        what TFBind8 needs (measured: with 1500 steps the designs' median falls from 0.81 to 0.57).
        The same step count on 28-residue AAV windows would take four times longer, so by default
        longer sequences get the same number of token predictions, not the same number of steps.
        """
        if self.steps is not None:
            return self
        tokens_per_row = length + 2
        steps = DEFAULT_STEPS if tokens_per_row <= 10 else max(500, round(DEFAULT_STEPS * 10 / tokens_per_row, -2))
        return self.model_copy(update={"steps": int(steps)})


def cache_root() -> Path:
    """Where LMs and embeddings are cached: $BIB_RAY_CACHE, else ~/.cache/bib_ray."""
    return Path(os.environ.get("BIB_RAY_CACHE", Path.home() / ".cache" / "bib_ray")).expanduser()


def build_small_bert(alphabet: str, config: SmallLMConfig, max_length: int):
    """A randomly initialised BertForMaskedLM with a one-letter-per-token vocabulary, and its tokenizer."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    vocab = {token: i for i, token in enumerate(list(SPECIAL_TOKENS) + list(alphabet))}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=False)
    bert_config = BertConfig(vocab_size=len(vocab), hidden_size=config.hidden, num_hidden_layers=config.layers,
                             num_attention_heads=config.heads, intermediate_size=config.intermediate,
                             max_position_embeddings=max(max_length + 2, 16), pad_token_id=0,
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(config.seed)
    return BertForMaskedLM(bert_config), tokenizer


def _mlm_batch(x: torch.Tensor, config: SmallLMConfig, vocab_size: int, gen: torch.Generator):
    """BERT's masking on letter ids offset past the special tokens, with [CLS]/[SEP] framing."""
    n_special = len(SPECIAL_TOKENS)
    ids = x + n_special
    labels = ids.clone()
    pick = torch.rand(ids.shape, generator=gen) < config.mask_prob
    labels[~pick] = -100
    roll = torch.rand(ids.shape, generator=gen)
    inputs = ids.clone()
    inputs[pick & (roll < 0.8)] = SPECIAL_TOKENS.index("[MASK]")
    random_tokens = torch.randint(n_special, vocab_size, ids.shape, generator=gen)
    swap = pick & (roll >= 0.8) & (roll < 0.9)
    inputs[swap] = random_tokens[swap]
    m = ids.shape[0]
    cls = torch.full((m, 1), SPECIAL_TOKENS.index("[CLS]"))
    sep = torch.full((m, 1), SPECIAL_TOKENS.index("[SEP]"))
    ignore = torch.full((m, 1), -100)
    return torch.cat([cls, inputs, sep], 1), torch.cat([ignore, labels, ignore], 1)


def lr_factor(config: SmallLMConfig, step: int) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based).

    Why a decay: with a constant rate the weights at the last step are one noisy point of a still
    wandering optimiser, and the kernel BIB builds from them changed with the pre-training seed far more
    than with the BIB variant. Decaying to 0 ends every seed in a settled minimum.
    """
    total = max(1, config.steps or 1)
    warm = int(config.warmup * total)
    if step < warm:
        return (step + 1) / warm
    if config.schedule == "constant":
        return 1.0
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def pretrain_small_lm(sequences: torch.Tensor, alphabet: str, config: SmallLMConfig, out_dir: Path,
                      log_every: int = 0, label: str = "") -> dict:
    """Train the small BERT by masked-language modelling on ``sequences`` (n, L) and save it.

    Single-threaded, whatever the machine: with several threads the float sums (and so the weights) depend
    on the core count, and a 2-layer, 64-unit model gains little from more threads anyway, while two
    threads competing with any other job slow each step by an order of magnitude (measured here: 1.9 s
    against 0.1 s per step on a busy 2-core machine).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _pretrain(sequences, alphabet, config, out_dir, log_every, label)
    finally:
        torch.set_num_threads(threads)


def _pretrain(sequences: torch.Tensor, alphabet: str, config: SmallLMConfig, out_dir: Path, log_every: int,
              label: str) -> dict:
    from bib_ray.proxy.lm_proxy import _quiet_transformers

    _quiet_transformers()
    model, tokenizer = build_small_bert(alphabet, config, sequences.shape[1])
    gen = torch.Generator().manual_seed(config.seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: lr_factor(config, step))
    vocab_size = len(SPECIAL_TOKENS) + len(alphabet)
    started = time.perf_counter()
    losses: list[float] = []
    model.train()
    for step in range(config.steps):
        rows = torch.randint(0, sequences.shape[0], (config.batch_size,), generator=gen)
        inputs, labels = _mlm_batch(sequences[rows], config, vocab_size, gen)
        loss = model(input_ids=inputs, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        scheduler.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            from bib_ray.progress import duration

            spent = time.perf_counter() - started
            left = spent / (step + 1) * (config.steps - step - 1)
            print(f"[bib-ray] pre-training {label}{' ' if label else ''}step {step + 1}/{config.steps} "
                  f"mlm_loss={sum(losses[-log_every:]) / log_every:.4f} (elapsed {duration(spent)}, "
                  f"about {duration(left)} left)", flush=True)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    tail = losses[-50:] or [float("nan")]
    meta = {"config": config.model_dump(), "final_mlm_loss": sum(tail) / len(tail),
            "seconds": time.perf_counter() - started, "sequences": int(sequences.shape[0])}
    (out_dir / "bib_ray_pretrain.json").write_text(json.dumps(meta, indent=2))
    return meta


def default_lm_path(task_name: str, task_fingerprint: str, config: SmallLMConfig) -> Path:
    """Cache folder of the default LM for a task and (resolved) config."""
    return cache_root() / "lm" / f"{task_name}-{task_fingerprint}-{config.key()}"


def ensure_default_lm(task, config: SmallLMConfig, log_every: int = 0) -> Path:
    """The cached default LM for ``task``, pre-training it first if needed (file-locked); a cached
    copy that fails its manifest is reported, removed and pre-trained again."""
    from bib_ray.cache_store import ensure_entry

    config = config.resolved(task.length)
    path = default_lm_path(task.name, task.fingerprint(), config)

    def pretrain(out_dir: Path) -> None:
        if log_every:
            print(f"[bib-ray] pre-training the default LM for {task.name}, LM seed {config.seed} ({config.steps} MLM steps, once; "
                  f"cached in {path.parent})", flush=True)
        pretrain_small_lm(torch.tensor(np.asarray(task.offline_x), dtype=torch.long), task.alphabet, config,
                          out_dir, log_every=log_every, label=f"{task.name} LM seed {config.seed}")

    # What `bib-ray cache list` shows of the LM: the task's options (TF table, window), the LM seed and
    # steps (in the config) and the recipe version, since the folder name is a hash of them.
    extra = {"config": config.model_dump(), "recipe_version": RECIPE_VERSION,
             "task_options": {k: str(v) for k, v in getattr(task, "made_with", {}).items()}}
    return ensure_entry(path, "lm", pretrain, lambda p: p, task=task.name, lm=path.name, extra=extra)
