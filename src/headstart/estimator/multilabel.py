"""``ImageClassifier.fit`` and ``evaluate`` on multi-label data (several labels per image).

The single-label flow's discovery, feature extraction, data check and run writer are reused;
what differs is here: targets are multi-hot rows, the split is iterative stratification
(every label in train), the head is one-vs-rest logistic regression (``models.multilabel``),
fine-tuning trains a sigmoid/BCE head (``training.multilabel``), per-class thresholds are chosen
on validation (F1), and the metrics are mAP, per-class AP, micro/macro F1 and subset accuracy.

The fitted model's task is ``evaluation.tasks.MultiLabel`` (its per-label thresholds), which answers
``predict`` and writes the bundle's ``multi_label`` entry; the estimator also keeps
``multi_label_`` (True) and ``thresholds_`` (one per class).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from headstart.core.errors import HeadstartError, ParameterError
from headstart.core.io import summarize_skips
from headstart.data.discovery import Dataset, Sample
from headstart.data.multilabel import assign_multilabel_splits, label_names, make_multilabel_split, multi_hot
from headstart.doctor import CheckReport, check_summary, quick_check
from headstart.estimator.finetune import FineTuneJob, _tuned_backbone
from headstart.estimator.fitted import FittedModel, model_info
from headstart.estimator.fitting import (
    Log,
    PreparedData,
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
    multilabel_metrics,
)
from headstart.evaluation.tasks import THRESHOLD_METRIC, MultiLabel
from headstart.features.composite import FeatureSpec
from headstart.features.extractor import ExtractionResult
from headstart.models.backbones import Backbone
from headstart.models.bundle import library_versions
from headstart.models.multilabel import MULTILABEL_HEAD, MultiLabelLogisticHead
from headstart.runs.multilabel import write_multilabel_evaluation
from headstart.runs.writer import Predictions, RunWriter, TrainingRun
from headstart.training.loop import settings_fingerprint
from headstart.training.multilabel import MultiLabelFineTuner


@dataclass(frozen=True)
class MultiLabelSettings:
    """The estimator parameters a multi-label fit reads (``head_params`` as resolved)."""

    head: str
    head_params: dict[str, Any]
    check_data: bool
    fractions: tuple[float, ...]
    seed: int
    unfreeze: str


@dataclass(frozen=True)
class MultiLabelFit:
    """A multi-label fit: the model, what the run folder gets, and the evaluated split's
    paths, targets and probabilities (the classifier's ``test_``)."""

    fitted: FittedModel
    run: TrainingRun
    test: dict[str, Any]
    checks: CheckReport | None


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


def multilabel_split(settings: MultiLabelSettings, usable: Usable, checks: Any) -> Split:
    """Iterative stratification (predefined splits as given); train and val must not be empty."""
    groups = checks.group_indices if checks is not None else None
    names, method = assign_multilabel_splits(
        usable.samples, usable.classes, settings.fractions, settings.seed, groups
    )
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


def fit_probe(
    head_params: dict[str, Any], backbone: Backbone, usable: Usable, split: Split
) -> MultiLabelModel:
    """The one-vs-rest head on train features (C chosen on val), thresholds on val."""
    head = MultiLabelLogisticHead(**head_params)
    tr, va = split.mask("train"), split.mask("val")
    x, y = usable.features, usable.y
    info = head.fit(x[tr], y[tr], x[va], y[va], len(usable.classes))
    thresholds = choose_thresholds(y[va], head.val_proba, THRESHOLD_METRIC)
    proba = head.predict_proba(x[split.mask(split.evaluated_on)])
    return MultiLabelModel(backbone, head, thresholds, proba, info)


def finetune_multilabel(
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
    backbone = _tuned_backbone(probe.backbone, result, job.unfreeze)
    return MultiLabelModel(backbone, head, thresholds, proba, probe.fit_info, info)


def fit_multilabel(
    settings: MultiLabelSettings,
    strategy: str,
    prep: PreparedData,
    log: Log,
    clock: Stopwatch,
    job: FineTuneJob | None,
) -> MultiLabelFit:
    """Everything of ``fit`` after feature extraction, for multi-label data (``job``: fine-tuning)."""
    dataset, excluded, usable, spec = prep.dataset, prep.excluded, prep.usable, prep.spec
    if settings.head not in ("logistic", MULTILABEL_HEAD):
        raise ParameterError(
            "head", "multi-label data takes the one-vs-rest logistic head: use head='logistic'"
        )
    usable = as_multilabel(usable)
    checks = None
    if settings.check_data:
        with clock("data_check"):
            checks = check_multilabel_data(usable, log)
    with clock("split"):
        split = multilabel_split(settings, usable, checks)
    with clock("fit_head"):
        model = fit_probe(settings.head_params, spec.members[0], usable, split)
    log(f"multi-label: {len(usable.classes)} labels, one-vs-rest logistic head (C={model.head.C})")
    if job is not None:
        model = finetune_multilabel(job, model, usable, split, clock)
    pretrained = spec.members[0]
    spec = spec if model.backbone is pretrained else FeatureSpec([model.backbone])
    fitted = _fitted(settings, strategy, prep, spec, usable, split, checks, model, clock, pretrained)
    evaluated = split.mask(split.evaluated_on)
    paths = [s.path for s, m in zip(usable.samples, evaluated) if m]
    test = Predictions(paths, usable.y[evaluated], model.proba, usable.features[evaluated])
    run = TrainingRun(
        fitted.metrics,
        dataset,
        fitted.split["files"],
        split.names,
        usable.skipped,
        test,
        clock.started,
        checks,
        excluded,
    )
    scores = fitted.metrics[split.evaluated_on]
    log(
        f"{split.evaluated_on} mAP {scores['mAP']:.4f}, macro F1 {scores['macro_f1']:.4f}, micro F1 "
        f"{scores['micro_f1']:.4f}, subset accuracy {scores['subset_accuracy']:.4f} on {scores['n']} images"
    )
    return MultiLabelFit(
        fitted, run, {"paths": paths, "y": usable.y[evaluated], "proba": model.proba}, checks
    )


def _fitted(
    settings: MultiLabelSettings,
    strategy: str,
    prep: PreparedData,
    spec: FeatureSpec,
    usable: Usable,
    split: Split,
    checks: Any,
    model: MultiLabelModel,
    clock: Stopwatch,
    pretrained: Backbone,
) -> FittedModel:
    """The fitted multi-label model and its metrics."""
    dataset, excluded, result = prep.dataset, prep.excluded, prep.extraction
    y_eval = usable.y[split.mask(split.evaluated_on)]
    scores = multilabel_metrics(y_eval, model.proba, model.thresholds, usable.classes)
    split_rec = split_record(dataset, usable, split, settings.fractions, settings.seed)
    info = model_info(usable.classes, spec, strategy, model.head, {"fit": model.fit_info})
    metrics = _metrics(info, scores, split, usable, dataset, model, result, clock, split_rec)
    if checks is not None:
        plain = make_multilabel_split(usable.y, settings.fractions, settings.seed)
        metrics["data_checks"] = check_summary(checks, plain, split.names, excluded)
    return FittedModel(
        spec=spec,
        head=model.head,
        classes=usable.classes,
        strategy=strategy,
        split=split_rec,
        metrics=metrics,
        task=MultiLabel(model.thresholds),
        probe_backbone=pretrained,
        finetune=model.finetune,
    )


def summary(scores: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json``'s ``test`` (or ``val``) entry of a multi-label model."""
    keys = ("mAP", "micro_f1", "macro_f1", "subset_accuracy", "hamming_accuracy", "log_loss", "n")
    return {k: scores[k] for k in keys}


def _metrics(
    info: dict[str, Any],
    scores: dict[str, Any],
    split: Split,
    usable: Usable,
    dataset: Dataset,
    model: MultiLabelModel,
    result: ExtractionResult,
    clock: Stopwatch,
    split_rec: dict[str, Any],
) -> dict[str, Any]:
    data = {
        **data_info(dataset, result, usable, split_rec),
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
        **info,
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
    fitted: FittedModel,
    info: dict[str, Any],
    dataset: Dataset,
    evaluated: tuple[list[Sample], str],
    extract: Callable[[list[str]], ExtractionResult],
    writer: RunWriter,
) -> dict[str, Any]:
    """``evaluate`` for a multi-label model: mAP, F1 and subset accuracy at the saved thresholds
    (``evaluated``: the samples to score and what they are; ``info``: the model's metrics entries)."""
    t0 = time.perf_counter()
    samples, used = evaluated
    skipped = [(p, r, "discovery") for p, r in dataset.ignored]
    result = extract([s.path for s in samples])
    skipped += [(samples[i].path, r, "decode") for i, r in result.errors.items()]
    ok = result.ok
    kept = [s for s, good in zip(samples, ok) if good]
    if not kept:
        raise HeadstartError(f"none of the images in {dataset.root} could be read")
    thresholds = fitted.thresholds
    assert thresholds is not None
    y = multi_hot(kept, fitted.classes)
    proba = fitted.head.predict_proba(result.features[ok])
    scores = multilabel_metrics(y, proba, thresholds, fitted.classes)
    metrics = {
        "test": summary(scores),
        "evaluated_on": used,
        "multi_label": True,
        "classes": fitted.classes,
        "per_class": scores["per_class"],
        "thresholds": {
            "metric": THRESHOLD_METRIC,
            "chosen_on": "val",
            "values": list(map(float, thresholds)),
        },
        "co_occurrence": co_occurrence(y).tolist(),
        **info,
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
