"""``bib-ray cache``: list, verify and clear the on-disk cache (default LMs, offline embeddings,
auxiliary models).

Why a command: the cache is shared between runs and machines and can grow or be damaged; a user
should see what is there and remove part of it without finding and deleting files by hand (and
without removing an entry under a running job: removal takes each entry's lock).
"""

from __future__ import annotations


from bib_ray.cache_store import CorruptCacheEntry, EntryInfo, discard_locked, scan_entries, verify_entry
from bib_ray.proxy.small_lm import cache_root

EXIT_BAD_ENTRIES = 1


def human_size(size: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def format_table(entries: list[EntryInfo]) -> str:
    """The table ``bib-ray cache list`` prints, one row per entry; for a default LM also the task options it
    was trained on (TF table, window), its LM seed, MLM steps and recipe version, which its hashed folder
    name hides (a FOXC1 LM and a SIX6 LM would otherwise look alike)."""
    header = ("KIND", "TASK", "OPTIONS", "LM SEED", "STEPS", "RECIPE", "LM", "SIZE", "CREATED", "ENTRY")
    rows = []
    for e in entries:
        lm = e.lm_details()
        rows.append((e.kind, e.task, lm["options"], lm["lm_seed"], lm["steps"], lm["recipe"], e.lm, human_size(e.size),
                     e.created if e.manifest else "? (no manifest: rebuilt on next use)", e.path.name))
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines)


def select(entries: list[EntryInfo], kind: str | None = None, task: str | None = None,
           lm: str | None = None) -> list[EntryInfo]:
    """Entries of one kind, task (exact name) and LM (any part of its name)."""
    return [e for e in entries if (kind is None or e.kind == kind) and (task is None or e.task == task)
            and (lm is None or lm in e.lm)]


def cache_list() -> int:
    """Print the entries."""
    root = cache_root()
    entries = scan_entries(root)
    if not entries:
        print(f"cache {root}: empty")
        return 0
    print(format_table(entries))
    print(f"{len(entries)} entries, {human_size(sum(e.size for e in entries))}, in {root}")
    return 0


def cache_verify() -> int:
    """Verify every entry against its manifest; print each bad one; exit code 1 if any is bad."""
    root = cache_root()
    entries = scan_entries(root)
    bad = 0
    for entry in entries:
        try:
            verify_entry(entry.path, entry.kind)
        except CorruptCacheEntry as problem:
            bad += 1
            print(f"bad: {problem.kind} {problem.path}: {problem.reason}")
    print(f"verified {len(entries)} entries in {root}: {len(entries) - bad} good, {bad} bad"
          + (" (each is rebuilt when next used; `bib-ray cache clear` removes entries now)" if bad else ""))
    return EXIT_BAD_ENTRIES if bad else 0


def cache_clear(kind: str | None = None, task: str | None = None, lm: str | None = None) -> int:
    """Remove the entries that match (all of them without filters) and say what went."""
    root = cache_root()
    chosen = select(scan_entries(root), kind, task, lm)
    for entry in chosen:
        discard_locked(entry.path)
        print(f"removed {entry.kind} {entry.path} ({human_size(entry.size)})")
    print(f"removed {len(chosen)} entries, {human_size(sum(e.size for e in chosen))} freed, from {root}")
    return 0
