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


class ParameterError(HeadstartError, ValueError):
    """A parameter of the estimator (or a function) has a value it cannot take.

    ``param`` is the Python parameter's name, so the CLI can name its own flag instead (a
    library error never names a CLI flag).
    """

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message
