"""Corrupt cache entries are found, reported in one line, rebuilt, and the run's numbers do not change.

One clean ``bib-ray run`` (the real default-LM path, pre-training a tiny LM for 20 steps) fills a
cache; each test restores it, damages one entry on disk the way a full disk, a cut copy or a stale
mount would, runs again and compares with the clean run. ``bib-ray cache verify`` must find every
damaged entry, and ``bib-ray cache clear`` must remove exactly what its filters select.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import yaml

from bib_ray.cache_store import CorruptCacheEntry, ensure_entry, manifest_path, scan_entries, verify_entry, write_entry
from bib_ray.cli import main
from bib_ray.workbench import clear_workbenches

from helpers import TINY_BASE

NUMBERS = ("normalized_max", "normalized_median", "normalized_mean", "offline_proxy_mean", "mean_edit_distance",
           "gamma")


def _run(workdir: Path, output: str, capsys) -> tuple[dict, str, list[str]]:
    """``bib-ray run`` in this process with a fresh workbench memo (so the disk cache is read)."""
    clear_workbenches()
    (workdir / "c.yaml").write_text(yaml.safe_dump(TINY_BASE))
    capsys.readouterr()
    code = main(["run", "--config", str(workdir / "c.yaml"), "--output", str(workdir / output), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    result = json.loads((workdir / output / "result.json").read_text())
    designs = (workdir / output / "designs.csv").read_text()
    warnings = [line for line in err.splitlines() if line.startswith("bib-ray: warning:")]
    return result, designs, warnings


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A cache filled by one clean run (kept pristine in a copy), and that run's numbers."""
    root = tmp_path_factory.mktemp("clean")
    old = os.environ.get("BIB_RAY_CACHE")
    os.environ["BIB_RAY_CACHE"] = str(root / "cache")
    try:
        clear_workbenches()
        (root / "c.yaml").write_text(yaml.safe_dump(TINY_BASE))
        assert main(["run", "--config", str(root / "c.yaml"), "--output", str(root / "out"), "--no-progress"]) == 0
    finally:
        if old is None:
            os.environ.pop("BIB_RAY_CACHE", None)
        else:
            os.environ["BIB_RAY_CACHE"] = old
    result = json.loads((root / "out" / "result.json").read_text())
    designs = (root / "out" / "designs.csv").read_text()
    entries = {e.kind: e.path for e in scan_entries(root / "cache")}
    assert sorted(entries) == ["auxiliary", "embeddings", "lm"], entries
    shutil.copytree(root / "cache", root / "pristine")
    return root, result, designs


def _fresh_cache(root: Path, monkeypatch) -> dict[str, Path]:
    """The clean cache restored in place (same path and mtimes: the LM's fingerprint, the key of the
    embedding and auxiliary entries, depends on both) and made this test's cache."""
    shutil.rmtree(root / "cache", ignore_errors=True)
    shutil.copytree(root / "pristine", root / "cache")
    monkeypatch.setenv("BIB_RAY_CACHE", str(root / "cache"))
    return {e.kind: e.path for e in scan_entries(root / "cache")}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _garbage_same_size(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# (id, kind of entry, how it is damaged, text the warning must contain)
FAULTS = [
    ("lm-weights-truncated", "lm", lambda e: _truncate(e / "model.safetensors"), "model.safetensors"),
    ("lm-weights-one-byte-flipped", "lm", lambda e: _flip_one_byte(e / "model.safetensors"), "sha256"),
    ("lm-manifest-missing", "lm", lambda e: manifest_path(e).unlink(), "no manifest"),
    ("lm-config-deleted", "lm", lambda e: (e / "config.json").unlink(), "config.json is missing"),
    ("embeddings-truncated", "embeddings", _truncate, "bytes"),
    ("auxiliary-truncated", "auxiliary", _truncate, "bytes"),
    ("auxiliary-garbage", "auxiliary", _garbage_same_size, "sha256"),
    ("auxiliary-manifest-garbage", "auxiliary", lambda e: manifest_path(e).write_text("{not json"),
     "manifest unreadable"),
]


@pytest.mark.parametrize("case_id,kind,damage,needle", FAULTS, ids=[f[0] for f in FAULTS])
def test_corrupt_entry_is_rebuilt_with_one_warning_and_same_numbers(case_id, kind, damage, needle, clean, tmp_path,
                                                                     capsys, monkeypatch):
    root, clean_result, clean_designs = clean
    entries = _fresh_cache(root, monkeypatch)
    entry = entries[kind]
    damage(entry)
    with pytest.raises(CorruptCacheEntry):
        verify_entry(entry, kind)

    result, designs, warnings = _run(tmp_path, "out", capsys)

    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"bib-ray: warning: cache entry {kind} {entry}: ")
    assert needle in warnings[0] and warnings[0].endswith("; rebuilding"), warnings[0]
    verify_entry(entry, kind)  # rebuilt, with a manifest that holds
    if kind == "lm":  # pre-trained again (a fresh pre-training record), not just re-hashed
        assert json.loads((entry / "bib_ray_pretrain.json").read_text())["config"]["steps"] == 20
        pristine = manifest_path(root / "pristine" / "lm" / entry.name)
        assert manifest_path(entry).stat().st_mtime_ns > pristine.stat().st_mtime_ns
    for key in NUMBERS:
        assert result[key] == clean_result[key], (key, result[key], clean_result[key])
    assert designs == clean_designs
    # the next run finds everything whole: no warning at all
    _, designs_again, warnings_again = _run(tmp_path, "out2", capsys)
    assert warnings_again == [] and designs_again == clean_designs


def test_cache_verify_finds_every_damaged_entry_and_list_shows_them(clean, capsys, monkeypatch):
    root, _, _ = clean
    entries = _fresh_cache(root, monkeypatch)
    capsys.readouterr()
    assert main(["cache", "verify"]) == 0
    out = capsys.readouterr().out
    assert "3 good, 0 bad" in out and "bad:" not in out

    _truncate(entries["lm"] / "model.safetensors")
    _truncate(entries["embeddings"])
    _garbage_same_size(entries["auxiliary"])
    assert main(["cache", "verify"]) == 1
    out = capsys.readouterr().out.splitlines()
    bad = [line for line in out if line.startswith("bad:")]
    assert len(bad) == 3, out
    for kind, path in entries.items():
        assert any(line.startswith(f"bad: {kind} {path}: ") for line in bad), (kind, bad)
    assert "0 good, 3 bad" in out[-1]

    manifest_path(entries["lm"]).unlink()
    assert main(["cache", "list"]) == 0
    table = capsys.readouterr().out
    assert "no manifest" in table and "tfbind8" in table and "3 entries" in table
    assert main(["cache", "verify"]) == 1
    assert "no manifest" in capsys.readouterr().out


def _fake_entry(root: Path, kind: str, task: str, lm: str, name: str) -> Path:
    folder = root / kind
    entry = folder / name
    if kind == "lm":
        write_entry(entry, kind, lambda tmp: (tmp.mkdir(), (tmp / "weights.bin").write_bytes(b"w" * 100)), task, lm)
    else:
        write_entry(entry, kind, lambda tmp: tmp.write_bytes(b"x" * 50), task, lm)
    return entry


def test_cache_clear_removes_only_what_the_filters_select(tmp_path, capsys):
    root = Path(os.environ["BIB_RAY_CACHE"])
    made = {}
    for task, lm in (("tfbind8", "tfbind8-aaaa-1111"), ("aav", "aav-bbbb-2222"), ("aav", "facebook/esm2_t6_8M")):
        made[(task, lm, "lm")] = _fake_entry(root, "lm", task, lm, lm.replace("/", "_"))
        made[(task, lm, "embeddings")] = _fake_entry(root, "embeddings", task, lm, f"{lm.replace('/', '_')}-e.pt")
        made[(task, lm, "auxiliary")] = _fake_entry(root, "auxiliary", task, lm, f"{lm.replace('/', '_')}-a.pt")

    def alive() -> set:
        return {key for key, path in made.items() if path.exists() and manifest_path(path).exists()}

    everything = set(made)
    capsys.readouterr()
    assert main(["cache", "clear", "--kind", "embeddings", "--task", "aav"]) == 0
    out = capsys.readouterr().out
    gone = {("aav", "aav-bbbb-2222", "embeddings"), ("aav", "facebook/esm2_t6_8M", "embeddings")}
    assert alive() == everything - gone
    assert out.count("removed embeddings") == 2 and "removed 2 entries" in out

    assert main(["cache", "clear", "--lm", "esm2"]) == 0
    gone |= {("aav", "facebook/esm2_t6_8M", "lm"), ("aav", "facebook/esm2_t6_8M", "auxiliary")}
    assert alive() == everything - gone
    assert "removed 2 entries" in capsys.readouterr().out

    assert main(["cache", "clear", "--kind", "lm"]) == 0
    gone |= {("tfbind8", "tfbind8-aaaa-1111", "lm"), ("aav", "aav-bbbb-2222", "lm")}
    assert alive() == everything - gone

    assert main(["cache", "clear", "--task", "tfbind8"]) == 0
    gone |= {("tfbind8", "tfbind8-aaaa-1111", "embeddings"), ("tfbind8", "tfbind8-aaaa-1111", "auxiliary")}
    assert alive() == everything - gone == {("aav", "aav-bbbb-2222", "auxiliary")}

    assert main(["cache", "clear"]) == 0
    assert alive() == set() and scan_entries(root) == []
    assert "removed 1 entries" in capsys.readouterr().out


def test_concurrent_readers_of_a_corrupt_entry_rebuild_it_once(tmp_path, capsys):
    """Several threads find the same damaged entry: one warning, one build, all get the new value."""
    entry = tmp_path / "cache" / "embeddings" / "e.pt"
    builds = []
    barrier = threading.Barrier(4)

    def build(tmp: Path) -> None:
        builds.append(1)
        threading.Event().wait(0.2)  # a slow build, so the others reach the lock meanwhile
        tmp.write_text("good")

    ensure_entry(entry, "embeddings", build, Path.read_text, task="t", lm="m")
    assert builds == [1]
    entry.write_text("bad!")  # same size, other bytes
    capsys.readouterr()
    got = []

    def reader() -> None:
        barrier.wait()
        got.append(ensure_entry(entry, "embeddings", build, Path.read_text, task="t", lm="m"))

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == ["good"] * 4
    assert builds == [1, 1]
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and "sha256" in warnings[0], warnings


def test_unloadable_entry_with_a_matching_manifest_is_rebuilt(tmp_path, capsys):
    """A file the manifest vouches for but the loader rejects (e.g. written by an incompatible
    version) is treated like a corrupt one, not raised as a traceback."""
    entry = tmp_path / "x.pt"
    write_entry(entry, "auxiliary", lambda tmp: tmp.write_text("not a torch file"), "t", "m")

    def load(path: Path) -> str:
        import torch

        return torch.load(path, weights_only=False)

    def build(tmp: Path) -> None:
        import torch

        torch.save("fine", tmp)

    capsys.readouterr()
    assert ensure_entry(entry, "auxiliary", build, load, task="t", lm="m") == "fine"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unreadable" in err[0] and err[0].endswith("; rebuilding"), err
    assert verify_entry(entry)["kind"] == "auxiliary"
