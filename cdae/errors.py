"""User-facing errors.

Every error a user can cause is raised as :class:`CdaeError` with a one-line message that names
the problem and the fix. The CLI prints it without a traceback and exits with ``exit_code``.
"""

from __future__ import annotations


class CdaeError(Exception):
    """A problem the user can fix; ``str(err)`` is a single line naming the problem and the fix."""

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        text = message if hint is None else f"{message} ({hint})"
        super().__init__(text.replace("\n", " "))


class ConfigError(CdaeError):
    """Invalid params.yaml content or CLI override; the message names the key path."""


class DataError(CdaeError):
    """A missing, truncated, corrupt or mismatched input file; the message names the file."""


class InterventionError(CdaeError):
    """A malformed or impossible intervention (unknown variable, bad value, duplicate)."""


class TrainingError(CdaeError):
    """Training cannot continue (non-finite loss, incompatible checkpoint)."""
