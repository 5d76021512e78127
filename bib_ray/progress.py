"""Progress lines for long commands: pre-training, lock waits, Ray start, each cell or trial ending.

Why plain lines, on a terminal or not: a search or ablation runs for many minutes, often under nohup or
a batch system whose log is a file; a progress bar there is either absent or a screenful of carriage
returns. One line per event, flushed, reads the same in both places and names where the run is: the
cell (``tfbind8/learned/lm1/seed0``) or trial, ``k/N``, the time since the command started and an
estimate of the time left (the mean time per cell ended so far, times the cells left).

Who prints: the CLI installs a :class:`ProgressReporter` for its command (:func:`install`); lower
layers call :func:`current` to report events and print nothing themselves. The reporter holds only
plain data, so a Tune callback that uses it pickles as Tune requires. Without an installed reporter
(library use, tests) a default one prints the same lines.
"""

from __future__ import annotations

import sys
import time
from typing import Mapping

OUTCOMES = ("finished", "stopped early", "failed")


def duration(seconds: float) -> str:
    """75 -> '1m15s', 3700 -> '1h01m', 9 -> '9s'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressReporter:
    """Prints progress lines (``[bib-ray] ...``) to stdout and counts how cells or trials ended."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.counts = {outcome: 0 for outcome in OUTCOMES}

    def elapsed(self) -> float:
        """Seconds since the command started."""
        return time.monotonic() - self.started

    def line(self, text: str) -> None:
        """One progress line, flushed at once (a log file then shows it while the command runs)."""
        print(f"[bib-ray] {text}", file=sys.stdout, flush=True)

    def event(self, text: str) -> None:
        """A step of the command (Ray starting, waiting on a lock), with the time since it started."""
        self.line(f"{text} (elapsed {duration(self.elapsed())})")

    def ended(self, name: str, outcome: str, k: int, total: int | None,
              metrics: Mapping[str, float] | None = None) -> None:
        """Cell or trial ``name`` ended (``outcome``: finished, stopped early or failed) as the k-th of
        ``total``; the estimate of the time left uses the ones ended in this command only (a resumed
        run's earlier cells took no time here)."""
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        shown = ", ".join(f"{key}={value:.4f}" for key, value in (metrics or {}).items())
        of = f"{k}/{total}" if total else f"{k}"
        spent = self.elapsed()
        timing = f"elapsed {duration(spent)}"
        here = sum(self.counts.values())
        if total and k < total and here:
            timing += f", about {duration(spent / here * (total - k))} left"
        self.line(f"{of} {name} {outcome}{': ' + shown if shown else ''} ({timing})")

    def summary(self, what: str = "trials") -> str:
        """'3 trials finished, 1 stopped early, 0 failed' for the cells or trials this command saw end."""
        c = self.counts
        return (f"{c['finished']} {what} finished, {c['stopped early']} stopped early, {c['failed']} failed "
                f"(in {duration(self.elapsed())})")


_CURRENT: ProgressReporter | None = None


def install(reporter: ProgressReporter | None = None) -> ProgressReporter:
    """Make ``reporter`` (a fresh one by default) the one lower layers report to; returns it."""
    global _CURRENT
    _CURRENT = reporter or ProgressReporter()
    return _CURRENT


def current() -> ProgressReporter:
    """The installed reporter (a default one when the CLI installed none)."""
    return _CURRENT or install()
