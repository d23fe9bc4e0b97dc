"""The full doctor: every check on a data set, as one ``CheckReport``.

Small transfer-learning data sets are scraped and hand-sorted, and their flaws decide the
accuracy more than the backbone does. ``diagnose`` looks at every file (decoding it, a
perceptual hash), reuses the cached backbone features (exact duplicates by content hash, near
duplicates by feature cosine similarity, label issues by out-of-fold probabilities: the
confident learning, through cleanlab). Nothing here writes to the user's data: every check only reads.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from headstart.core.progress import ConsoleProgress, NullProgress
from headstart.data.discovery import Dataset, discover
from headstart.doctor.duplicates import NEAR_COSINE, find_duplicates
from headstart.doctor.files import FileCheck, check_files
from headstart.doctor.labels import LABEL_NEIGHBOURS, LabelFindings, label_records
from headstart.doctor.report import BadFile, CheckReport
from headstart.features.extractor import ExtractionResult, build_extractor


def diagnose(
    data: str | Path | Dataset,
    backbone: str | None = None,
    weights: str | Path | None = None,
    labels_from: str = "auto",
    cache_dir: str | Path | None = None,
    engine: str = "auto",
    batch_size: int = 8,
    workers: int | None = None,
    folds: int = 5,
    seed: int = 0,
    near_cosine: float = NEAR_COSINE,
    verbose: bool = True,
) -> CheckReport:
    """Every check: file health, exact/near duplicates, label issues, class balance.

    Args:
        data: a folder or CSV (as for ``discover``), or a discovered ``Dataset``.
        backbone, weights, cache_dir, engine, batch_size, workers: feature extraction, as for
            ``headstart.features.extractor.build_extractor``.
        labels_from: how to read labels (``auto``, ``folder``, ``filename`` or ``csv``).
        folds, seed: the cross-validation behind the label check.
        near_cosine: feature cosine similarity from which two images are near duplicates.
        verbose: print progress lines to stderr.
    """
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    dataset = data if isinstance(data, Dataset) else discover(data, labels_from)
    seconds["discover"] = time.perf_counter() - t

    t = time.perf_counter()
    checks = check_files(dataset.paths, workers, ConsoleProgress() if verbose else NullProgress())
    seconds["check_files"] = time.perf_counter() - t

    t = time.perf_counter()
    extractor = build_extractor(backbone, weights, cache_dir, engine, batch_size, workers, verbose)
    result = extractor.extract(dataset.paths)
    seconds["features"] = time.perf_counter() - t

    usable, bad = _usable_rows(dataset, checks, result)
    samples = [dataset.samples[i] for i in usable]
    features = result.features[usable]

    t = time.perf_counter()
    groups, nn_idx, nn_sim, notes = find_duplicates(
        [result.hashes[i] for i in usable],
        features,
        [checks[i].dhash for i in usable],
        near_cosine,
        neighbours=LABEL_NEIGHBOURS,
    )
    seconds["duplicates"] = time.perf_counter() - t
    counts = dict(sorted(Counter(s.label for s in samples).items()))
    report = CheckReport(samples, groups, counts, bad, notes=notes, dataset=dataset)

    t = time.perf_counter()
    _add_label_findings(report, label_records(samples, features, nn_idx, nn_sim, folds, seed))
    seconds["label_issues"] = time.perf_counter() - t
    report.seconds = seconds
    return report


def _add_label_findings(report: CheckReport, labels: LabelFindings | None) -> None:
    """The label check's findings into the report (None: the labels could not be cross-validated)."""
    if labels is not None:
        report.label_ranking, report.label_issues = labels.ranking, labels.issues
        report.confused_pairs = labels.confused_pairs
        report.cross_validated = True


def _usable_rows(
    dataset: Dataset, checks: Sequence[FileCheck], result: ExtractionResult
) -> tuple[list[int], list[BadFile]]:
    """Which samples every later check uses, and the bad-file records: errors (discovery,
    decoding) leave a file out; warnings (tiny, extreme aspect, huge) keep it in."""
    bad: list[BadFile] = [
        {"path": p, "reason": r, "severity": "error", "stage": "discovery"} for p, r in dataset.ignored
    ]
    usable = []
    for i, (sample, check) in enumerate(zip(dataset.samples, checks)):
        reason = check.problem if check.severity == "error" else result.errors.get(i)
        if reason:
            bad.append({"path": sample.path, "reason": reason, "severity": "error", "stage": "decode"})
            continue
        if check.problem:
            bad.append(
                {
                    "path": sample.path,
                    "reason": check.problem,
                    "severity": "warning",
                    "stage": "check",
                    "width": check.width,
                    "height": check.height,
                }
            )
        usable.append(i)
    return usable, bad
