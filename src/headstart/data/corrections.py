"""Corrections: relabel or leave out images by a list, without touching the data folder.

The file is a CSV with the columns ``path,action,label``: ``action`` is ``relabel`` (then
``label`` is the image's true class) or ``exclude`` (``label`` may stay empty). ``path`` is
relative to the data folder or absolute, matched as ``--exclude`` matches its entries
(``data.exclusions``). The review app and the doctor write this format; ``train --corrections``
reads it. A later row for the same image wins, so a file appended to while reviewing reads right.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from headstart.core.errors import HeadstartError
from headstart.core.io import unprotect_cell, write_rows
from headstart.data.discovery import Dataset, Sample

Action = Literal["relabel", "exclude"]
Status = Literal["applied", "unmatched", "unchanged"]
ACTIONS: tuple[Action, ...] = ("relabel", "exclude")
COLUMNS = ("path", "action", "label")
APPLIED_COLUMNS = ("path", "action", "label", "old_label", "status")


@dataclass(frozen=True)
class Correction:
    """One row of a corrections file."""

    path: str
    action: Action
    label: str = ""


@dataclass(frozen=True)
class AppliedCorrection:
    """What became of one correction: ``applied`` (with the label it replaced) or ``unmatched``."""

    correction: Correction
    old_label: str
    status: Status


def read_corrections(path: str | Path) -> list[Correction]:
    """The rows of a corrections CSV, checked: a known action, and a label for every relabel."""
    path = Path(path).expanduser()
    try:
        text = path.read_bytes().decode("utf-8-sig", "surrogateescape")
    except OSError as e:
        raise HeadstartError(f"cannot read --corrections file {path}: {e.strerror}") from e
    rows = list(csv.reader(io.StringIO(text)))
    header = [c.strip().lower() for c in rows[0]] if rows else []
    if not {"path", "action"} <= set(header):
        raise HeadstartError(f"--corrections {path} needs a header with the columns {','.join(COLUMNS)}")
    col = {name: header.index(name) for name in COLUMNS if name in header}
    out = []
    for number, row in enumerate(rows[1:], start=2):
        cells = {name: unprotect_cell(row[i]).strip() if i < len(row) else "" for name, i in col.items()}
        if not cells.get("path"):
            continue
        action = cells.get("action", "").lower()
        if action not in ACTIONS:
            raise HeadstartError(
                f"--corrections {path} line {number}: action must be relabel or exclude (got {action!r})"
            )
        if action == "relabel" and not cells.get("label"):
            raise HeadstartError(f"--corrections {path} line {number}: a relabel needs a label")
        out.append(Correction(cells["path"], action, cells.get("label", "")))  # type: ignore[arg-type]
    return out


def write_corrections(path: str | Path, corrections: Sequence[Correction]) -> Path:
    """A corrections CSV, atomically (names that start like a formula are protected)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_rows(path, COLUMNS, [(c.path, c.action, c.label) for c in corrections])


def proposed_corrections(
    label_issues: Sequence[tuple[str, str]], exclusions: Sequence[str]
) -> list[Correction]:
    """The doctor's suggestions as corrections the user may edit: each likely wrong label
    ``(path, suggested label)`` a relabel, each other suggested exclusion (an unreadable file,
    a copy across classes or splits) an exclude; one row per image, relabels first."""
    out = [Correction(path, "relabel", label) for path, label in label_issues]
    seen = {c.path for c in out}
    out += [Correction(path, "exclude") for path in dict.fromkeys(exclusions) if path not in seen]
    return out


def apply_corrections(
    dataset: Dataset, corrections: Sequence[Correction]
) -> tuple[Dataset, list[Sample], list[AppliedCorrection]]:
    """``dataset`` with the relabels and exclusions applied (the files are untouched).

    Returns the corrected data set, the samples left out, and one record per correction (the
    last row for an image wins; a row that matches no image is ``unmatched``).
    """
    index: dict[str, int] = {}
    for i, s in enumerate(dataset.samples):
        for key in (s.path, os.path.abspath(s.path), dataset.relative(s.path)):
            index.setdefault(os.path.normpath(key), i)
    final: dict[int, Correction] = {}
    records: list[AppliedCorrection] = []
    for c in corrections:
        candidates = (c.path, os.path.abspath(c.path), os.path.join(str(dataset.root), c.path))
        hit = next((index[k] for k in map(os.path.normpath, candidates) if k in index), None)
        if hit is None:
            records.append(AppliedCorrection(c, "", "unmatched"))
        else:
            final.pop(hit, None)  # re-inserted: the order of the applied list is the file's
            final[hit] = c
    samples, left_out = list(dataset.samples), []
    for i, c in final.items():
        old = samples[i].label
        if c.action == "exclude":
            left_out.append(samples[i])
        elif c.label != old:
            labels = tuple(sorted(c.label.split(";"))) if dataset.multi_label else None
            samples[i] = replace(samples[i], label=c.label, labels=labels)
        status: Status = "unchanged" if c.action == "relabel" and c.label == old else "applied"
        records.append(AppliedCorrection(c, old, status))
    dropped = {id(s) for s in left_out}
    kept = [s for s in samples if id(s) not in dropped]
    corrected = Dataset(dataset.root, kept, dataset.kind, list(dataset.ignored), dataset.multi_label)
    return corrected, left_out, records


def write_applied(path: Path, records: Sequence[AppliedCorrection]) -> Path:
    """``corrections_applied.csv``: every correction and what became of it."""
    rows = [
        (r.correction.path, r.correction.action, r.correction.label, r.old_label, r.status) for r in records
    ]
    return write_rows(path, APPLIED_COLUMNS, rows)


__all__ = [
    "AppliedCorrection",
    "Correction",
    "apply_corrections",
    "proposed_corrections",
    "read_corrections",
    "write_applied",
    "write_corrections",
]
