"""An LM used on the wrong alphabet, an LM folder without its vocabulary, a hub id without network:
each refused in one line before any embedding. Tiny BERTs from a config and a hand-written vocab.txt,
never a download."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bib_ray.cli import main
from bib_ray.errors import BibInputError
from bib_ray.proxy.lm_proxy import LMProxy, hub_load_options
from bib_ray.proxy.vocab_guard import alphabet_kind, vocabulary_kind

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
AMINO = "ACDEFGHIKLMNPQRSTVWY"


def _bert_folder(path, tokens: list[str]):
    """A tiny BertForMaskedLM saved with a hand-written vocab.txt and tokenizer_config.json."""
    from transformers import BertConfig, BertForMaskedLM

    vocab = SPECIAL + tokens
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    BertForMaskedLM(config).save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                            "do_lower_case": False}))
    return str(path)


@pytest.fixture(scope="module")
def protein_lm(tmp_path_factory):
    return _bert_folder(tmp_path_factory.mktemp("protein_lm"), list(AMINO))


@pytest.fixture(scope="module")
def dna_lm(tmp_path_factory):
    return _bert_folder(tmp_path_factory.mktemp("dna_lm"), list("ACGT"))


def test_kinds_from_vocabulary_and_alphabet():
    assert vocabulary_kind({t: i for i, t in enumerate(SPECIAL + list(AMINO))}) == "protein"
    assert vocabulary_kind({t: i for i, t in enumerate(SPECIAL + list(AMINO.lower()))}) == "protein"
    assert vocabulary_kind({t: i for i, t in enumerate(SPECIAL + list("ACGT"))}) == "nucleotide"
    kmers = ["".join(p) for p in np.array(np.meshgrid(*[list("ACGT")] * 3)).reshape(3, -1).T]
    assert vocabulary_kind({t: i for i, t in enumerate(SPECIAL + kmers)}) == "nucleotide"
    assert alphabet_kind("ACGT") == alphabet_kind("ACGU") == alphabet_kind("ACGTN") == "nucleotide"
    assert alphabet_kind(AMINO) == "protein"
    assert alphabet_kind("ACDE") == "other"  # an Ehrlich task over 4 letters: neither


def test_protein_lm_on_dna_is_refused_naming_both(protein_lm):
    with pytest.raises(BibInputError) as err:
        LMProxy.load(protein_lm, "ACGT")
    text = str(err.value)
    assert text.startswith("lm:") and "amino acids" in text and "'ACGT'" in text and "DNA/RNA letters" in text
    assert "\n" not in text


def test_dna_lm_on_protein_is_refused_naming_both(dna_lm):
    with pytest.raises(BibInputError) as err:
        LMProxy.load(dna_lm, AMINO)
    text = str(err.value)
    assert "over DNA/RNA letters" in text and f"{AMINO!r} is amino acids" in text


def test_matching_alphabets_load(protein_lm, dna_lm):
    assert LMProxy.load(protein_lm, AMINO).dim == 16
    assert LMProxy.load(dna_lm, "ACGT").tokens.k == 1
    assert LMProxy.load(protein_lm, "ACDE").dim == 16  # neither DNA nor protein: the lookup decides


def test_folder_without_vocabulary_names_the_missing_file(tmp_path):
    folder = tmp_path / "lost_vocab"
    _bert_folder(folder, list("ACGT"))
    (folder / "vocab.txt").unlink()
    with pytest.raises(BibInputError) as err:
        LMProxy.load(str(folder), "ACGT")
    text = str(err.value)
    assert "only its special tokens" in text and "no vocab.txt or tokenizer.json" in text and str(folder) in text


def test_cli_refuses_protein_lm_on_tfbind8(protein_lm, capsys, tmp_path):
    code = main(["run", "--task", "tfbind8", "--lm", protein_lm, "--steps", "1", "--designs", "4", "--no-progress",
                 "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("bib-ray: error: lm:") and "amino acids" in err[0]


def test_hub_id_offline_fails_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BibInputError, match="not in the local Hugging Face cache and offline mode is on"):
        hub_load_options("someone/no-such-model")


def test_hub_id_without_network_fails_at_once(monkeypatch):
    import socket

    with socket.socket() as closed:  # a port nobody listens on: connection refused, no retries
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(BibInputError, match="cannot be reached"):
        hub_load_options("someone/no-such-model")
    assert hub_load_options(".") == {}  # a local folder needs no hub
