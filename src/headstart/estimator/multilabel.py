"""``ImageClassifier.fit`` and ``evaluate`` on multi-label data (several labels per image).

The single-label flow's discovery, feature extraction, data check and run writer are reused;
what differs is here: targets are multi-hot rows, the split is iterative stratification
(every label in train), the head is one-vs-rest logistic regression (``models.multilabel``),
fine-tuning trains a sigmoid/BCE head (``training.multilabel``), per-class thresholds are chosen
on validation (F1), and the metrics are mAP, per-class AP, micro/macro F1 and subset accuracy.

The estimator keeps ``multi_label_`` (True) and ``thresholds_`` (one per class), saved in the
bundle's ``multi_label`` entry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.errors import HeadstartError, ParameterError
from headstart.core.io import summarize_skips
from headstart.data.discovery import Dataset, Sample, check_out_dir, discover
from headstart.data.multilabel import assign_multilabel_splits, label_names, make_multilabel_split, multi_hot
from headstart.doctor import CheckReport, check_summary, quick_check
from headstart.estimator.finetune import FineTuneJob, _tuned_backbone
from headstart.estimator.fitting import (
    Log,
    Split,
    Stopwatch,
    Usable,
    data_info,
    extraction_info,
    nonempty_split,
    now_utc,
    split_record,
)
from headstart.evaluation.multilabel import (
    choose_thresholds,
    co_occurrence,
    labels_above,
    multilabel_answer,
    multilabel_metrics,
)
from headstart.features.extractor import ExtractionResult
from headstart.models.backbones import Backbone
from headstart.models.bundle import library_versions
from headstart.models.card import ModelCard
from headstart.models.multilabel import MULTILABEL_HEAD, MultiLabelLogisticHead
from headstart.runs.multilabel import write_multilabel_evaluation, write_multilabel_run
from headstart.runs.writer import Predictions, RunWriter, TrainingRun
from headstart.training.loop import settings_fingerprint
from headstart.training.multilabel import MultiLabelFineTuner

# The estimator these functions work on: an ImageClassifier (not imported: it imports this module).
ImageClassifier = Any

THRESHOLD_METRIC = "f1"


def as_multilabel(usable: Usable) -> Usable:
    """``usable`` with the label names as classes and multi-hot rows as ``y``."""
    classes = label_names(usable.samples)
    if len(classes) < 2:
        raise HeadstartError(f"multi-label data needs at least two labels (found: {', '.join(classes)})")
    return replace(usable, classes=classes, y=multi_hot(usable.samples, classes))


def check_multilabel_data(usable: Usable, log: Log) -> CheckReport:
    """The quick data check (duplicates, conflicting label sets, leaks), with images counted per
    LABEL (an image counts once for each of its labels), so imbalance is judged between labels."""
    bad = [(p, r) for p, r, _ in usable.skipped]
    checks = quick_check(usable.samples, usable.features, usable.hashes, bad)
    checks.class_counts = {name: int(n) for name, n in zip(usable.classes, usable.y.sum(axis=0))}
    for line in checks.summary_lines():
        log(line)
    return checks


def multilabel_split(clf: ImageClassifier, usable: Usable, checks: Any) -> Split:
    """Iterative stratification (predefined splits as given); train and val must not be empty."""
    groups = checks.group_indices if checks is not None else None
    names, method = assign_multilabel_splits(usable.samples, usable.classes, clf.split, clf.seed, groups)
    return nonempty_split(names, method)


@dataclass
class MultiLabelModel:
    """What fitting produced: backbone, head, thresholds, and the evaluated split's probabilities."""

    backbone: Backbone
    head: MultiLabelLogisticHead
    thresholds: np.ndarray
    proba: np.ndarray
    fit_info: dict[str, Any]
    finetune: dict[str, Any] | None = None


def fit_probe(clf: ImageClassifier, usable: Usable, split: Split) -> MultiLabelModel:
    """The one-vs-rest head on train features (C chosen on val), thresholds on val."""
    head = MultiLabelLogisticHead(**clf._head_params())
    tr, va = split.mask("train"), split.mask("val")
    x, y = usable.features, usable.y
    info = head.fit(x[tr], y[tr], x[va], y[va], len(usable.classes))
    thresholds = choose_thresholds(y[va], head.val_proba, THRESHOLD_METRIC)
    proba = head.predict_proba(x[split.mask(split.evaluated_on)])
    return MultiLabelModel(clf.backbone_, head, thresholds, proba, info)


def finetune_multilabel(
    clf: ImageClassifier,
    job: FineTuneJob,
    probe: MultiLabelModel,
    usable: Usable,
    split: Split,
    clock: Stopwatch,
) -> MultiLabelModel:
    """Backbone and head trained end to end with BCE; thresholds chosen again on val."""
    paths = [s.path for s in usable.samples]

    def items(name: str) -> list[tuple[str, int]]:
        """(path, row) of the split's images: the row indexes the multi-hot targets ``usable.y``."""
        return [(paths[i], i) for i, g in enumerate(split.names) if g == name]

    train, val = items("train"), items("val")
    extra = {"backbone": probe.backbone.key, "val": len(val), "classes": usable.classes, "multi_label": True}
    tuner = MultiLabelFineTuner(usable.y, job.settings, job.run_dir, job.verbose, job.on_epoch_end)
    with clock("finetune"):
        result = tuner.fit(
            probe.backbone.model,
            probe.backbone.data_config,
            probe.head,
            train,
            val,
            len(usable.classes),
            resume=job.resume,
            deadline=job.deadline,
            fingerprint=settings_fingerprint(job.settings, train, extra),
        )
    info = {**result.info, "evaluated_on": split.evaluated_on, "history": result.history}
    if result.info.get("probe_kept"):
        return replace(probe, finetune=info)
    head = MultiLabelLogisticHead.restore(result.head_arrays, probe.head.params())
    with clock("finetune_evaluate"):
        val_proba = tuner.predict_proba(val, probe.backbone.data_config)
        proba = tuner.predict_proba(items(split.evaluated_on), probe.backbone.data_config)
    thresholds = choose_thresholds(usable.y[split.mask("val")], val_proba, THRESHOLD_METRIC)
    backbone = _tuned_backbone(probe.backbone, result, clf.unfreeze)
    return MultiLabelModel(backbone, head, thresholds, proba, probe.fit_info, info)


def fit_multilabel(
    clf: ImageClassifier,
    prepared: tuple[Dataset, list[Sample], Usable, ExtractionResult],
    writer: RunWriter,
    clock: Stopwatch,
    job: FineTuneJob | None,
) -> None:
    """Everything of ``fit`` after feature extraction, for multi-label data (``job``: fine-tuning)."""
    dataset, excluded, usable, result = prepared
    if clf.head not in ("logistic", MULTILABEL_HEAD):
        raise ParameterError(
            "head", "multi-label data takes the one-vs-rest logistic head: use head='logistic'"
        )
    usable = as_multilabel(usable)
    checks = None
    if clf.check_data:
        with clock("data_check"):
            checks = check_multilabel_data(usable, writer)
    with clock("split"):
        split = multilabel_split(clf, usable, checks)
    with clock("fit_head"):
        model = fit_probe(clf, usable, split)
    writer(f"multi-label: {len(usable.classes)} labels, one-vs-rest logistic head (C={model.head.C})")
    if job is not None:
        model = finetune_multilabel(clf, job, model, usable, split, clock)
    _record(clf, prepared, usable, split, checks, model, clock, writer)
    evaluated = split.mask(split.evaluated_on)
    test = Predictions(clf.test_["paths"], clf.test_["y"], model.proba, usable.features[evaluated])
    run = TrainingRun(
        clf.metrics_,
        dataset,
        clf.split_["files"],
        split.names,
        usable.skipped,
        test,
        clock.started,
        checks,
        excluded,
    )
    write_multilabel_run(writer, run, clf.save)


def _record(
    clf: ImageClassifier,
    prepared: tuple[Dataset, list[Sample], Usable, ExtractionResult],
    usable: Usable,
    split: Split,
    checks: Any,
    model: MultiLabelModel,
    clock: Stopwatch,
    log: Log,
) -> None:
    """The fitted state of a multi-label estimator, its metrics and the log line of its scores."""
    dataset, excluded, _, result = prepared
    evaluated = split.mask(split.evaluated_on)
    y_eval = usable.y[evaluated]
    scores = multilabel_metrics(y_eval, model.proba, model.thresholds, usable.classes)
    clf.probe_backbone_, clf.backbone_, clf.head_ = clf.backbone_, model.backbone, model.head
    clf.classes_, clf.strategy_ = usable.classes, clf.strategy
    clf.multi_label_, clf.thresholds_ = True, model.thresholds
    clf.split_ = split_record(dataset, usable, split, clf.split, clf.seed)
    clf.extraction_, clf.dataset_, clf.checks_ = result, dataset, checks
    clf.metrics_ = _metrics(clf, scores, split, usable, dataset, model, result, clock)
    if checks is not None:
        plain = make_multilabel_split(usable.y, clf.split, clf.seed)
        clf.metrics_["data_checks"] = check_summary(checks, plain, split.names, excluded)
    if model.finetune is not None:
        clf.finetune_, clf.history_ = model.finetune, model.finetune["history"]
    paths = [s.path for s, m in zip(usable.samples, evaluated) if m]
    clf.test_ = {"paths": paths, "y": y_eval, "proba": model.proba}
    log(
        f"{split.evaluated_on} mAP {scores['mAP']:.4f}, macro F1 {scores['macro_f1']:.4f}, micro F1 "
        f"{scores['micro_f1']:.4f}, subset accuracy {scores['subset_accuracy']:.4f} on {scores['n']} images"
    )


def summary(scores: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json``'s ``test`` (or ``val``) entry of a multi-label model."""
    keys = ("mAP", "micro_f1", "macro_f1", "subset_accuracy", "hamming_accuracy", "log_loss", "n")
    return {k: scores[k] for k in keys}


def _metrics(
    clf: ImageClassifier,
    scores: dict[str, Any],
    split: Split,
    usable: Usable,
    dataset: Dataset,
    model: MultiLabelModel,
    result: ExtractionResult,
    clock: Stopwatch,
) -> dict[str, Any]:
    data = {
        **data_info(dataset, result, usable, clf.split_),
        "label_counts": {
            name: {g: int(usable.y[split.mask(g), i].sum()) for g in ("train", "val", "test")}
            for i, name in enumerate(usable.classes)
        },
    }
    out: dict[str, Any] = {
        split.evaluated_on: summary(scores),
        "evaluated_on": split.evaluated_on,
        "multi_label": True,
        "classes": usable.classes,
        "per_class": scores["per_class"],
        "thresholds": {"metric": THRESHOLD_METRIC, "chosen_on": "val", "values": model.thresholds.tolist()},
        "co_occurrence": co_occurrence(usable.y[split.mask(split.evaluated_on)]).tolist(),
        **clf._model_info({"fit": model.fit_info}),
        "data": data,
        "timings": clock.timings,
        "versions": library_versions(),
        "extraction": extraction_info(result),
        "created": now_utc(),
    }
    if model.finetune is not None:
        out["finetune"] = model.finetune
    return out


# ---------------------------------------------------------------------------- evaluate, predict, bundle


def evaluate_multilabel(
    clf: ImageClassifier, data: str | Path | Dataset, out_dir: str | Path | None, split: str
) -> dict[str, Any]:
    """``evaluate`` for a multi-label model: mAP, F1 and subset accuracy at the saved thresholds."""
    t0 = time.perf_counter()
    dataset = data if isinstance(data, Dataset) else discover(data, clf.labels_from, multi_label=True)
    check_out_dir(out_dir, dataset)
    writer = RunWriter(out_dir, clf.verbose)
    samples, used = clf._evaluation_samples(dataset, split)
    skipped = [(p, r, "discovery") for p, r in dataset.ignored]
    result = clf._extract([s.path for s in samples])
    skipped += [(samples[i].path, r, "decode") for i, r in result.errors.items()]
    ok = result.ok
    kept = [s for s, good in zip(samples, ok) if good]
    if not kept:
        raise HeadstartError(f"none of the images in {dataset.root} could be read")
    y = multi_hot(kept, clf.classes_)
    proba = clf.head_.predict_proba(result.features[ok])
    scores = multilabel_metrics(y, proba, clf.thresholds_, clf.classes_)
    metrics = {
        "test": summary(scores),
        "evaluated_on": used,
        "multi_label": True,
        "classes": clf.classes_,
        "per_class": scores["per_class"],
        "thresholds": {
            "metric": THRESHOLD_METRIC,
            "chosen_on": "val",
            "values": list(map(float, clf.thresholds_)),
        },
        "co_occurrence": co_occurrence(y).tolist(),
        **clf._model_info(),
        "data": {"source": str(dataset.root), "kind": dataset.kind, "n_skipped": len(skipped)},
        "timings": {"extract": result.seconds.get("total", 0.0), "total": time.perf_counter() - t0},
        "versions": library_versions(),
    }
    with writer:
        if skipped:
            writer(summarize_skips(skipped))
        writer(f"mAP {scores['mAP']:.4f}, macro F1 {scores['macro_f1']:.4f} on {scores['n']} images ({used})")
        write_multilabel_evaluation(writer, metrics, skipped, [s.path for s in kept], y, proba)
    return metrics


def multilabel_items(
    clf: ImageClassifier, files: list[str], proba: np.ndarray, errors: dict[int, str], k: int
) -> list[dict[str, Any]]:
    """``predict_top_k``'s items for a multi-label model (see ``evaluation.multilabel.multilabel_answer``)."""
    return [
        {"path": path, "predictions": [], "labels": [], "unknown": False, "error": errors[i]}
        if i in errors
        else multilabel_answer(path, row, clf.classes_, clf.thresholds_, k)
        for i, (path, row) in enumerate(zip(files, proba))
    ]


def predicted_label_sets(clf: ImageClassifier, proba: np.ndarray) -> list[list[str] | None]:
    """``predict`` of a multi-label model: each image's labels above their thresholds (None for
    a file that cannot be read)."""
    return [
        None
        if np.isnan(row).any()
        else [a["label"] for a in labels_above(row, clf.classes_, clf.thresholds_)]
        for row in proba
    ]


def bundle_entry(clf: ImageClassifier) -> dict[str, Any]:
    """The bundle's ``multi_label`` entry ({} for a single-label model, so its file is unchanged)."""
    if not getattr(clf, "multi_label_", False):
        return {}
    return {
        "multi_label": {
            "thresholds": [float(t) for t in clf.thresholds_],
            "threshold_metric": THRESHOLD_METRIC,
        }
    }


def restore_bundle_entry(clf: ImageClassifier, card: ModelCard) -> None:
    """``multi_label_`` and ``thresholds_`` of a loaded bundle."""
    entry = card.multi_label
    clf.multi_label_ = entry is not None
    if entry is not None:
        clf.thresholds_ = np.asarray(entry.thresholds, dtype=np.float64)
