"""``FittedModel``: what fitting produces and what ``load`` restores, as one typed value.

Each way of fitting (probe, fine-tuning, auto, multi-label) ends in a ``FittedModel``; a bundle
read back becomes the same value (``fitted_from_bundle``, the one reader of a bundle's metadata
for the estimator). The classifier stores the value it gets (``ImageClassifier._adopt``) and is
the only writer of its own fitted attributes; ``predict``, ``evaluate``, ``save`` and the report
read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.errors import HeadstartError
from headstart.estimator.layers import model_features_info
from headstart.estimator.reliability import Reliability
from headstart.evaluation.reject import restore_bank
from headstart.evaluation.tasks import MultiLabel, SingleLabel, Task, task_of
from headstart.features.composite import FeatureSpec, spec_from_bundle
from headstart.models.backbones import Backbone
from headstart.models.card import ModelCard
from headstart.models.heads import Head, restore_head

FEATURE_EXTRACTION = "feature-extraction"


@dataclass(frozen=True)
class FittedModel:
    """A fitted model: its features (backbones, layers, TTA), head, classes and task (``task``:
    single-label, or multi-label with its per-label thresholds), how its probabilities become answers (temperature, reject threshold and
    neighbour bank), and the record of its fit (split, metrics, fine-tuning, auto search).

    ``reliability`` (how T and the threshold were chosen) and ``probe_backbone`` (the pretrained
    backbone a tuned network started from) exist for a fit only; ``meta`` for a loaded bundle.
    """

    spec: FeatureSpec
    head: Head
    classes: list[str]
    strategy: str
    split: dict[str, Any]
    metrics: dict[str, Any]
    temperature: float = 1.0
    reject_threshold: float | None = None
    reject_bank: np.ndarray | None = None
    reliability: Reliability | None = None
    task: Task = field(default_factory=SingleLabel)
    probe_backbone: Backbone | None = None
    finetune: dict[str, Any] | None = None  # metrics.json's ``finetune`` section (its history inside)
    auto: dict[str, Any] | None = None  # metrics.json's ``auto`` section
    best_params: dict[str, Any] | None = None  # the auto winner's parameters
    meta: dict[str, Any] | None = None

    @property
    def backbone(self) -> Backbone:
        """The model's (first) backbone: the tuned one after fine-tuning."""
        return self.spec.members[0]

    @property
    def multi_label(self) -> bool:
        return isinstance(self.task, MultiLabel)

    @property
    def thresholds(self) -> np.ndarray | None:
        """A multi-label model's per-label thresholds (None: single-label)."""
        return self.task.thresholds if isinstance(self.task, MultiLabel) else None


def model_info(
    classes: list[str],
    spec: FeatureSpec,
    strategy: str,
    head: Head,
    head_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The model's entries of ``metrics.json`` (``build_metrics``' ``model``)."""
    return {
        "classes": classes,
        "backbone": spec.members[0].describe(),
        "strategy": strategy,
        "head": {"name": head.name, "params": head.params(), **(head_extra or {})},
        **model_features_info(spec),
    }


def saved_parameters(card: ModelCard) -> dict[str, Any]:
    """The estimator parameters a bundle fixes (strategy, backbone, head, seed, split, top_k,
    feature precision); features, TTA and the reject option are read with the model."""
    settings = card.settings
    return {
        "strategy": card.strategy,
        "backbone": card.backbone.name,
        "head": card.head.name,
        "seed": settings.seed,
        "split": tuple(settings.split),
        "top_k": settings.top_k,
        "feature_precision": settings.feature_precision,
    }


def fitted_from_bundle(
    card: ModelCard, state: dict[str, Any], head_arrays: dict[str, Any], path: str | Path
) -> FittedModel:
    """The ``FittedModel`` a bundle holds (``models.bundle.load_bundle``'s three parts, its
    metadata read as a ``ModelCard``); a file whose parts do not fit together is a
    ``HeadstartError`` naming ``path``."""
    try:
        spec = spec_from_bundle(card, state)
        bank = restore_bank(card.reject_score, head_arrays, spec.width)
        head = restore_head(card.head.name, head_arrays, card.head.params)
        _check_head_shape(head, spec.width, len(card.classes))
    except HeadstartError:
        raise
    except Exception as e:  # noqa: BLE001 - a crafted or damaged file may fail anywhere here
        raise HeadstartError(
            f"model file {path} is damaged or incomplete ({type(e).__name__}: {str(e)[:100]})"
        ) from e
    meta = card.to_meta()
    entry = card.multi_label
    return FittedModel(
        spec=spec,
        head=head,
        classes=list(card.classes),
        strategy=card.strategy,
        split=meta.get("split") or {},
        metrics=meta.get("metrics", {}),
        temperature=card.temperature,
        reject_threshold=card.reject_threshold,
        reject_bank=bank,
        task=task_of(np.asarray(entry.thresholds, dtype=np.float64) if entry is not None else None),
        meta=meta,
    )


def _check_head_shape(head: Head, num_features: int, n_classes: int) -> None:
    """The head takes ``num_features`` inputs and gives one probability per class (a file whose
    head and metadata disagree would otherwise fail at the first prediction)."""
    with np.errstate(all="ignore"):
        proba = np.asarray(head.predict_proba(np.zeros((1, num_features), dtype=np.float32)))
    if proba.shape != (1, n_classes):
        raise ValueError(
            f"its head gives {proba.shape[-1] if proba.ndim else 0} outputs for {n_classes} classes"
        )
