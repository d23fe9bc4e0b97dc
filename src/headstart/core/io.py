"""The run folder: what a run did, written as it goes (log, skipped files, split, metrics)."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def terminal_safe(text: str, keep: str = "\n") -> str:
    """``text`` with every character a terminal would act on instead of show (control characters,
    bidirectional overrides, the surrogates of non-UTF-8 bytes) written as a visible escape such
    as ``\\x1b`` or ``\\u202e``; the characters in ``keep`` pass."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() or c in keep else c.encode("unicode_escape", "backslashreplace").decode("ascii")
        for c in text
    )


def _clean(value: object) -> object:
    """JSON without NaN/inf (which many readers reject): they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _clean(value.item())
    return value


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` only when the block
    ends without an error, so a reader never sees half a file (removed on error).

    Every file headstart writes goes through here (or ``write_json``/``write_rows``/``write_text``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str, errors: str = "strict") -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", errors=errors)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | Path, data: object) -> Path:
    """JSON, atomically; NaN/inf become null; a non-UTF-8 file name becomes a \\udcXX escape
    (valid JSON that reads back exact)."""
    text = json.dumps(_clean(data), indent=2, ensure_ascii=False)
    return write_text(path, text, errors="backslashreplace")


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def protect_cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text, never runs as a formula.

    Rule (round-trips through ``unprotect_cell``): a text cell that starts like a formula
    (``= + - @``, tab, carriage return) and is not a number, or that starts with an apostrophe,
    gets one more apostrophe in front; numbers and other cells are written as they are.
    """
    if not isinstance(value, str) or not value:
        return value
    if value.startswith("'") or (value.startswith(FORMULA_STARTS) and not _is_number(value)):
        return "'" + value
    return value


def unprotect_cell(value: str) -> str:
    """The cell ``protect_cell`` was given: its apostrophe removed where it added one (so a CSV
    of another origin reads as written, except for that exact pattern)."""
    if value.startswith("'") and protect_cell(value[1:]) == value:
        return value[1:]
    return value


def write_rows(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    """CSV, atomically; a non-UTF-8 file name is written back as the bytes it has on disk, and
    text cells are protected against formula injection (``protect_cell``; read back with
    ``read_rows``)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows([protect_cell(v) for v in row] for row in rows)
    return Path(path)


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """A CSV ``write_rows`` wrote, as dicts of the values it was given (missing file: no rows)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return [{k: unprotect_cell(v or "") for k, v in row.items()} for row in csv.DictReader(f)]


TEMPORARY_NAME = re.compile(r"^\..+\.(\d+)(?:\.\d+)?\.tmp$")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs here (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # alive, owned by someone else
    return True


def clean_stale_temporaries(folder: str | Path, depth: int = 1, min_age: float = 0.0) -> int:
    """Remove temporary files of writes a killed process left behind (``atomic_path``'s
    ``.NAME.PID[.THREAD].tmp`` whose process is gone, untouched for ``min_age`` seconds) in
    ``folder`` and ``depth`` levels below; returns how many.

    Rule: a write in progress is left alone: its process is alive, and in a folder other machines
    or containers may share (another process numbering), a recent file is never taken for stale.
    """
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    now = time.time()
    for entry in entries:
        match = TEMPORARY_NAME.match(entry.name)
        try:
            if match and entry.is_file(follow_symlinks=False):
                old = now - entry.stat(follow_symlinks=False).st_mtime >= min_age
                if old and not process_alive(int(match.group(1))):
                    os.unlink(entry.path)
                    removed += 1
            elif depth > 0 and entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                removed += clean_stale_temporaries(entry.path, depth - 1, min_age)
        except OSError:
            continue
    return removed


def summarize_skips(skipped: Sequence[tuple[str, str, str]]) -> str:
    """One line: how many files were passed over, grouped by reason."""
    if not skipped:
        return ""
    reasons = Counter(reason.split(":")[0] for _, reason, _ in skipped)
    top = ", ".join(f"{n} {r}" for r, n in reasons.most_common(4))
    more = "" if len(reasons) <= 4 else f", {len(reasons) - 4} other reasons"
    return f"skipped {len(skipped)} file(s): {top}{more}"
