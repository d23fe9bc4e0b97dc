"""Metrics on a held-out split and the confusion-matrix figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def top_k_accuracy(proba: np.ndarray, y: np.ndarray, k: int) -> float:
    if len(y) == 0:
        return float("nan")
    k = min(k, proba.shape[1])
    top = np.argsort(-proba, axis=1)[:, :k]
    return float((top == y[:, None]).any(axis=1).mean())


def classification_metrics(
    y: np.ndarray, proba: np.ndarray, classes: list[str], top_k: int = 3
) -> dict[str, Any]:
    """Accuracy, top-k, per-class precision/recall/F1 and the confusion matrix."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(classes)))
    pred = proba.argmax(axis=1) if len(proba) else np.zeros(0, dtype=int)
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y, pred, labels=labels) if len(y) else np.zeros((len(classes),) * 2, int)
    k = min(top_k, len(classes))
    return {
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
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
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": cm.astype(int).tolist(),
    }


def plot_confusion_matrix(cm: list[list[int]], classes: list[str], path: Path, title: str = "") -> Path:
    """Counts with row-normalised shading, so small classes are as readable as large ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from headstart.reporting.plots import axis_label, style  # shortened names; CJK fonts where installed

    with plt.rc_context({"font.family": style()["font.family"]}):
        matrix = np.asarray(cm, dtype=float)
        rows = matrix.sum(axis=1, keepdims=True)
        shade = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
        n = len(classes)
        size = min(max(4.0, 0.55 * n + 2.5), 30.0)
        fig, ax = plt.subplots(figsize=(size, size * 0.85), dpi=110)
        ax.imshow(shade, cmap="Blues", vmin=0, vmax=1)
        names = [axis_label(c, i) for i, c in enumerate(classes)]
        ax.set_xticks(range(n), names, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center")
        ax.set_yticks(range(n), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title or "Confusion matrix (test split)")
        if n <= 30:
            for i in range(n):
                for j in range(n):
                    if matrix[i, j]:
                        ax.text(
                            j,
                            i,
                            int(matrix[i, j]),
                            ha="center",
                            va="center",
                            color="white" if shade[i, j] > 0.5 else "black",
                            fontsize=9,
                        )
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        plt.close(fig)
    return path
