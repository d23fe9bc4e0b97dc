"""Metrics on a held-out split: accuracy, top-k, per-class scores and the confusion matrix.

The figures of these numbers live in ``headstart.reporting.plots`` (evaluation sits below reporting)."""

from __future__ import annotations

from typing import Any

import numpy as np

from headstart.evaluation.intervals import accuracy_ci95


def top_k_accuracy(proba: np.ndarray, y: np.ndarray, k: int) -> float:
    if len(y) == 0:
        return float("nan")
    k = min(k, proba.shape[1])
    top = np.argsort(-proba, axis=1)[:, :k]
    return float((top == y[:, None]).any(axis=1).mean())


def classification_metrics(
    y: np.ndarray, proba: np.ndarray, classes: list[str], top_k: int = 3
) -> dict[str, Any]:
    """Accuracy, top-k, per-class precision/recall/F1 and the confusion matrix; every accuracy
    (a class's is its recall) with its 95% Wilson interval (``evaluation.intervals``)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(classes)))
    pred = proba.argmax(axis=1) if len(proba) else np.zeros(0, dtype=int)
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y, pred, labels=labels) if len(y) else np.zeros((len(classes),) * 2, int)
    k = min(top_k, len(classes))
    return {
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "accuracy_ci95": accuracy_ci95(pred == y),
        "n": int(len(y)),
        "top_k": k,
        "top_k_accuracy": top_k_accuracy(proba, y, k),
        "macro_f1": float(np.mean(f1)) if len(f1) else float("nan"),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "accuracy_ci95": accuracy_ci95(int(cm[i, i]) if len(y) else 0, int(support[i])),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": cm.astype(int).tolist(),
    }
