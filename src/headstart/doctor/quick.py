"""The quick data check ``train`` runs on the features it extracts anyway, and what it leaves in
train's run folder (the ``data_checks`` summary, ``duplicate_groups.csv``, ``excluded.csv``)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from headstart.data.discovery import Sample
from headstart.doctor.duplicates import NEAR_COSINE, find_duplicates
from headstart.doctor.report import CheckReport
from headstart.features.store import FeatureStore


def quick_check(
    samples: Sequence[Sample],
    features: np.ndarray | FeatureStore,
    content_hashes: Sequence[str | None],
    bad_files: Sequence[tuple[str, str]] = (),
    near_cosine: float = NEAR_COSINE,
) -> CheckReport:
    """The cheap checks train runs: duplicates from hashes and features it already has."""
    t = time.perf_counter()
    groups, _, _, notes = find_duplicates(content_hashes, features, None, near_cosine, neighbours=0)
    report = CheckReport(
        list(samples),
        groups,
        dict(sorted(Counter(s.label for s in samples).items())),
        [{"path": p, "reason": r, "severity": "error"} for p, r in bad_files],
        notes=notes,
    )
    report.seconds["duplicates"] = time.perf_counter() - t
    return report


def check_summary(
    report: CheckReport, plain_splits: Sequence[str], splits: Sequence[str], excluded: Sequence[Sample] = ()
) -> dict[str, Any]:
    """The ``data_checks`` section of train's metrics.json: counts, and which groups were merged
    (their members would have been split apart by the plain seeded split)."""
    merged = [
        n for n, g in enumerate(report.groups, start=1) if len({plain_splits[i] for i in g.members}) > 1
    ]
    leaks = [n for n, g in enumerate(report.groups, start=1) if len({splits[i] for i in g.members}) > 1]
    return {
        "exact_duplicate_groups": sum(g.kind == "exact" for g in report.groups),
        "near_duplicate_groups": sum(g.kind == "near" for g in report.groups),
        "images_in_duplicate_groups": sum(len(g.members) for g in report.groups),
        "cross_class_groups": len(report.conflicts()),
        "groups_merged_into_one_split": merged,
        "groups_across_splits": leaks,
        "notes": report.notes,
        "near_cosine": NEAR_COSINE,
        "bad_files": len(report.bad_files),
        "class_counts": report.class_counts,
        "imbalance": report.imbalance(),
        "excluded": len(excluded),
        "seconds": report.seconds,
    }
