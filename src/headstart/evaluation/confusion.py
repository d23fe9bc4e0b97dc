"""What a confusion matrix says in words: which classes are mistaken for which, and how often."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confused_pairs(
    cm: np.ndarray, classes: Sequence[str], limit: int = 15
) -> list[tuple[str, str, int, float]]:
    """(true, predicted, count, share of the true class), most frequent mistakes first.

    Args:
        cm: confusion matrix, rows are true classes and columns predicted ones.
        classes: class names in matrix order.
        limit: at most this many pairs.
    """
    cm = np.asarray(cm)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    rows = cm.sum(axis=1)
    pairs = [(int(off[i, j]), i, j) for i, j in zip(*np.nonzero(off))]
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    return [(classes[i], classes[j], n, n / rows[i] if rows[i] else 0.0) for n, i, j in pairs[:limit]]


def most_confused_classes(cm: np.ndarray, limit: int) -> list[int]:
    """The ``limit`` classes with the most errors (as true or as predicted class), in class order."""
    cm = np.asarray(cm)
    errors = cm.sum(axis=0) + cm.sum(axis=1) - 2 * np.diag(cm)
    if len(cm) <= limit:
        return list(range(len(cm)))
    order = np.lexsort((np.arange(len(cm)), -errors))[:limit]
    return sorted(int(i) for i in order)
