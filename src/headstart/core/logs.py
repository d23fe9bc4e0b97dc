"""headstart's log lines go through the standard library's ``logging``.

Every module logs to ``logging.getLogger(__name__)``, so every line lands under the ``headstart``
logger and an application can route, filter or silence it as it does any library's. What a user of
the CLI or of ``fit(verbose=True)`` sees is decided where a run starts: :func:`log_run` attaches,
for the run's duration only, a handler that prints each line to stderr (when verbose) and one that
keeps it in the run folder's ``log.txt`` (when there is a folder), with any filters the caller adds
(the run writer adds one that passes rank 0's lines only). Progress bars are not log lines: they
stay ``headstart.core.progress``'s.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from headstart.core.io import terminal_safe

ROOT_LOGGER = "headstart"
LOG_FILE = "log.txt"


class ConsoleHandler(logging.Handler):
    """Prints each line's message to the current ``sys.stderr`` (looked up at each line, so a
    redirected or captured stderr gets it), with terminal control characters made visible."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(terminal_safe(record.getMessage()), file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging's rule: a failing handler never stops the program
            self.handleError(record)


class RunFileHandler(logging.Handler):
    """Appends ``HH:MM:SS message`` lines (and any traceback) to ``run_dir/log.txt``.

    The file is opened for each line, so it is whole after every line and a kill loses nothing;
    names that are not UTF-8 are kept as they are (surrogate escapes)."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / LOG_FILE

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
            text = f"{stamp} {record.getMessage()}\n"
            if record.exc_info:
                text += "".join(traceback.format_exception(*record.exc_info))
            with open(self.path, "a", encoding="utf-8", errors="surrogateescape") as f:
                f.write(text)
        except Exception:  # noqa: BLE001 - logging's rule: a failing handler never stops the program
            self.handleError(record)


@contextmanager
def log_run(
    run_dir: Path | None, verbose: bool, filters: Sequence[logging.Filter] = ()
) -> Iterator[RunFileHandler | None]:
    """For the block's duration, headstart's INFO lines go to stderr (``verbose``) and to
    ``run_dir/log.txt`` (``run_dir`` not None); yields that file's handler (None without a
    folder), whose ``path`` a run moved whole (a staged run) points at its new place.

    Unless the application set the ``headstart`` logger's level, it is INFO inside the block (then
    unset again), so the lines pass whatever the root's level; they still propagate to the
    application's own handlers.
    """
    logger = logging.getLogger(ROOT_LOGGER)
    handlers: list[logging.Handler] = []
    if verbose:
        handlers.append(ConsoleHandler())
    file = RunFileHandler(run_dir) if run_dir is not None else None
    if file is not None:
        handlers.append(file)
    for handler in handlers:
        for f in filters:
            handler.addFilter(f)
        logger.addHandler(handler)
    level = logger.level
    if level == logging.NOTSET:  # a level the application set is its to keep
        logger.setLevel(logging.INFO)
    try:
        yield file
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
        logger.setLevel(level)
