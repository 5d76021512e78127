"""User-facing errors.

Every problem caused by the user's input (a file, a flag, a config key) is raised as
:class:`BibInputError`. The CLI prints its message as one line and exits with code 2, so a user
never sees a traceback from deep inside for a typo. The message names the field and the fix.
"""

from __future__ import annotations

from bib_ray.redact import mask_secrets


def first_line(err: BaseException) -> str:
    """The first line of an error's message, or its type's name when the message is empty: what a
    one-line report of a library's many-line error shows."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


class BibInputError(ValueError):
    """Bad user input: the message names the field and how to fix it (one line)."""

    def __init__(self, field: str, problem: str, fix: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        text = f"{field}: {problem}"
        if fix:
            text += f" ({fix})"
        super().__init__(mask_secrets(text.replace("\n", " ")))  # a URI in the message loses its password

    def __reduce__(self):
        """Rebuilt from its three parts: an error raised in a Ray worker reaches the driver (Ray
        pickles it) as the same one-line error, not a ``TypeError`` while unpickling."""
        return (type(self), (self.field, self.problem, self.fix))


class Terminated(KeyboardInterrupt):
    """SIGTERM (what Slurm, Kubernetes and ``kill`` send): the command stops as on Ctrl-C, with exit code
    143 (128 + 15) instead of 130."""
