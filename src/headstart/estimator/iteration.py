"""The loop after the first model, as ``fit`` sees it: corrections applied to the discovered
data (``data.corrections``), and an earlier run's split kept (``runs.recipe``).

Kept apart from ``classifier.py``: ``fit`` calls these two functions and nothing else here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from headstart.data.corrections import apply_corrections, read_corrections, write_applied
from headstart.data.discovery import Dataset, Sample
from headstart.runs.recipe import recorded_split
from headstart.runs.writer import RunWriter

APPLIED_FILE = "corrections_applied.csv"


def corrected_data(
    dataset: Dataset, corrections: str | Path | None, writer: RunWriter
) -> tuple[Dataset, list[Sample]]:
    """``dataset`` with the corrections file applied (DATA untouched) and the samples it left out;
    what was applied, and every row that matched nothing, listed in ``RUN/corrections_applied.csv``."""
    if corrections is None:
        return dataset, []
    run_dir, log = writer.run_dir, writer
    corrected, left_out, records = apply_corrections(dataset, read_corrections(corrections))
    counts = {status: sum(r.status == status for r in records) for status in ("applied", "unmatched")}
    relabelled = sum(r.status == "applied" and r.correction.action == "relabel" for r in records)
    where = f" (listed in {writer.shown(run_dir / APPLIED_FILE)})" if run_dir is not None else ""
    log(
        f"corrections: {relabelled} relabelled, {len(left_out)} excluded{where}"
        + (f"; warning: {counts['unmatched']} row(s) matched no image" if counts["unmatched"] else "")
    )
    if run_dir is not None:
        write_applied(run_dir / APPLIED_FILE, records)
    return corrected, left_out


def kept_splits(
    split_from: str | Path | None, dataset: Dataset, samples: Sequence[Sample]
) -> list[str | None] | None:
    """The split ``split_from`` (a run folder) recorded for each sample still there (None for an
    image it did not have); None without ``split_from``. Matched by path relative to the data."""
    if split_from is None:
        return None
    recorded = recorded_split(split_from)
    return [recorded.get(os.path.normpath(dataset.relative(s.path))) for s in samples]


__all__ = ["APPLIED_FILE", "corrected_data", "kept_splits"]
