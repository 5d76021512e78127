"""User-facing errors.

Every problem caused by the user's input (a file, a flag, a config key) is raised as
:class:`BibInputError`. The CLI prints its message as one line and exits with code 2, so a user
never sees a traceback from deep inside for a typo. The message names the field and the fix.
"""

from __future__ import annotations


class BibInputError(ValueError):
    """Bad user input: the message names the field and how to fix it (one line)."""

    def __init__(self, field: str, problem: str, fix: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        text = f"{field}: {problem}"
        if fix:
            text += f" ({fix})"
        super().__init__(text.replace("\n", " "))
