"""Every review decision, kept in ``RUN/corrections.csv``: the format ``train --corrections`` reads.

Columns ``path,action,label``: ``relabel`` with the image's true class, or ``exclude`` (label
empty). Keeping an image as it is, is written as a relabel to its own label: ``train`` applies it
as "unchanged", and a restarted review shows the image as decided. The whole file is rewritten
on each decision (a temporary file renamed over it, so a reader or a crash never sees half of
it); one row per image, a later decision replacing the earlier row. Rows for paths this run does
not hold (written by hand, or by an earlier run) are kept as they are.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from headstart.core.errors import HeadstartError
from headstart.core.io import read_rows, write_rows

CORRECTIONS_FILE = "corrections.csv"
COLUMNS = ("path", "action", "label")
Action = Literal["relabel", "exclude"]
Choice = Literal["relabel", "exclude", "keep", "clear"]


@dataclass(frozen=True)
class Decision:
    """One row of corrections.csv."""

    path: str
    action: Action
    label: str = ""

    def shown_as(self, current_label: str) -> str:
        """What the page calls it: ``keep`` (a relabel to the label it has), ``exclude`` or
        ``relabel``."""
        if self.action == "relabel" and self.label == current_label:
            return "keep"
        return self.action


class DecisionBook:
    """The decisions of one review, in memory and in ``RUN/corrections.csv``, thread-safe."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / CORRECTIONS_FILE
        self._lock = threading.Lock()
        self._rows: dict[str, Decision] = {}
        for row in read_rows(self.path):
            path, action = row.get("path", ""), (row.get("action") or "").strip().lower()
            if path and action in ("relabel", "exclude"):
                self._rows.pop(path, None)  # a later row wins, and takes the later place
                self._rows[path] = Decision(path, action, (row.get("label") or "").strip())  # type: ignore[arg-type]

    def get(self, path: str) -> Decision | None:
        return self._rows.get(path)

    def __len__(self) -> int:
        return len(self._rows)

    def decide(self, path: str, choice: Choice, label: str, current_label: str) -> Decision | None:
        """Record ``choice`` for ``path`` and rewrite the file; returns the row (None: cleared).

        Args:
            path: the image as the run records it.
            choice: ``relabel`` (to ``label``), ``exclude``, ``keep`` (its ``current_label``) or
                ``clear`` (no decision).
            label: the new label of a relabel.
            current_label: the label the image trained with.
        """
        if choice == "relabel" and not label:
            raise HeadstartError("a relabel needs a label")
        decision: Decision | None
        if choice == "clear":
            decision = None
        elif choice == "exclude":
            decision = Decision(path, "exclude")
        else:
            decision = Decision(path, "relabel", current_label if choice == "keep" else label)
        with self._lock:
            self._rows.pop(path, None)
            if decision is not None:
                self._rows[path] = decision
            write_rows(self.path, COLUMNS, [[d.path, d.action, d.label] for d in self._rows.values()])
        return decision
