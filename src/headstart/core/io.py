"""The run folder: what a run did, written as it goes (log, skipped files, split, metrics)."""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
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


def write_json(path: Path, data: dict[str, Any]) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    # backslashreplace turns a non-UTF-8 file name into a JSON \\udcXX escape: valid, and it reads back exact
    tmp.write_text(
        json.dumps(_clean(data), indent=2, ensure_ascii=False), encoding="utf-8", errors="backslashreplace"
    )
    tmp.replace(path)
    return path


def write_rows(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    # surrogateescape: a non-UTF-8 file name is written back as the bytes it has on disk
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def summarize_skips(skipped: Sequence[tuple[str, str, str]]) -> str:
    """One line: how many files were passed over, grouped by reason."""
    if not skipped:
        return ""
    reasons = Counter(reason.split(":")[0] for _, reason, _ in skipped)
    top = ", ".join(f"{n} {r}" for r, n in reasons.most_common(4))
    more = "" if len(reasons) <= 4 else f", {len(reasons) - 4} other reasons"
    return f"skipped {len(skipped)} file(s): {top}{more}"
