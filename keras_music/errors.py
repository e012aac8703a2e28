"""The one base of every error a user can fix: each command prints it as one line, no traceback.

Every stage's error type derives from `KerasMusicError`, so `cli.user_errors` catches
them all without knowing (or importing) the stages. `UsageError`s are mistakes in the
command or its settings and exit with status 2, the others with status 1.
"""

from __future__ import annotations


class KerasMusicError(Exception):
    """Bad input, settings or data, said in one line that names what is wrong and what to do."""


class UsageError(KerasMusicError):
    """A mistake in the command line or the settings (exit status 2, with the command's usage)."""
