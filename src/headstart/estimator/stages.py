"""The stages of a single-label ``fit``, each a function of a frozen context that returns a value.

    probe_stage / auto (``auto.run_auto``) -> Stage -> finetune_stage -> Stage -> finish -> FittedModel

A ``Stage`` is a head fitted on its features (with the fine-tuning outcome or the auto search
that made it); ``finish`` scores it the way the saved model will answer, fits its temperature and
reject threshold on validation and writes its metrics, giving the ``FittedModel`` the classifier
stores. No stage reads or writes the classifier.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from headstart.data.discovery import Dataset, Sample
from headstart.doctor import CheckReport
from headstart.estimator.auto import AutoResult
from headstart.estimator.finetune import FineTuneJob, FineTuneOutcome, finetune, scored_as_predicted
from headstart.estimator.fitted import FittedModel, model_info
from headstart.estimator.fitting import (
    Log,
    Split,
    Stopwatch,
    Usable,
    build_metrics,
    data_check_summary,
    data_info,
    extraction_info,
    fit_head,
    now_utc,
    score,
    split_record,
)
from headstart.estimator.layers import choose_layers
from headstart.estimator.neighbours import build_neighbours, model_features
from headstart.estimator.openset import held_out_class_report
from headstart.estimator.reliability import Reliability, fit_reliability, reliability_sections
from headstart.evaluation.calibration import apply_temperature
from headstart.features.composite import FeatureSpec
from headstart.features.extractor import ExtractionResult
from headstart.models.backbones import Backbone
from headstart.models.heads import Head

Extract = Callable[[FeatureSpec, Sequence[str]], ExtractionResult]


@dataclass(frozen=True)
class FitContext:
    """What every stage shares: the usable data and its split, the log, the clock, and how the
    classifier extracts features (``extract(spec, paths)``: its engine, cache and batches)."""

    usable: Usable
    split: Split
    log: Log
    clock: Stopwatch
    extract: Extract
    seed: int


@dataclass(frozen=True)
class Stage:
    """A head fitted on its features (``usable.features`` are the head's columns): what the
    probe, the auto search and fine-tuning each return."""

    spec: FeatureSpec
    head: Head
    fit_info: dict[str, Any]
    usable: Usable
    strategy: str
    outcome: FineTuneOutcome | None = None
    probe_backbone: Backbone | None = None  # the pretrained backbone a tuned network started from
    auto: dict[str, Any] | None = None
    best_params: dict[str, Any] | None = None


def probe_stage(
    ctx: FitContext, spec: FeatureSpec, head: str, head_params: dict[str, Any], strategy: str
) -> Stage:
    """The head on the cached features (multi-layer features: the layer groups chosen first)."""
    with ctx.clock("fit_head"):
        usable, layer_info = choose_layers(spec, ctx.usable, ctx.split, ctx.log)
        fitted, fit_info = fit_head(head, head_params, ctx.seed, usable, ctx.split)
        fit_info.update(layer_info)
    return Stage(spec, fitted, fit_info, usable, strategy)


def auto_stage(auto: AutoResult) -> Stage:
    """The auto search's winner as a stage (``auto.run_auto`` ran the search)."""
    return Stage(
        auto.spec,
        auto.head,
        auto.fit_info,
        auto.usable,
        auto.strategy,
        auto.outcome,
        auto.probe_backbone,
        auto.record,
        auto.best_params,
    )


def finetune_stage(ctx: FitContext, job: FineTuneJob, probe: Stage) -> Stage:
    """Fine-tuning after the probe: the tuned backbone and head, or the probe refitted on
    train + val when no epoch beat it."""
    pretrained = probe.spec.members[0]
    outcome = finetune(job, pretrained, probe.head, probe.usable, ctx.split, ctx.clock)
    return replace(
        probe,
        spec=probe.spec if outcome.backbone is pretrained else FeatureSpec([outcome.backbone]),
        head=outcome.head,
        outcome=outcome,
        probe_backbone=probe.spec.members[0],
    )


@dataclass(frozen=True)
class RunRecord:
    """What the run folder records beside the model: the data, what was left out, the
    extraction and the data check."""

    dataset: Dataset
    excluded: list[Sample]
    extraction: ExtractionResult
    checks: CheckReport | None
    fractions: Sequence[float]
    top_k: int


def finish(
    ctx: FitContext, stage: Stage, record: RunRecord, reject: str | float, targets: tuple[float, float]
) -> tuple[FittedModel, np.ndarray]:
    """The stage's model scored on the evaluated split as ``predict`` will answer, calibrated,
    with its reject threshold (``targets``: accuracy and coverage, for ``reject="auto"``) and its
    metrics; also the evaluated split's probabilities."""
    split, usable = ctx.split, stage.usable
    evaluated = split.mask(split.evaluated_on)
    with ctx.clock("evaluate"):
        outcome = stage.outcome
        if outcome is not None and outcome.proba is None:  # a tuned network: scored as predict will
            outcome = scored_as_predicted(outcome, lambda p: ctx.extract(stage.spec, p), usable, split)
        raw = (
            outcome.proba
            if outcome is not None and outcome.proba is not None
            else stage.head.predict_proba(usable.features[evaluated])
        )
    with ctx.clock("calibrate"):
        rel, sections = _reliability(ctx, stage, outcome, raw, reject, targets)
        proba = apply_temperature(raw, rel.temperature)
    scores = score(usable.y[evaluated], proba, usable.classes, record.top_k)
    split_rec = split_record(record.dataset, usable, split, record.fractions, ctx.seed)
    metrics = _metrics(ctx, stage, record, outcome, scores, split_rec)
    metrics.update(sections)
    fitted = FittedModel(
        spec=stage.spec,
        head=stage.head,
        classes=usable.classes,
        strategy=stage.strategy,
        split=split_rec,
        metrics=metrics,
        temperature=rel.temperature,
        reject_threshold=rel.reject_threshold,
        reject_bank=rel.bank,
        reliability=rel,
        probe_backbone=stage.probe_backbone,
        finetune=outcome.info if outcome is not None else None,
        auto=stage.auto,
        best_params=stage.best_params,
    )
    return fitted, proba


def _reliability(
    ctx: FitContext,
    stage: Stage,
    outcome: FineTuneOutcome | None,
    raw: np.ndarray,
    reject: str | float,
    targets: tuple[float, float],
) -> tuple[Reliability, dict[str, Any]]:
    """Temperature and reject threshold, chosen on validation (``estimator.reliability``), and
    metrics.json's sections about them (``raw``: the evaluated split's uncalibrated probabilities)."""
    split, usable = ctx.split, stage.usable
    tuned_val = outcome.val_proba if outcome is not None else None
    neighbours, model_x = None, None
    if reject != "off":  # the score's neighbour bank: only a model that rejects pays for it
        tuned = outcome is not None and outcome.backbone is not stage.probe_backbone
        model_x = model_features(lambda p: ctx.extract(stage.spec, p), tuned, usable, ctx.log)
        neighbours = build_neighbours(model_x, usable.y, split, ctx.seed)
    target_accuracy, target_coverage = targets
    rel = fit_reliability(
        stage.head, usable, split, reject, target_accuracy, ctx.log, tuned_val, neighbours, target_coverage
    )
    evaluated = split.mask(split.evaluated_on)
    features = neighbours.evaluated_features if neighbours is not None else None
    sections = reliability_sections(rel, usable.y[evaluated], raw, split.evaluated_on, features)
    if "reject" in sections and model_x is not None:
        sections["reject"]["held_out_class"] = held_out_class_report(
            stage.head, model_x, usable.y, split, usable.classes, rel, ctx.seed
        )
    return rel, sections


def _metrics(
    ctx: FitContext,
    stage: Stage,
    record: RunRecord,
    outcome: FineTuneOutcome | None,
    scores: dict[str, Any],
    split_rec: dict[str, Any],
) -> dict[str, Any]:
    """``metrics.json`` of a single-label fit (before the reliability sections)."""
    split, usable, fit_info = ctx.split, stage.usable, stage.fit_info
    data = data_info(record.dataset, record.extraction, usable, split_rec)
    model = model_info(usable.classes, stage.spec, stage.strategy, stage.head, {"fit": fit_info})
    extra: dict[str, Any] = {"extraction": extraction_info(record.extraction), "created": now_utc()}
    if stage.auto is not None:
        extra["auto"] = stage.auto
    if outcome is not None:
        extra["finetune"] = outcome.info
        if outcome.info.get("probe_refit_on_train_val"):
            model["head"]["fit"] = {**fit_info, "refit_on_train_val": True}
    if record.checks is not None:
        extra["data_checks"] = data_check_summary(
            record.checks, usable.samples, split, record.fractions, ctx.seed, record.excluded, usable.hashes
        )
    return build_metrics(
        scores, split.evaluated_on, split.evaluated_on, model, data, ctx.clock.timings, extra
    )
