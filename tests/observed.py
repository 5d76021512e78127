"""What the tests observed, counted as they observe it and printed once at the end of the session.

Why: the suite's closing lines ("bad-input cases", "crash recoveries", "runs lost") must be figures the
tests measured, not text written in. A case is recorded from what the test found, before it asserts
on it (``record_case``: checked, and how many of those misbehaved), so every printed count can read
non-zero; ``runs lost`` (and the rows lost by concurrent writers)
is summed from what each test found in MLflow after recovering, recorded before the test asserts on
it, so a loss shows in the summary as well as failing the test. Nothing here depends on the order tests run in: the summary is built
in ``pytest_terminal_summary`` (conftest.py) from whatever was recorded.
"""

from __future__ import annotations

from collections import Counter


class Observed:
    """Counters by kind and label."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter] = {}

    def record(self, kind: str, label: str, amount: int = 1) -> None:
        """Add ``amount`` observations of ``kind`` (e.g. "bad input") under ``label`` (e.g. "search")."""
        self.counts.setdefault(kind, Counter())[label] += amount

    def record_case(self, kind: str, label: str, problems: list[str]) -> None:
        """One case of ``kind`` checked under ``label``; it misbehaved when ``problems`` is not empty.

        Called before the test asserts ``not problems``, so "misbehaved" is a count of what was seen.
        """
        self.record(f"{kind} checked", label)
        self.record(f"{kind} that misbehaved", label, 1 if problems else 0)

    def total(self, kind: str, label: str | None = None) -> int:
        counter = self.counts.get(kind, Counter())
        return counter[label] if label is not None else sum(counter.values())

    def summary_lines(self) -> list[str]:
        """One line per kind: the total and its split by label."""
        lines = []
        for kind in sorted(self.counts):
            counter = self.counts[kind]
            split = ", ".join(f"{label}: {n}" for label, n in sorted(counter.items()))
            lines.append(f"{kind}: {sum(counter.values())} ({split})")
        return lines


OBSERVED = Observed()
