"""The run folder: what a run did, written as it goes (log, skipped files, split, metrics)."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class RunLog:
    """Prints a line for the user and keeps the same line in ``RUN_DIR/log.txt``."""

    def __init__(self, run_dir: Path | None, verbose: bool = True) -> None:
        self.run_dir = run_dir
        self.verbose = verbose
        self.lines: list[str] = []
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.lines.append(f"{stamp} {message}")
        if self.verbose:
            print(message, file=sys.stderr, flush=True)
        if self.run_dir is not None:
            with open(self.run_dir / "log.txt", "a", encoding="utf-8", errors="surrogateescape") as f:
                f.write(f"{stamp} {message}\n")


def _clean(value: Any) -> Any:
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


def write_json(path: str | Path, data: Any) -> Path:
    """JSON, atomically; NaN/inf become null; a non-UTF-8 file name becomes a \\udcXX escape
    (valid JSON that reads back exact)."""
    text = json.dumps(_clean(data), indent=2, ensure_ascii=False)
    return write_text(path, text, errors="backslashreplace")


def write_rows(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """CSV, atomically; a non-UTF-8 file name is written back as the bytes it has on disk."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
    return Path(path)


def summarize_skips(skipped: Sequence[tuple[str, str, str]]) -> str:
    """One line: how many files were passed over, grouped by reason."""
    if not skipped:
        return ""
    reasons = Counter(reason.split(":")[0] for _, reason, _ in skipped)
    top = ", ".join(f"{n} {r}" for r, n in reasons.most_common(4))
    more = "" if len(reasons) <= 4 else f", {len(reasons) - 4} other reasons"
    return f"skipped {len(skipped)} file(s): {top}{more}"
