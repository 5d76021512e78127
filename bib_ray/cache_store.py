"""Cache entries that can prove they are whole: written with a manifest, verified on every read.

Why: the cache (default LMs, offline embeddings, auxiliary models) is shared between runs, machines
and network folders, and a full disk, an interrupted copy or a stale mount can cut a file short.
bib-ray's own writes are atomic, but only a checksum catches damage done from outside. So every entry
(a file or a folder) has a sidecar ``<entry>.manifest.json`` with the sha256 and size of each file,
what the entry is (kind, task, LM) and when and by which bib-ray it was written. A read checks it;
an entry that fails is reported in one line on stderr, removed and built again, and the run goes on.

Concurrency: the manifest is written before the entry is renamed into place, so whoever sees the
entry also sees its manifest; checks that fail, and every build, run under the entry's file lock,
so concurrent readers and writers build an entry once. Lock files are never deleted (deleting a
lock someone holds would let a second process take a fresh one).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from filelock import FileLock

from bib_ray.errors import first_line

T = TypeVar("T")
KINDS = ("lm", "embeddings", "auxiliary")
MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = 1
_ABSENT = object()


class CorruptCacheEntry(Exception):
    """A cache entry that fails its manifest (or has none, or cannot be read)."""

    def __init__(self, path: Path, kind: str, reason: str) -> None:
        self.path, self.kind, self.reason = Path(path), kind, reason
        super().__init__(f"cache entry {kind} {path}: {reason}")


def manifest_path(entry: Path) -> Path:
    """The sidecar manifest of an entry (``<entry>.manifest.json``, beside it)."""
    return entry.with_name(entry.name + MANIFEST_SUFFIX)


def lock_path(entry: Path) -> Path:
    """The file lock of an entry (``<entry>.lock``, the name the default-LM cache always used)."""
    return entry.with_name(entry.name + ".lock")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(entry: Path) -> dict[str, Path]:
    """Relative name -> path of every file of an entry (the file itself, or a folder's files)."""
    if entry.is_dir():
        return {p.relative_to(entry).as_posix(): p for p in sorted(entry.rglob("*")) if p.is_file()}
    return {entry.name: entry}


def _version() -> str:
    from bib_ray import __version__

    return __version__


def build_manifest(entry: Path, kind: str, task: str, lm: str, extra: dict[str, Any] | None = None) -> dict:
    """The manifest of what is at ``entry`` now."""
    files = {name: {"sha256": _sha256(path), "size": path.stat().st_size} for name, path in _files(entry).items()}
    return {"format": MANIFEST_FORMAT, "kind": kind, "task": task, "lm": lm,
            "folder": entry.is_dir(), "files": files,
            "size": sum(f["size"] for f in files.values()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "bib_ray_version": _version(),
            **({"extra": extra} if extra else {})}


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_entry(entry: Path, kind: str, build: Callable[[Path], Any], task: str, lm: str,
                extra: dict[str, Any] | None = None) -> None:
    """Build an entry at a temporary path, write its manifest, then rename it into place.

    ``build(tmp)`` writes a file or a folder at ``tmp``. Callers hold the entry's lock and have
    removed any old entry.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    _remove(tmp)
    try:
        build(tmp)
        manifest = build_manifest(tmp, kind, task, lm, extra)
        if not manifest["folder"]:  # a file's manifest names the entry, not the temporary file
            manifest["files"] = {entry.name: manifest["files"].pop(tmp.name)}
        _write_text_atomic(manifest_path(entry), json.dumps(manifest, indent=1))
        os.replace(tmp, entry)
    finally:
        _remove(tmp)


def read_manifest(entry: Path, kind: str = "?") -> dict:
    """The entry's manifest, or :class:`CorruptCacheEntry` when it is missing or unreadable."""
    path = manifest_path(entry)
    if not path.exists():
        raise CorruptCacheEntry(entry, kind, "no manifest (written by an older bib-ray or copied without it), "
                                             "so it cannot be verified")
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise ValueError("no file list")
    except (OSError, ValueError) as err:
        raise CorruptCacheEntry(entry, kind, f"manifest unreadable ({err})") from None
    return manifest


def verify_entry(entry: Path, kind: str = "?") -> dict:
    """Check every file of an entry against its manifest; returns the manifest.

    Raises :class:`CorruptCacheEntry` naming the first problem: a missing manifest, a missing or
    unreadable file, a size or checksum that differs.
    """
    manifest = read_manifest(entry, kind)
    kind = manifest.get("kind", kind)
    if manifest.get("folder") != entry.is_dir():
        raise CorruptCacheEntry(entry, kind, "is a file where a folder was written, or the other way round")
    present = _files(entry)
    for name, want in manifest["files"].items():
        path = present.get(name)
        if path is None:
            raise CorruptCacheEntry(entry, kind, f"file {name} is missing")
        try:
            size = path.stat().st_size
            if size != want.get("size"):
                raise CorruptCacheEntry(entry, kind, f"file {name} has {size} bytes, the manifest says "
                                                     f"{want.get('size')} (cut short or overwritten)")
            if _sha256(path) != want.get("sha256"):
                raise CorruptCacheEntry(entry, kind, f"file {name} does not match its sha256 checksum")
        except OSError as err:
            raise CorruptCacheEntry(entry, kind, f"file {name} unreadable ({err.strerror or err})") from None
    return manifest


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def discard_entry(entry: Path) -> None:
    """Remove an entry and its manifest (the entry first: a manifest alone is an absent entry)."""
    _remove(entry)
    manifest_path(entry).unlink(missing_ok=True)


def warn(problem: CorruptCacheEntry) -> None:
    """The one line a user sees when an entry is rebuilt."""
    print(f"bib-ray: warning: cache entry {problem.kind} {problem.path}: {problem.reason}; rebuilding",
          file=sys.stderr, flush=True)


def _verified_load(entry: Path, kind: str, load: Callable[[Path], T]) -> Any:
    if not entry.exists():
        return _ABSENT
    verify_entry(entry, kind)
    try:
        return load(entry)
    except Exception as err:  # noqa: BLE001 - whatever torch/safetensors raise on a bad file
        first = first_line(err)
        raise CorruptCacheEntry(entry, kind, f"unreadable ({type(err).__name__}: {first[:200]})") from None


@contextlib.contextmanager
def _wait_for_lock(entry: Path, kind: str) -> Iterator[FileLock]:
    """Hold the entry's lock; when another process holds it (building the same LM, say), one line says
    so before waiting, and one when the wait is over, so a second process is never silent."""
    from filelock import Timeout

    from bib_ray.progress import current

    lock = FileLock(str(lock_path(entry)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        waited = time.monotonic()
        current().event(f"waiting for another process building the {kind} cache entry {entry.name} "
                        f"(lock {lock_path(entry)})")
        lock.acquire()
        current().event(f"lock on {entry.name} free after {time.monotonic() - waited:.0f} s")
    try:
        yield lock
    finally:
        lock.release()


def ensure_entry(entry: Path, kind: str, build: Callable[[Path], Any], load: Callable[[Path], T],
                 task: str, lm: str, extra: dict[str, Any] | None = None) -> T:
    """``load(entry)`` of a verified entry; a missing entry is built, a corrupt one is reported in
    one line, removed and built again.

    The common case (a good entry) reads without the lock; anything else re-checks under it, so of
    several processes that find the same bad entry, one reports and rebuilds it and the others load
    the new one.
    """
    try:
        value = _verified_load(entry, kind, load)
        if value is not _ABSENT:
            return value
    except CorruptCacheEntry:
        pass
    entry.parent.mkdir(parents=True, exist_ok=True)
    with _wait_for_lock(entry, kind):
        try:
            value = _verified_load(entry, kind, load)
        except CorruptCacheEntry as problem:
            warn(problem)
            discard_entry(entry)
            value = _ABSENT
        if value is _ABSENT:
            write_entry(entry, kind, build, task, lm, extra)
            value = _verified_load(entry, kind, load)
    return value


def lm_label(source: str) -> str:
    """How an LM is named in manifests: a local folder by its name, a hub id as it is."""
    path = Path(source)
    return path.name if path.is_dir() else source


# listing, verifying and clearing a whole cache (``bib-ray cache``) ---------------------------------


@dataclass
class EntryInfo:
    """One entry of the cache, as ``bib-ray cache list`` shows it."""

    path: Path
    kind: str
    task: str
    lm: str
    size: int
    created: str
    manifest: dict | None

    def lm_details(self) -> dict[str, str]:
        """What a default LM was trained on and how: task options, LM seed, MLM steps, recipe version;
        "?" where an older entry did not record it, "-" for entries that are not LMs."""
        if self.kind != "lm":
            return {"options": "-", "lm_seed": "-", "steps": "-", "recipe": "-"}
        extra = (self.manifest or {}).get("extra") or {}
        config = extra.get("config") or {}
        options = extra.get("task_options")

        def shown(value: Any) -> str:
            return "?" if value is None else str(value)
        return {"options": "?" if options is None else (",".join(f"{k}={v}" for k, v in options.items()) or "-"),
                "lm_seed": shown(config.get("seed")), "steps": shown(config.get("steps")),
                "recipe": shown(extra.get("recipe_version"))}


def _entry_size(entry: Path) -> int:
    try:
        return sum(p.stat().st_size for p in _files(entry).values())
    except OSError:
        return 0


def _is_entry(path: Path) -> bool:
    name = path.name
    return not (name.startswith(".") or name.endswith(".lock") or name.endswith(MANIFEST_SUFFIX)
                or name.endswith(".tmp"))


def scan_entries(root: Path) -> list[EntryInfo]:
    """Every entry under a cache root, with what its manifest says (or what its name says, when it
    has no readable manifest)."""
    out: list[EntryInfo] = []
    for kind in KINDS:
        folder = root / kind  # the kinds are the cache's sub-folders
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if not _is_entry(path):
                continue
            try:
                manifest = read_manifest(path, kind)
            except CorruptCacheEntry:
                manifest = None
            guess_task = path.name.split("-")[0] if kind == "lm" else "?"
            guess_lm = path.name if kind == "lm" else "?"
            m = manifest or {}
            out.append(EntryInfo(path=path, kind=m.get("kind", kind), task=m.get("task", guess_task),
                                 lm=m.get("lm", guess_lm), size=_entry_size(path),
                                 created=m.get("created", "?"), manifest=manifest))
    return out


def discard_locked(entry: Path) -> None:
    """Remove an entry while holding its lock (no run is reading or writing it meanwhile)."""
    with FileLock(str(lock_path(entry))):
        discard_entry(entry)
