"""``headstart doctor``'s run: diagnose a data set, then write its files, each once and atomically.

The run folder holds ``doctor.json`` (everything found, with timings), ``doctor.html`` (the same,
to look at), ``exclude.txt`` (ready for ``train``'s ``exclude``), ``corrections.csv`` (every
suggestion as an editable proposal for ``train --corrections``: a likely wrong label a relabel to
the suggested class, a bad file or copy an exclusion) and ``label_ranking.csv`` (every image by
self-confidence, most suspicious first).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from headstart.core.io import write_json, write_rows, write_text
from headstart.data.corrections import Correction, proposed_corrections, write_corrections
from headstart.data.discovery import Dataset, check_out_dir
from headstart.doctor.diagnosis import diagnose
from headstart.doctor.duplicates import NEAR_COSINE
from headstart.doctor.report import LABEL_RANKING_COLUMNS, CheckReport, report_dict
from headstart.models.backbones import DEFAULT_BACKBONE
from headstart.reporting.doctor_page import write_doctor_page

EXCLUDE_HEADER = (
    "# headstart doctor: files to leave out. Delete the lines you disagree with, then\n"
    "# headstart train DATA --exclude exclude.txt\n"
)


CORRECTIONS_FILE = "corrections.csv"


def run_doctor(
    data: str | Path | Dataset,
    out_dir: str | Path,
    backbone: str = DEFAULT_BACKBONE,
    weights: str | Path | None = None,
    labels_from: str = "auto",
    cache_dir: str | Path | None = None,
    engine: str = "auto",
    folds: int = 5,
    seed: int = 0,
    near_cosine: float = NEAR_COSINE,
    verbose: bool = True,
) -> tuple[dict[str, Any], list[str]]:
    """Diagnose ``data`` and write the doctor's files into ``out_dir``.

    Args are those of ``headstart.doctor.diagnose``. Returns the ``doctor.json`` document and the
    summary lines to show the user.
    """
    started = time.perf_counter()
    check_out_dir(out_dir, data)
    report = diagnose(
        data,
        backbone=backbone,
        weights=weights,
        labels_from=labels_from,
        cache_dir=cache_dir,
        engine=engine,
        folds=folds,
        seed=seed,
        near_cosine=near_cosine,
        verbose=verbose,
    )
    root = data.root if isinstance(data, Dataset) else data
    settings = {
        "data": str(root),
        "backbone": backbone,
        "folds": folds,
        "seed": seed,
        "near_cosine": near_cosine,
    }
    doc = write_doctor_files(report, out_dir, settings, started)
    return doc, summary_lines(report, doc, Path(out_dir))


def write_doctor_files(
    report: CheckReport,
    out_dir: str | Path,
    settings: dict[str, Any] | None = None,
    started: float | None = None,
) -> dict[str, Any]:
    """``doctor.html``, ``exclude.txt``, ``label_ranking.csv``, then ``doctor.json`` last (so its
    timings include the writing); each file written once. Returns the ``doctor.json`` document.

    Args:
        started: ``time.perf_counter()`` when the run began; given, the timings get a ``total``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    doc = report_dict(report, settings)
    write_doctor_page(doc, out / "doctor.html")
    write_text(out / "exclude.txt", exclude_text(doc), errors="surrogateescape")
    write_corrections(out / CORRECTIONS_FILE, doctor_corrections(doc))
    write_rows(
        out / "label_ranking.csv",
        LABEL_RANKING_COLUMNS,
        [[r[k] for k in LABEL_RANKING_COLUMNS] for r in report.label_ranking],
    )
    timings = doc["timings"]
    timings["write"] = time.perf_counter() - t
    if started is not None:
        timings["total"] = time.perf_counter() - started
    write_json(out / "doctor.json", doc)
    return doc


def doctor_corrections(doc: dict[str, Any]) -> list[Correction]:
    """``corrections.csv``: every suggestion as a proposal (``train --corrections``; edit it first)."""
    issues = [(r["path"], r["suggested_label"]) for r in doc["label_issues"]]
    return proposed_corrections(issues, [e["path"] for e in doc["exclude_suggested"]])


def exclude_text(doc: dict[str, Any]) -> str:
    """``exclude.txt``: each suggested file on its own line, under a comment giving the reason."""
    lines = [f"# {e['reason']}\n{e['path']}\n" for e in doc["exclude_suggested"]]
    return EXCLUDE_HEADER + "".join(lines)


def summary_lines(report: CheckReport, doc: dict[str, Any], out: Path) -> list[str]:
    """What the doctor prints: the data check's lines, then where to look next."""
    s = doc["summary"]
    total = doc["timings"].get("total", sum(doc["timings"].values()))
    return report.summary_lines() + [
        f"  {s['bad_files']} unusable file(s), {s['warnings']} warning(s) (tiny, extreme aspect, huge)",
        f"  {s['label_issues']} likely label issue(s), most suspicious first in {out / 'doctor.html'}",
        f"  suggested exclusions: {len(doc['exclude_suggested'])} in {out / 'exclude.txt'} (train --exclude)",
        f"  every suggestion as an editable proposal: {out / CORRECTIONS_FILE} (train --corrections)",
        f"doctor done in {total:.1f}s: {out / 'doctor.json'}",
    ]
