"""Calibration and the reject option of a fitted model, both decided on the validation split.

Temperature scaling needs probabilities of images the model did not learn from. The logistic
head is refitted on train + validation once its C is chosen, so its final probabilities on
validation images are optimistic (it has seen them); T fitted on those would be too small. T is
therefore fitted on the validation probabilities of the head as fitted on train only, at the
chosen C (the model chosen before the refit), and applied to the refitted head: the refit adds
an eighth more images at the same regularisation, which leaves the scale of its logits nearly
where it was. The MLP head is trained on train only (validation only stops it), so its own
validation probabilities are used; a fine-tuned network's too (validation chose its epoch). A
kNN head is not calibrated (its probabilities are neighbour votes, many exactly 0 or 1, which
no temperature mends), but its reject threshold is chosen on the votes of train-only neighbours.

The reject threshold (``reject="auto"``) is chosen on the same held-out validation
probabilities, after calibration, for ``target_accuracy`` on the accepted images and at most
``1 - target_coverage`` of the validation images turned down (``evaluation.reject``); with a
neighbour bank (``estimator.neighbours``), times each validation image's similarity to the train
images only, so the threshold is on the score the model answers with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headstart.estimator.fitting import Split, Usable
from headstart.estimator.neighbours import Neighbours
from headstart.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from headstart.evaluation.reject import choose_threshold, reject_scores, score_kind, selective_metrics
from headstart.models.card import ModelCard
from headstart.models.heads import Head, KNNHead, LogisticHead

Log = Callable[[str], None]
# Below this many validation images a fitted T follows the few images' luck (all right: T runs
# to its lower bound), so the model keeps T = 1.
MIN_CALIBRATION_IMAGES = 20


@dataclass
class Reliability:
    """What a fitted model carries beside its head: its temperature and reject threshold."""

    temperature: float = 1.0
    reject_threshold: float | None = None
    calibration: dict[str, Any] = field(default_factory=dict)  # how T was fitted
    reject: dict[str, Any] = field(default_factory=dict)  # how the threshold was chosen
    bank: np.ndarray | None = None  # the neighbour bank of the max_probability*knn score


def held_out_val_proba(head: Head, usable: Usable, split: Split, tuned_val_proba: Any = None) -> np.ndarray:
    """Validation probabilities of a model that did not learn from the validation images.

    Args:
        head: the fitted head (the final model's, for a fine-tuned run the tuned head).
        usable: features and labels of every image.
        split: the split.
        tuned_val_proba: a fine-tuned network's validation probabilities (used as they are).
    """
    if tuned_val_proba is not None:
        return np.asarray(tuned_val_proba)
    tr, va = split.mask("train"), split.mask("val")
    x, y, n = usable.features, usable.y, len(usable.classes)
    if isinstance(head, LogisticHead) and head.refit and head.C is not None:
        kept = getattr(head, "held_out_val_proba_", None)  # the sweep's own, at the chosen C
        if kept is not None and len(kept) == int(va.sum()):
            return np.asarray(kept)
        train_only = LogisticHead(cs=(head.C,), refit=False)
        train_only.fit(x[tr], y[tr], x[va], y[va], n)
        return train_only.predict_proba(x[va])
    if isinstance(head, KNNHead):
        neighbours = KNNHead(ks=(head.k,))
        neighbours.n_classes = n
        return neighbours._proba(neighbours._model(x[tr], y[tr], head.k), x[va])
    return head.predict_proba(x[va])


def fit_reliability(
    head: Head,
    usable: Usable,
    split: Split,
    reject: str | float,
    target_accuracy: float,
    log: Log,
    tuned_val_proba: Any = None,
    neighbours: Neighbours | None = None,
    target_coverage: float = 1.0,
) -> Reliability:
    """Temperature (fitted on held-out validation probabilities) and the reject threshold (on
    the ``max_probability*knn`` score with ``neighbours``, else on ``max_probability``)."""
    va = split.mask("val")
    y_val = usable.y[va]
    val_proba = held_out_val_proba(head, usable, split, tuned_val_proba)
    source = "fine-tuned network" if tuned_val_proba is not None else _source(head)
    calibration: dict[str, Any]
    if isinstance(head, KNNHead):
        temperature, calibration = 1.0, {"method": "none", "reason": "kNN votes are not calibrated"}
    elif len(y_val) < MIN_CALIBRATION_IMAGES:
        reason = f"{len(y_val)} val images, fewer than {MIN_CALIBRATION_IMAGES}: too few to fit T"
        temperature, calibration = 1.0, {"method": "none", "reason": reason}
        log(f"calibration: none ({reason})")
    else:
        temperature = fit_temperature(val_proba, y_val)
        calibration = {
            "method": "temperature",
            "fitted_on": "val",
            "fitted_with": source,
            "val_nll_before": negative_log_likelihood(val_proba, y_val),
            "val_nll_after": negative_log_likelihood(apply_temperature(val_proba, temperature), y_val),
        }
        log(f"calibration: temperature {temperature:.3f} fitted on {int(va.sum())} val images ({source})")
    rel = Reliability(temperature, None, {"temperature": temperature, **calibration})
    if reject == "off":
        return rel
    calibrated = apply_temperature(val_proba, temperature)
    if neighbours is None:
        scores = reject_scores(calibrated)
    else:
        scores = reject_scores(calibrated, neighbours.val_features, neighbours.train_bank)
        rel.bank = neighbours.bank
    scores = np.nan_to_num(scores, nan=0.0)  # an image unreadable by the tuned network: least sure
    correct = val_proba.argmax(axis=1) == y_val
    targets = (target_accuracy, target_coverage)
    rel.reject_threshold, rel.reject = _threshold(reject, targets, scores, correct, log)
    return rel


def _source(head: Head) -> str:
    if isinstance(head, LogisticHead) and head.refit:
        return "the head fitted on train only at the chosen C, before its refit on train + val"
    if isinstance(head, KNNHead):
        return "neighbours among the train images only"
    return "the head fitted on train only"


def _threshold(
    reject: str | float,
    targets: tuple[float, float],
    scores: np.ndarray,
    correct: np.ndarray,
    log: Log,
) -> tuple[float, dict[str, Any]]:
    """``auto``: chosen on validation for the (accuracy, coverage) ``targets``; a number: as given."""
    if reject != "auto":
        threshold = float(reject)
        return threshold, {"mode": "fixed", "val": selective_metrics(scores, correct, threshold)}
    target, coverage = targets
    choice = choose_threshold(scores, correct, target, coverage)
    info = {
        "mode": "auto",
        "target_accuracy": target,
        "target_coverage": coverage,
        "target_reached": choice.reached,
        "threshold_set_by": choice.set_by,
        "val": selective_metrics(scores, correct, choice.threshold),
    }
    if choice.set_by == "coverage":
        log(
            f"reject: threshold {choice.threshold:.4f} turns down {1 - choice.coverage:.1%} of the val images "
            f"(coverage target {coverage}; accuracy {choice.accuracy:.4f} on the rest, target {target})"
        )
    elif choice.reached:
        log(
            f"reject: threshold {choice.threshold:.4f} on val gives accuracy {choice.accuracy:.4f} on "
            f"{choice.coverage:.1%} of the images (target {target})"
        )
    else:
        log(
            f"reject: no threshold reaches accuracy {target} on the val images; the best achievable is "
            f"{choice.accuracy:.4f} on {choice.coverage:.1%} of them, at threshold {choice.threshold:.4f}"
        )
    return choice.threshold, info


def reliability_sections(
    rel: Reliability,
    y: np.ndarray,
    raw_proba: np.ndarray,
    evaluated_on: str,
    features: np.ndarray | None = None,
) -> dict[str, Any]:
    """metrics.json's ``calibration`` (T, ECE and NLL before and after on the evaluated images)
    and, with the reject option on, ``reject`` (threshold, score kind, coverage, accuracies);
    ``features`` (the evaluated images' model features) score them when the model has a bank."""
    calibrated = apply_temperature(raw_proba, rel.temperature)
    correct = raw_proba.argmax(axis=1) == y if len(y) else np.zeros(0, dtype=bool)
    calibration = {
        **rel.calibration,
        "temperature": rel.temperature,
        "evaluated_on": evaluated_on,
        "ece_before": expected_calibration_error(raw_proba.max(axis=1) if len(y) else raw_proba, correct),
        "ece_after": expected_calibration_error(calibrated.max(axis=1) if len(y) else calibrated, correct),
        "nll_before": negative_log_likelihood(raw_proba, y),
        "nll_after": negative_log_likelihood(calibrated, y),
    }
    out: dict[str, Any] = {"calibration": calibration}
    if rel.reject_threshold is not None:
        out["reject"] = {
            **rel.reject,
            "threshold": rel.reject_threshold,
            "score": score_kind(rel.bank),
            "evaluated_on": evaluated_on,
            **selective_metrics(reject_scores(calibrated, features, rel.bank), correct, rel.reject_threshold),
        }
    return out


def saved_reject_params(card: ModelCard) -> dict[str, Any]:
    """``reject``, ``target_accuracy`` and ``target_coverage`` of a saved model (a bundle without
    them: off; one saved before the coverage target: 1, the accuracy rule its threshold came from)."""
    saved = card.head.reject
    if saved.threshold is None:
        return {}
    return {
        "reject": saved.mode,
        "target_accuracy": saved.target_accuracy,
        "target_coverage": saved.target_coverage,
    }
