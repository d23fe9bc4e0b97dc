"""The run folder of a multi-label model: the single-label writer's files where they mean the same
(model, split, skipped files, duplicate groups, exclusions, log), and its own where they differ:

- ``test_predictions.csv``: path, labels (true, ``;`` between), predicted (every label above its
  threshold), subset_correct (yes/no); ``test_probabilities.npy``: one sigmoid column per class;
- ``report.html`` from ``reporting.multilabel`` (per-class AP, co-occurrence, worst images);
- ``metrics.json`` last; no confusion matrix (a label set has none).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.io import write_bytes, write_json, write_rows
from headstart.evaluation.multilabel import predict_labels
from headstart.reporting.multilabel import PREDICTIONS_CSV, PROBABILITIES_NPY, build_multilabel_report
from headstart.runs.writer import MODEL_FILE, RunWriter, TrainingRun

LABEL_SEPARATOR = ";"


def write_multilabel_predictions(
    writer: RunWriter, paths: Sequence[str], y: np.ndarray, proba: np.ndarray, metrics: dict[str, Any]
) -> None:
    """``test_predictions.csv`` and ``test_probabilities.npy`` (float32, columns in class order)."""
    classes = metrics["classes"]
    pred = predict_labels(proba, metrics["thresholds"]["values"])

    def names(row: np.ndarray) -> str:
        return LABEL_SEPARATOR.join(classes[j] for j in np.flatnonzero(row))

    rows = [
        [os.path.abspath(p), names(t), names(q), "yes" if (t.astype(int) == q).all() else "no"]
        for p, t, q in zip(paths, y, pred)
    ]
    write_rows(writer.path(PREDICTIONS_CSV), ["path", "labels", "predicted", "subset_correct"], rows)
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(proba, dtype=np.float32), allow_pickle=False)
    write_bytes(writer.path(PROBABILITIES_NPY), buffer.getvalue())


def _report(writer: RunWriter, metrics: dict[str, Any]) -> float:
    t0 = time.perf_counter()

    def draw() -> None:
        path = build_multilabel_report(writer.path("."), metrics)
        size = path.stat().st_size / 1e6
        writer(f"report: {writer.shown(path)} ({size:.1f} MB, {time.perf_counter() - t0:.1f}s)")

    writer._guarded("report", draw)
    return time.perf_counter() - t0


def write_multilabel_run(writer: RunWriter, run: TrainingRun, save_model: Callable[[Path], Path]) -> None:
    """Every file of a multi-label training run, the model first and ``metrics.json`` last."""
    timings = run.metrics["timings"]
    if writer.run_dir is None:
        timings["total"] = time.perf_counter() - run.started
        return
    t = time.perf_counter()
    save_model(writer.path(MODEL_FILE))
    write_rows(writer.path("split.csv"), ["path", "label", "split"], run.split_rows)
    write_rows(writer.path("skipped.csv"), ["path", "reason", "stage"], run.skipped)
    write_multilabel_predictions(writer, run.test.paths, run.test.y, run.test.proba, run.metrics)
    writer._write_data_checks(run)
    timings["save"] = time.perf_counter() - t
    timings["report"] = _report(writer, run.metrics)
    timings["total"] = time.perf_counter() - run.started
    write_json(writer.path("metrics.json"), run.metrics)
    writer.commit()
    writer(f"done in {timings['total']:.1f}s: {writer.path(MODEL_FILE)}, {writer.path('metrics.json')}")


def write_multilabel_evaluation(
    writer: RunWriter,
    metrics: dict[str, Any],
    skipped: Sequence[tuple[str, str, str]],
    paths: Sequence[str],
    y: np.ndarray,
    proba: np.ndarray,
) -> None:
    """``evaluate``'s files for a multi-label model: metrics, skipped files, predictions, report."""
    if writer.run_dir is None:
        return
    write_json(writer.path("metrics.json"), metrics)
    write_rows(writer.path("skipped.csv"), ["path", "reason", "stage"], skipped)
    write_multilabel_predictions(writer, paths, y, proba, metrics)
    _report(writer, metrics)
