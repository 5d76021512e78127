"""AntiBERTy, the one pre-trained protein LM bib-ray can run with no network (``--lm antiberty``).

Why this one: the ``antiberty`` wheel (pinned to 0.1.3, the release whose wheel ships the weights) holds
a BERT pre-trained on about 558 million antibody sequences (Ruffolo et al., 2021: 8 layers, hidden size
512, 26 M parameters), so ``pip install 'bib-ray[antiberty]'`` gives a real protein proxy where no hub
can be reached. Its limits: it saw antibody variable regions only (other proteins are out of its
domain), it reads the 20 standard amino acids and nothing else, and at 26 M parameters a design step
costs far more than the default small LM's on a CPU.

The wheel's layout is not a ``save_pretrained`` folder (the vocabulary sits one folder above the
weights), so the encoder and the tokenizer are built here from the package's files, through
transformers' public classes; the species, chain and graft heads of the checkpoint are not loaded
(BIB needs the encoder only).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path

from bib_ray.errors import BibInputError

ANTIBERTY = "antiberty"
PACKAGE_PIN = "antiberty==0.1.3"
WEIGHTS_FOLDER = "AntiBERTy_md_smooth"
INSTALL = "pip install 'bib-ray[antiberty]' (the antiberty 0.1.3 wheel, which ships the weights)"


def is_antiberty(source: str | None) -> bool:
    """Whether an ``lm`` setting names the packaged AntiBERTy."""
    return bool(source) and source.strip().lower() == ANTIBERTY


def antiberty_files() -> tuple[Path, Path]:
    """(the weights folder, the vocabulary file) of the installed package; one-line errors when absent."""
    if importlib.util.find_spec("antiberty") is None:
        raise BibInputError("lm", "'antiberty' needs the antiberty package, which is not installed", INSTALL)
    root = Path(str(importlib.resources.files("antiberty"))) / "trained_models"
    weights, vocab = root / WEIGHTS_FOLDER, root / "vocab.txt"
    for needed in (weights / "config.json", weights / "pytorch_model.bin", vocab):
        if not needed.is_file():
            raise BibInputError("lm", f"the installed antiberty package lacks {needed}",
                                f"reinstall it: pip install --force-reinstall {PACKAGE_PIN}")
    return weights, vocab


def antiberty_tokenizer():
    """A tokenizer over AntiBERTy's 25-token vocabulary (cheap: what the checks before a run need)."""
    from transformers import BertTokenizer

    _, vocab_file = antiberty_files()
    tokens = [line.strip() for line in vocab_file.read_text().splitlines() if line.strip()]
    return BertTokenizer(vocab={token: i for i, token in enumerate(tokens)}, do_lower_case=False)


def load_antiberty():
    """AntiBERTy's encoder (a transformers ``BertModel``, no pooler) and its tokenizer."""
    from transformers import BertModel

    weights, _ = antiberty_files()
    return BertModel.from_pretrained(str(weights), add_pooling_layer=False), antiberty_tokenizer()
