"""User-facing errors: one line that names the problem and the fix, never a traceback."""

from __future__ import annotations


class HeadstartError(Exception):
    """A problem the user can fix (bad path, empty folder, damaged model...).

    The CLI prints ``str(error)`` on one line and exits with a non-zero code.
    """


class BadImageError(Exception):
    """One image could not be used; ``reason`` is a short human-readable cause."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
