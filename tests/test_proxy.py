"""LM proxies: soft one-hot input equals the model's own token path; letters, k-mers, ESM-2, errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from bib_ray.errors import BibInputError
from bib_ray.proxy.lm_proxy import LMProxy
from bib_ray.proxy.small_lm import SmallLMConfig, build_small_bert
from bib_ray.proxy.tokens import build_token_map

from conftest import TINY

PROTEIN = "ACDEFGHIKLMNPQRSTVWY"


def _reference_phi(proxy: LMProxy, token_ids: torch.Tensor, content: slice) -> torch.Tensor:
    """phi computed the ordinary way: token ids through the model, mean over the content positions."""
    with torch.no_grad():
        hidden = proxy.model(input_ids=token_ids, attention_mask=torch.ones_like(token_ids)).last_hidden_state
    return hidden[:, content].mean(1)


def test_soft_input_equals_token_ids_for_letter_vocabulary(tiny_proxy):
    x = torch.randint(0, 4, (5, 6))
    phi = tiny_proxy.embed_sequences(x)
    ids = torch.tensor(tiny_proxy.tokens.token_ids)[x]
    framed = torch.cat([torch.full((5, 1), tiny_proxy.tokens.prefix_ids[0]), ids,
                        torch.full((5, 1), tiny_proxy.tokens.suffix_ids[0])], 1)
    torch.testing.assert_close(phi, _reference_phi(tiny_proxy, framed, slice(1, 7)), rtol=1e-5, atol=1e-6)


def test_soft_designs_are_differentiable(tiny_proxy):
    logits = torch.randn(3, 6, 4, requires_grad=True)
    tiny_proxy.embed(torch.softmax(logits, -1)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in tiny_proxy.model.parameters())  # the LM stays frozen


def test_kmer_vocabulary_like_dnabert(tmp_path):
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    kmers = ["".join(p) for p in itertools.product("ACGT", repeat=3)]
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + kmers)}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=False)
    model = BertForMaskedLM(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=32))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    proxy = LMProxy.load(str(tmp_path), "ACGT")
    assert proxy.tokens.k == 3 and len(proxy.tokens.token_ids) == 64
    x = torch.randint(0, 4, (4, 8))
    phi = proxy.embed_sequences(x)
    codes = x[:, :-2] * 16 + x[:, 1:-1] * 4 + x[:, 2:]  # overlapping 3-mers, lexicographic index
    ids = torch.tensor(proxy.tokens.token_ids)[codes]
    framed = torch.cat([torch.full((4, 1), vocab["[CLS]"]), ids, torch.full((4, 1), vocab["[SEP]"])], 1)
    torch.testing.assert_close(phi, _reference_phi(proxy, framed, slice(1, 7)), rtol=1e-5, atol=1e-6)


def test_esm2_style_model_loads_and_matches(tmp_path):
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    tokens = ["<cls>", "<pad>", "<eos>", "<unk>"] + list("LAGVSERTIDPKQNFYMHWC") + ["X", "<mask>"]
    (tmp_path / "vocab.txt").write_text("\n".join(tokens))
    tokenizer = EsmTokenizer(vocab_file=str(tmp_path / "vocab.txt"))
    config = EsmConfig(vocab_size=len(tokens), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, pad_token_id=1, mask_token_id=len(tokens) - 1,
                       position_embedding_type="rotary", max_position_embeddings=64)
    EsmForMaskedLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    proxy = LMProxy.load(str(tmp_path), PROTEIN)
    assert proxy.tokens.prefix_ids == (0,) and proxy.tokens.suffix_ids == (2,)
    x = torch.randint(0, 20, (3, 7))
    ids = torch.tensor(proxy.tokens.token_ids)[x]
    framed = torch.cat([torch.zeros(3, 1, dtype=torch.long), ids, torch.full((3, 1), 2)], 1)
    torch.testing.assert_close(proxy.embed_sequences(x), _reference_phi(proxy, framed, slice(1, 8)),
                               rtol=1e-5, atol=1e-6)


def test_letter_without_token_is_a_clear_error():
    model, tokenizer = build_small_bert("ACGT", TINY, 8)
    with pytest.raises(BibInputError, match="letter 'D'"):
        build_token_map(tokenizer, "ACDT", "tiny")


def test_missing_local_path_is_a_clear_error():
    with pytest.raises(BibInputError, match="does not exist"):
        LMProxy.load("./no/such/model", "ACGT")


def test_fingerprint_is_stable_across_loads(tiny_lm_dir, tmp_path):
    """Same folder, same fingerprint; another LM (other weights, or one weight changed), another one."""
    import transformers

    first = LMProxy.load(tiny_lm_dir, "ACGT").fingerprint()
    assert first == LMProxy.load(tiny_lm_dir, "ACGT").fingerprint()
    other_seed, tokenizer = build_small_bert("ACGT", TINY.model_copy(update={"seed": 1}), 16)
    other_seed.save_pretrained(tmp_path / "seed1")
    tokenizer.save_pretrained(tmp_path / "seed1")
    touched = transformers.AutoModelForMaskedLM.from_pretrained(tiny_lm_dir)
    with torch.no_grad():
        next(touched.parameters()).view(-1)[0] += 1e-3
    touched.save_pretrained(tmp_path / "touched")
    tokenizer.save_pretrained(tmp_path / "touched")
    prints = {first, LMProxy.load(str(tmp_path / "seed1"), "ACGT").fingerprint(),
              LMProxy.load(str(tmp_path / "touched"), "ACGT").fingerprint()}
    assert len(prints) == 3, prints


def test_default_budget_is_a_token_budget():
    config = SmallLMConfig()
    assert config.resolved(8).steps == 8000
    assert config.resolved(28).steps == 2700
    assert SmallLMConfig(steps=123).resolved(28).steps == 123
