"""Leaving files out of a data set by a list (``--exclude``): the files themselves are untouched.

The list is a text file of paths (one a line, ``#`` comments), a CSV with a ``path`` column, or
a ``doctor.json`` (its ``exclude_suggested`` list), so the doctor's output feeds ``train`` as is.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

from headstart.core.errors import HeadstartError
from headstart.core.io import unprotect_cell
from headstart.data.discovery import Dataset, Sample


def read_exclude_list(path: str | Path) -> list[str]:
    """Paths to leave out, from a text file (one per line, ``#`` comments), a CSV with a
    ``path`` column, or a ``doctor.json`` (its ``exclude_suggested`` list)."""
    path = Path(path).expanduser()
    try:
        text = path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as e:
        raise HeadstartError(f"cannot read --exclude file {path}: {e.strerror}") from e
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
            return [e["path"] for e in doc["exclude_suggested"]]
        except (ValueError, KeyError, TypeError) as e:
            raise HeadstartError(
                f"--exclude {path} is not a doctor.json (no 'exclude_suggested' list); give a text file of paths"
            ) from e
    if path.suffix.lower() == ".csv":
        rows = list(csv.reader(text.splitlines()))
        header = [c.strip().lower() for c in rows[0]] if rows else []
        if "path" not in header:
            raise HeadstartError(f"--exclude CSV {path} needs a 'path' column")
        col = header.index("path")
        return [unprotect_cell(r[col]) for r in rows[1:] if len(r) > col and r[col].strip()]
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def exclude_samples(dataset: Dataset, entries: Sequence[str]) -> tuple[Dataset, list[Sample], list[str]]:
    """Drop listed files from ``dataset`` (the files themselves are untouched).

    An entry matches a sample's path as given, as an absolute path, or relative to the data root.
    Returns the smaller data set, the samples left out, and entries that matched nothing.
    """
    keys: dict[str, int] = {}
    for i, s in enumerate(dataset.samples):
        for key in (s.path, os.path.abspath(s.path), dataset.relative(s.path)):
            keys.setdefault(os.path.normpath(key), i)
    drop: set[int] = set()
    unmatched = []
    for entry in entries:
        candidates = [entry, os.path.abspath(entry), os.path.join(str(dataset.root), entry)]
        hit = next((keys[os.path.normpath(c)] for c in candidates if os.path.normpath(c) in keys), None)
        if hit is None:
            unmatched.append(entry)
        else:
            drop.add(hit)
    kept = [s for i, s in enumerate(dataset.samples) if i not in drop]
    left_out = [s for i, s in enumerate(dataset.samples) if i in drop]
    return (
        Dataset(dataset.root, kept, dataset.kind, list(dataset.ignored), dataset.multi_label),
        left_out,
        unmatched,
    )
