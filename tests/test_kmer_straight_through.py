"""Straight-through on the soft k-mer, as the authors feed DNABERT; the letter path stays bit-identical.

The reference is written out here from the authors' recipe (dna/utils.py ``m_func`` in their
submission): softmax the logits, build each overlapping 3-mer's probability as the product of its
three letters' probabilities, take the hard 3-mer one-hot of its argmax, and feed
``hard - soft.detach() + soft`` to the model's embedding table. It is built with plain loops and
the model's own tables, not with bib-ray's k-mer code.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

from bib_ray.core.auxiliary import fit_auxiliary
from bib_ray.core.config import EngineConfig
from bib_ray.core.engine import BIBEngine, initial_logits
from bib_ray.core.relaxation import softmax, straight_through
from bib_ray.core.ridge import OfflineFit
from bib_ray.proxy.lm_proxy import LMProxy

KMERS = ["".join(p) for p in itertools.product("ACGT", repeat=3)]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def kmer_bert():
    """A tiny DNABERT-like masked LM over overlapping 3-mers, built from a config (no download)."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    torch.manual_seed(0)
    vocab = {t: i for i, t in enumerate(SPECIAL + KMERS)}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=False)
    model = BertForMaskedLM(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=32))
    reference = copy.deepcopy(model.base_model).double().eval()
    proxy = LMProxy(model, tokenizer, "ACGT", "tiny-kmer")
    assert proxy.tokens.k == 3
    return proxy, reference, vocab


def _paper_start(m: int = 3, length: int = 8, seed: int = 0) -> torch.Tensor:
    """Start logits as the engine draws them (N(0, 0.01^2) noise, argmax on a start sequence), float64."""
    start = torch.randint(0, 4, (m, length), generator=torch.Generator().manual_seed(seed))
    return initial_logits(start, 4, 0.01, seed).double()


def _letter_product(letters: torch.Tensor) -> torch.Tensor:
    """(M, L, 4) to (M, L - 2, 64) by explicit loops: index i * 16 + j * 4 + k, letters A, C, G, T."""
    m, length, _ = letters.shape
    rows = []
    for pos in range(length - 2):
        rows.append(torch.stack([letters[:, pos, i] * letters[:, pos + 1, j] * letters[:, pos + 2, k]
                                 for i in range(4) for j in range(4) for k in range(4)], dim=-1))
    return torch.stack(rows, dim=1)


def _reference_phi(reference, vocab: dict[str, int], tokens: torch.Tensor) -> torch.Tensor:
    """phi from soft 3-mer tokens (M, L - 2, 64): [CLS] tokens [SEP] embeddings, mean hidden over tokens."""
    table = reference.get_input_embeddings().weight
    content = tokens @ table[torch.tensor([vocab[t] for t in KMERS])]
    m = tokens.shape[0]
    cls = table[vocab["[CLS]"]].expand(m, 1, -1)
    sep = table[vocab["[SEP]"]].expand(m, 1, -1)
    hidden = reference(inputs_embeds=torch.cat([cls, content, sep], dim=1)).last_hidden_state
    return hidden[:, 1:-1].mean(1)


def _gradient(phi_of_z, z: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = z.detach().clone().requires_grad_(True)
    phi = phi_of_z(z)
    (grad,) = torch.autograd.grad((phi * weights).sum(), z)
    return phi.detach(), grad


def test_kmer_straight_through_gradient_is_the_soft_kmer_one(kmer_bert) -> None:
    proxy, reference, vocab = kmer_bert
    proxy64 = proxy.astype(torch.float64)
    z = _paper_start()
    weights = torch.randn(16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def authors(z):  # soft 3-mer = product of probabilities; straight-through on the 3-mer
        soft = _letter_product(torch.softmax(z, -1))
        hard = F.one_hot(soft.argmax(-1), 64).to(soft.dtype)
        return _reference_phi(reference, vocab, hard - soft.detach() + soft)

    def per_letter(z):  # the previous bib-ray path: straight-through on each letter, then the product
        probs = torch.softmax(z, -1)
        hard = F.one_hot(probs.argmax(-1), 4).to(probs.dtype)
        return _reference_phi(reference, vocab, _letter_product(hard + probs - probs.detach()))

    phi, grad = _gradient(lambda z: proxy64.embed(straight_through(z)), z, weights)
    phi_ref, grad_ref = _gradient(authors, z, weights)
    phi_old, grad_old = _gradient(per_letter, z, weights)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(phi, phi_ref, rtol=1e-9, atol=1e-12)
    # forward passes agree with the old path; the gradients do not
    torch.testing.assert_close(phi, phi_old, rtol=1e-9, atol=1e-12)
    cosine = F.cosine_similarity(grad.flatten(), grad_old.flatten(), dim=0).item()
    print(f"cosine(k-mer ST, per-letter ST) = {cosine:.3f}")
    assert cosine < 0.9, cosine
    assert grad.abs().sum() > 0


def test_kmer_straight_through_forward_is_the_hard_kmer_embedding(kmer_bert) -> None:
    proxy, reference, vocab = kmer_bert
    z = torch.randn(4, 9, 4, generator=torch.Generator().manual_seed(2))
    phi = proxy.embed(straight_through(z))
    torch.testing.assert_close(phi, proxy.embed_sequences(z.argmax(-1)), rtol=1e-5, atol=1e-6)
    hard = F.one_hot(z.argmax(-1), 4).double()
    torch.testing.assert_close(phi.double(), _reference_phi(reference, vocab, _letter_product(hard)),
                               rtol=1e-5, atol=1e-6)


def test_kmer_softmax_relaxation_is_the_soft_kmer(kmer_bert) -> None:
    proxy, reference, vocab = kmer_bert
    proxy64 = proxy.astype(torch.float64)
    z = torch.randn(2, 7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    weights = torch.randn(16, dtype=torch.float64)
    phi, grad = _gradient(lambda z: proxy64.embed(softmax(z)), z, weights)
    phi_ref, grad_ref = _gradient(lambda z: _reference_phi(reference, vocab, _letter_product(torch.softmax(z, -1))),
                                  z, weights)
    torch.testing.assert_close(phi, phi_ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-13)


def _previous_letter_phi(proxy: LMProxy, letters: torch.Tensor) -> torch.Tensor:
    """The letter path exactly as it was written before k-mers were relaxed as a whole."""
    letters = letters.to(proxy.device, proxy._content_table.dtype)
    content = letters @ proxy._content_table
    m = content.shape[0]
    inputs = torch.cat([proxy._prefix.expand(m, -1, -1), content, proxy._suffix.expand(m, -1, -1)], dim=1)
    hidden = proxy.model(inputs_embeds=inputs).last_hidden_state
    first = len(proxy.tokens.prefix_ids)
    return hidden[:, first: first + content.shape[1]].mean(dim=1)


@pytest.mark.parametrize("relaxation", ["straight_through", "softmax"])
def test_letter_path_is_bit_identical(tiny_proxy, relaxation: str) -> None:
    assert tiny_proxy.tokens.k == 1
    z = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(4))
    weights = torch.randn(tiny_proxy.dim, generator=torch.Generator().manual_seed(5))

    def previous(z):
        probs = torch.softmax(z, dim=-1)
        if relaxation == "softmax":
            return _previous_letter_phi(tiny_proxy, probs)
        hard = F.one_hot(probs.argmax(dim=-1), probs.shape[-1]).to(probs.dtype)
        return _previous_letter_phi(tiny_proxy, hard + probs - probs.detach())

    relax = straight_through if relaxation == "straight_through" else softmax
    phi, grad = _gradient(lambda z: tiny_proxy.embed(relax(z)), z, weights)
    phi_old, grad_old = _gradient(previous, z, weights)
    assert torch.equal(phi, phi_old) and torch.equal(grad, grad_old)


def test_engine_designs_through_a_kmer_lm(kmer_bert) -> None:
    proxy, _, _ = kmer_bert
    x = torch.randint(0, 4, (64, 8), generator=torch.Generator().manual_seed(6))
    phi = proxy.embed_sequences(x)
    y = (x == 2).sum(1).double()
    y = (y - y.mean()) / y.std()
    fit = OfflineFit.fit(phi, y)
    aux = fit_auxiliary(phi, y, heads=2, hidden=8, epochs=10, seed=0)
    start = x[torch.argsort(y)[:4]]
    engine = BIBEngine(proxy.embed, fit, aux, EngineConfig(variant="learned", lr=1.0, aux_hidden=8), start, 4)
    records = list(engine.run(6))
    assert all(torch.isfinite(r.forward_loss).all() and torch.isfinite(r.backward_loss).all() for r in records)
    assert (records[-1].designs != start).any()  # the k-mer gradient moves the designs
