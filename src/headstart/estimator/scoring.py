"""``ImageClassifier.evaluate`` of a single-label model: metrics of a fitted model on labelled
images, computed from its typed value (``FittedModel``), written by the run writer."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.errors import HeadstartError
from headstart.core.io import summarize_skips
from headstart.data.discovery import Dataset, Sample
from headstart.estimator.fitted import FittedModel
from headstart.estimator.fitting import build_metrics, score
from headstart.estimator.reliability import Reliability, reliability_sections
from headstart.evaluation.calibration import apply_temperature
from headstart.features.extractor import ExtractionResult
from headstart.runs.writer import Predictions, ReportSettings, RunWriter


def evaluation_samples(split: dict[str, Any], dataset: Dataset, wanted: str) -> tuple[list[Sample], str]:
    """The saved split's images (``split``: the model's split record) when ``dataset`` is the
    training data, else all of them; and what they are."""
    same_data = split.get("root") and Path(split["root"]) == dataset.root
    if wanted in ("auto", "test", "val", "train") and same_data:
        name = "test" if wanted == "auto" else wanted
        chosen = {f for f, _label, g in split.get("files", []) if g == name}
        if chosen:
            return [s for s in dataset.samples if dataset.relative(s.path) in chosen], f"saved {name} split"
    return list(dataset.samples), "all"


def known_samples(
    classes: list[str], dataset: Dataset, samples: list[Sample]
) -> tuple[list[Sample], list[tuple[str, str, str]]]:
    """Samples with a class the model knows; the others (and discovery's leftovers) skipped."""
    skipped = [(p, r, "discovery") for p, r in dataset.ignored]
    known = [s for s in samples if s.label in classes]
    skipped += [
        (s.path, f"label '{s.label}' unknown to the model", "labels")
        for s in samples
        if s.label not in classes
    ]
    if not known:
        raise HeadstartError(
            f"no images in {dataset.root} carry one of the model's classes ({', '.join(classes)})"
        )
    return known, skipped


def evaluate_single_label(
    fitted: FittedModel,
    info: dict[str, Any],
    temperature: float,
    reliability: Reliability,
    dataset: Dataset,
    evaluated: tuple[list[Sample], str],
    extract: Callable[[list[str]], ExtractionResult],
    writer: RunWriter,
    top_k: int,
    report: ReportSettings,
) -> dict[str, Any]:
    """Accuracy, top-k, per-class scores and the reliability sections on ``evaluated`` (the
    samples and what they are), at the model's ``temperature`` and the reject threshold in
    force (``reliability``); ``info``: the model's metrics entries."""
    t0 = time.perf_counter()
    samples, used = evaluated
    known, skipped = known_samples(fitted.classes, dataset, samples)
    result = extract([s.path for s in known])
    skipped += [(known[i].path, r, "decode") for i, r in result.errors.items()]
    ok = result.ok
    y = np.array([fitted.classes.index(s.label) for s, good in zip(known, ok) if good])
    raw = fitted.head.predict_proba(result.features[ok])
    proba = apply_temperature(raw, temperature)
    scores = score(y, proba, fitted.classes, top_k)
    timings = {
        "extract": result.seconds.get("total", 0.0),
        "extract_images_per_s": result.images_per_s,
        "total": time.perf_counter() - t0,
    }
    data_info = {"source": str(dataset.root), "kind": dataset.kind, "n_skipped": len(skipped)}
    metrics = build_metrics(scores, "test", used, info, data_info, timings)
    metrics.update(reliability_sections(reliability, y, raw, used, result.features[ok]))
    paths = [s.path for s, good in zip(known, ok) if good]
    with writer:  # the evaluation's log lines, while it writes its folder
        if skipped:
            writer(summarize_skips(skipped))
        writer(
            f"accuracy {scores['accuracy']:.4f} on {scores['n']} images ({used}); "
            f"top-{scores['top_k']} {scores['top_k_accuracy']:.4f}"
        )
        writer.write_evaluation(metrics, skipped, Predictions(paths, y, proba, result.features[ok]), report)
    return metrics
