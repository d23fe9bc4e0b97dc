"""How well "unknown" works for one model: each class held out in turn, on validation.

A model is never shown the images it should call unknown, so the way to measure its reject
option is to make some: for each class, the head is refitted from the cached features of the
train images of the *other* classes, and the validation images are scored as the model scores
them (calibrated top probability, times the similarity to a bank of those train images for a
``max_probability*knn`` model). The held-out class's images are then unknown images of the kind
a user meets (photos like the others, of something the model never learnt), and the rest of the
validation images are the known ones.

Reported, per held-out class and pooled over the folds:

- ``auroc``: how well the score ranks known images above unknown ones (0.5: no better than
  chance; 1: every unknown image scores below every known one). It does not depend on a
  threshold.
- ``turned_down``: the share of the held-out class's images at or below the model's own
  threshold, and ``known_turned_down`` the share of the known validation images there. The
  refitted heads know one class fewer than the model, so their probabilities run a little
  higher than the model's would on the same image: these shares lean towards turning down
  less than the full model does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

# (x_train, y_train in 0..n-1, n, x_val) -> reject scores of x_val under a head fitted on x_train
FoldScorer = Callable[[np.ndarray, np.ndarray, int, np.ndarray], np.ndarray]
MIN_HELD_OUT = 2  # a class with fewer validation images gives no fold


@dataclass
class HeldOutFold:
    """One held-out class's fold."""

    held_out: str
    n_unknown: int  # validation images of the held-out class
    n_known: int  # validation images of the other classes
    auroc: float
    turned_down: float  # share of the held-out images at or below the threshold
    known_turned_down: float  # share of the known images there


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """The probability that a known image scores above an unknown one (ties count half)."""
    if len(known) == 0 or len(unknown) == 0:
        return float("nan")
    labels = np.r_[np.ones(len(known)), np.zeros(len(unknown))]
    return float(roc_auc_score(labels, np.r_[known, unknown]))


def held_out_folds(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    classes: Sequence[str],
    threshold: float,
    scorer: FoldScorer,
) -> list[HeldOutFold]:
    """One fold per class with at least ``MIN_HELD_OUT`` validation images (and two classes
    left to fit a head on).

    Args:
        x_train, y_train: the model's features of its train images and their class indices.
        x_val, y_val: the same of its validation images.
        classes: the class names.
        threshold: the model's reject threshold.
        scorer: fits a head on the remaining classes and scores validation images.
    """
    folds = []
    for k, name in enumerate(classes):
        unknown = y_val == k
        rest = y_train != k
        if unknown.sum() < MIN_HELD_OUT or len(np.unique(y_train[rest])) < 2:
            continue
        remaining = np.unique(y_train[rest])
        y_fold = np.searchsorted(remaining, y_train[rest])
        scores = np.nan_to_num(scorer(x_train[rest], y_fold, len(remaining), x_val), nan=0.0)
        known_scores, unknown_scores = scores[~unknown], scores[unknown]
        folds.append(
            HeldOutFold(
                held_out=name,
                n_unknown=int(unknown.sum()),
                n_known=int((~unknown).sum()),
                auroc=auroc(known_scores, unknown_scores),
                turned_down=float((unknown_scores <= threshold).mean()),
                known_turned_down=float((known_scores <= threshold).mean()) if len(known_scores) else 0.0,
            )
        )
    return folds


def held_out_summary(folds: list[HeldOutFold], threshold: float) -> dict[str, object]:
    """metrics.json's ``reject.held_out_class``: the folds' means (each class weighs the same)
    and every fold."""
    if not folds:
        return {"folds": [], "reason": f"no class has {MIN_HELD_OUT} validation images to hold out"}
    return {
        "method": "each class held out in turn: head refitted without it on train, scored on val",
        "threshold": threshold,
        "auroc": float(np.nanmean([f.auroc for f in folds])),
        "turned_down": float(np.mean([f.turned_down for f in folds])),
        "known_turned_down": float(np.mean([f.known_turned_down for f in folds])),
        "folds": [asdict(f) for f in folds],
    }
