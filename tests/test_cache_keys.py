"""Caches are keyed by what produced them: an LM whose files change, or another LM or task, never
reads an embedding or auxiliary entry that was computed for something else.

Checked through the public path a run takes (``get_workbench``), against embeddings and auxiliary
fits computed afresh; and the cache must really be reused when nothing changed, so that "never
stale" is not won by never caching.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bib_ray.core.auxiliary import fit_auxiliary
from bib_ray.proxy.lm_proxy import LMProxy
from bib_ray.proxy.small_lm import build_small_bert, cache_root
from bib_ray.spec import RunSpec
from bib_ray.workbench import clear_workbenches, get_workbench

from conftest import TINY

EHRLICH = {"length": 8, "vocab": 4, "motifs": 1, "motif_length": 2, "quantization": 2, "n_samples": 64}
AUX = (2, 8, 20, 0)  # heads, hidden, epochs, seed


def _save_lm(folder: Path, shift: float = 0.0) -> None:
    """A tiny BERT over the small Ehrlich alphabet; ``shift`` moves its weights (same files, new content)."""
    model, tokenizer = build_small_bert("ACDE", TINY, 10)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(shift)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _cache_files() -> set[Path]:
    return {p for p in cache_root().rglob("*") if p.is_file()}


def _spec(lm: Path, seed: int = 0) -> RunSpec:
    return RunSpec.model_validate({"task": {"name": "ehrlich", "options": {**EHRLICH, "seed": seed}}, "lm": str(lm)})


def _fresh(lm: Path, bench) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and auxiliary scores computed now, without any cache."""
    proxy = LMProxy.load(str(lm), bench.task.alphabet)
    phi = proxy.embed_sequences(torch.tensor(bench.task.offline_x)).float()
    aux = fit_auxiliary(phi, bench.y_z, *AUX)
    with torch.no_grad():
        return phi, aux(phi)


def _cached(bench) -> tuple[torch.Tensor, torch.Tensor]:
    aux = bench.auxiliary(*AUX)
    with torch.no_grad():
        return bench.phi_l, aux(bench.phi_l)


def test_changing_the_lm_files_changes_the_fingerprint(tmp_path):
    lm = tmp_path / "lm"
    _save_lm(lm)
    first = LMProxy.load(str(lm), "ACDE").fingerprint()
    assert LMProxy.load(str(lm), "ACDE").fingerprint() == first  # stable while the files are
    _save_lm(lm, shift=0.01)  # same file names and sizes, other weights
    second = LMProxy.load(str(lm), "ACDE").fingerprint()
    assert second != first
    # The fingerprint is of what runs (tensors and config), not of the file's bytes: a layout-only edit
    # keeps it, a change of what the tensors are run through does not.
    text = (lm / "config.json").read_text()
    (lm / "config.json").write_text(text.replace('"hidden_act"', ' "hidden_act"'))
    assert LMProxy.load(str(lm), "ACDE").fingerprint() == second
    import json

    config = json.loads(text)
    config["hidden_act"] = "relu" if config.get("hidden_act") != "relu" else "gelu"
    (lm / "config.json").write_text(json.dumps(config))
    assert LMProxy.load(str(lm), "ACDE").fingerprint() not in (first, second)


def test_stale_embedding_and_auxiliary_entries_are_never_read(tmp_path):
    lm = tmp_path / "lm"
    _save_lm(lm)
    clear_workbenches()
    try:
        bench = get_workbench(_spec(lm))
        phi_a, scores_a = _cached(bench)
        fresh_phi, fresh_scores = _fresh(lm, bench)
        torch.testing.assert_close(phi_a, fresh_phi)
        torch.testing.assert_close(scores_a, fresh_scores)
        files = _cache_files()
        assert files, "nothing was cached"

        clear_workbenches()  # same LM, same task: the disk entries are reused, none written
        phi_again, scores_again = _cached(get_workbench(_spec(lm)))
        assert torch.equal(phi_again, phi_a) and torch.equal(scores_again, scores_a)
        assert _cache_files() == files

        _save_lm(lm, shift=0.01)  # the LM's files change in place
        clear_workbenches()
        bench = get_workbench(_spec(lm))
        phi_b, scores_b = _cached(bench)
        fresh_phi, fresh_scores = _fresh(lm, bench)
        torch.testing.assert_close(phi_b, fresh_phi)
        torch.testing.assert_close(scores_b, fresh_scores)
        assert not torch.allclose(phi_b, phi_a)

        other_lm = tmp_path / "other_lm"  # another LM on the same task
        _save_lm(other_lm, shift=-0.01)
        clear_workbenches()
        bench = get_workbench(_spec(other_lm))
        phi_c, scores_c = _cached(bench)
        fresh_phi, fresh_scores = _fresh(other_lm, bench)
        torch.testing.assert_close(phi_c, fresh_phi)
        torch.testing.assert_close(scores_c, fresh_scores)

        clear_workbenches()  # the same LM on another task (other offline data)
        bench = get_workbench(_spec(other_lm, seed=1))
        phi_d, scores_d = _cached(bench)
        fresh_phi, fresh_scores = _fresh(other_lm, bench)
        torch.testing.assert_close(phi_d, fresh_phi)
        torch.testing.assert_close(scores_d, fresh_scores)
    finally:
        clear_workbenches()
