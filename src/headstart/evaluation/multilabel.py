"""Multi-label metrics and per-class thresholds (scikit-learn's definitions).

An image may carry several labels: the model gives one independent probability per class
(sigmoid), and a label is predicted when its probability reaches the class's threshold. The
thresholds are chosen on the validation split; the metrics are those of the multi-label
literature: mean average precision (mAP, threshold-free), per-class AP, micro/macro F1 and
subset accuracy (every label of the image right) at the thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from headstart.core.probability import binary_log_loss as mean_binary_cross_entropy

THRESHOLD_METRICS = ("f1",)
DEFAULT_THRESHOLD = 0.5  # a class with no positive validation image


def binary_log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    """Mean binary cross-entropy over every (image, class) cell."""
    return mean_binary_cross_entropy(y, np.asarray(proba, dtype=np.float64))


def average_precisions(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Average precision of each class; NaN for a class without a positive image (AP undefined)."""
    from sklearn.metrics import average_precision_score

    out = np.full(y.shape[1], np.nan)
    for c in range(y.shape[1]):
        if y[:, c].sum() > 0:
            out[c] = average_precision_score(y[:, c], proba[:, c])
    return out


def mean_average_precision(y: np.ndarray, proba: np.ndarray) -> float:
    """mAP: the mean of the defined per-class APs (sklearn's ``average="macro"`` over those classes)."""
    ap = average_precisions(y, proba)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def choose_thresholds(y: np.ndarray, proba: np.ndarray, metric: str = "f1") -> np.ndarray:
    """Per-class thresholds maximising the class's F1 on (validation) ``y`` and ``proba``.

    Each candidate is a probability the class takes; the chosen threshold is midway between the
    best candidate and the next lower probability, so a slightly different image is judged alike.
    A class without a positive image keeps ``DEFAULT_THRESHOLD``.
    """
    if metric not in THRESHOLD_METRICS:
        raise ValueError(f"unknown threshold metric {metric!r}: use {', '.join(THRESHOLD_METRICS)}")
    thresholds = np.full(y.shape[1], DEFAULT_THRESHOLD, dtype=np.float64)
    for c in range(y.shape[1]):
        positives = y[:, c] > 0
        if not positives.any():
            continue
        order = np.argsort(-proba[:, c], kind="stable")
        p_sorted, hits = proba[order, c], positives[order].astype(np.float64)
        tp = np.cumsum(hits)
        predicted = np.arange(1, len(order) + 1)
        f1 = 2 * tp / (predicted + positives.sum())
        last_of_tie = np.append(p_sorted[1:] < p_sorted[:-1], True)  # a threshold keeps whole ties
        best = int(np.argmax(np.where(last_of_tie, f1, -1.0)))
        below = p_sorted[best + 1] if best + 1 < len(p_sorted) else 0.0
        thresholds[c] = float((p_sorted[best] + below) / 2)
    return thresholds


def predict_labels(proba: np.ndarray, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """0/1 predictions: each class where its probability reaches its threshold."""
    return (np.asarray(proba) >= np.asarray(thresholds)[None, :]).astype(np.int64)


def multilabel_metrics(
    y: np.ndarray, proba: np.ndarray, thresholds: Sequence[float] | np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """mAP, per-class AP (and precision/recall/F1/support at the thresholds), micro and macro F1,
    subset accuracy, mean binary log-loss; ``n`` images."""
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    y = np.asarray(y).astype(np.int64)
    pred = predict_labels(proba, thresholds)
    ap = average_precisions(y, proba)
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, zero_division=0)
    return {
        "mAP": float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan"),
        "micro_f1": float(f1_score(y, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "subset_accuracy": float((pred == y).all(axis=1).mean()) if len(y) else float("nan"),
        "hamming_accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "log_loss": binary_log_loss(y, proba) if len(y) else float("nan"),
        "n": int(len(y)),
        "per_class": {
            name: {
                "ap": None if np.isnan(ap[i]) else float(ap[i]),
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "threshold": float(thresholds[i]),
            }
            for i, name in enumerate(classes)
        },
    }


def co_occurrence(y: np.ndarray) -> np.ndarray:
    """Images carrying both labels i and j (the diagonal: images carrying label i)."""
    y = np.asarray(y, dtype=np.int64)
    return y.T @ y


def labels_above(
    row: np.ndarray, classes: Sequence[str], thresholds: Sequence[float] | np.ndarray
) -> list[dict[str, Any]]:
    """Every class whose probability reaches its threshold, most probable first, as
    ``{"label", "probability", "threshold"}``."""
    above = [j for j in np.argsort(-np.asarray(row), kind="stable") if row[j] >= thresholds[j]]
    return [
        {"label": classes[j], "probability": float(row[j]), "threshold": float(thresholds[j])} for j in above
    ]


def multilabel_answer(
    path: str, row: np.ndarray, classes: Sequence[str], thresholds: Sequence[float] | np.ndarray, k: int
) -> dict[str, Any]:
    """One image's answer from a multi-label model, shaped like every model's predict item:

    ``{"path", "predictions": top-k [{"label", "probability"}], "labels": [names above their
    thresholds, most probable first], "label_probabilities": {name: probability} of those,
    "unknown": False}``. No label above its threshold is an empty ``labels`` (the reject option
    is for single-label models).

    Args:
        path: the image's path, as given.
        row: the model's probability of each class (sigmoid outputs, independent).
        classes: class names, index-aligned with ``row``.
        thresholds: the per-class thresholds saved with the model.
        k: how many of the most probable classes ``predictions`` lists.
    """
    top = np.argsort(-np.asarray(row), kind="stable")[: min(k, len(classes))]
    above = labels_above(row, classes, thresholds)
    return {
        "path": path,
        "predictions": [{"label": classes[j], "probability": float(row[j])} for j in top],
        "labels": [a["label"] for a in above],
        "label_probabilities": {a["label"]: a["probability"] for a in above},
        "unknown": False,
    }
