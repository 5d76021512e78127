"""``--lm antiberty``: the packaged AntiBERTy (extra ``bib-ray[antiberty]``, in the test extra) loads offline.

The loaded encoder is checked against the wheel's checkpoint read independently with ``torch.load``, and
the token map against the wheel's vocab.txt; the alphabet guard refuses it on DNA before any work; an
end-to-end ``bib-ray run`` designs on a small protein CSV.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch

from bib_ray.errors import BibInputError
from bib_ray.proxy import antiberty as antiberty_module
from bib_ray.proxy.antiberty import antiberty_files
from bib_ray.proxy.lm_proxy import LMProxy
from bib_ray.tasks.aav import AMINO_ACIDS

from helpers import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def wheel_files():
    import antiberty  # the test extra installs it: a missing package fails here, it is not skipped

    root = Path(antiberty.__file__).parent / "trained_models"
    return root / "AntiBERTy_md_smooth" / "pytorch_model.bin", root / "vocab.txt"


def test_the_loaded_encoder_holds_the_wheels_weights(wheel_files):
    checkpoint_file, vocab_file = wheel_files
    proxy = LMProxy.load("antiberty", AMINO_ACIDS)
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    encoder = proxy.model.state_dict()
    compared = 0
    for name, tensor in checkpoint.items():
        if name.startswith("bert.") and name.removeprefix("bert.") in encoder:
            assert torch.equal(encoder[name.removeprefix("bert.")], tensor), name
            compared += 1
    assert compared >= 100  # embeddings, 8 layers of attention and feed-forward: not a fresh init
    assert proxy.dim == 512 and proxy.model.config.num_hidden_layers == 8
    lines = [line.strip() for line in vocab_file.read_text().splitlines() if line.strip()]
    assert proxy.tokens.k == 1
    assert list(proxy.tokens.token_ids) == [lines.index(letter) for letter in AMINO_ACIDS]
    assert [lines[i] for i in proxy.tokens.prefix_ids] == ["[CLS]"]
    assert [lines[i] for i in proxy.tokens.suffix_ids] == ["[SEP]"]
    # phi of a hard sequence is the encoder's own reading of [CLS] seq [SEP] through its token ids
    sequence = torch.tensor([[AMINO_ACIDS.index(c) for c in "EVQLVESGGG"]])
    ids = torch.tensor([[lines.index("[CLS]")] + [lines.index(c) for c in "EVQLVESGGG"] + [lines.index("[SEP]")]])
    with torch.no_grad():
        direct = proxy.model(input_ids=ids).last_hidden_state[:, 1:-1].mean(dim=1)
    assert torch.allclose(proxy.embed_sequences(sequence), direct, atol=1e-5)


def test_antiberty_on_a_dna_task_is_refused_before_any_work(tmp_path):
    proc = run_cli(["run", "--task", "tfbind8", "--lm", "antiberty", "--steps", "2"], cwd=tmp_path,
                   env={"BIB_RAY_CACHE": str(tmp_path / "cache")})
    assert_one_line_error(proc, "lm", "antiberty", "amino acids", "ACGT")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "bib_ray_out").exists()


def test_a_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(antiberty_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "antiberty" else __import__("importlib").util.find_spec(name))
    with pytest.raises(BibInputError, match=r"bib-ray\[antiberty\]"):
        antiberty_files()


def test_run_with_antiberty_designs_a_small_protein_csv(tmp_path):
    rng = random.Random(0)
    rows = ["sequence,score"]
    for _ in range(64):
        seq = "".join(rng.choice(AMINO_ACIDS) for _ in range(10))
        rows.append(f"{seq},{sum(c in 'KR' for c in seq) + rng.random() * 0.1:.4f}")
    (tmp_path / "antibodies.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    proc = run_cli(["run", "--task", "csv", "--data", str(tmp_path / "antibodies.csv"), "--lm", "antiberty",
                    "--steps", "2", "--designs", "8", "--output", str(out)], cwd=tmp_path,
                   env={"BIB_RAY_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["lm"] == "antiberty" and result["alphabet"] == AMINO_ACIDS
    assert result["lm_seed"] is None and len(result["lm_fingerprint"]) == 16
    designs = [row["design"] for row in csv.DictReader((out / "designs.csv").read_text().splitlines())]
    assert len(designs) == 8
    assert all(set(design) <= set(AMINO_ACIDS) and len(design) == 10 for design in designs)
