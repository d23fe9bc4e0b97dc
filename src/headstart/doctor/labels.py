"""Likely wrong labels: out-of-fold probabilities and confident learning (Northcutt et al., 2021).

Each image is scored by a model that never saw it; an image whose confident class differs from
its given label is a likely label issue, and every image is ranked by self-confidence.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from headstart.data.discovery import Sample


def out_of_fold_proba(
    features: np.ndarray, y: np.ndarray, n_classes: int, folds: int = 5, seed: int = 0, c: float = 0.03
) -> np.ndarray | None:
    """Cross-validated class probabilities: each image scored by a model that never saw it.

    Standardised features, multinomial logistic regression, stratified ``folds``-fold split.
    None when a class has fewer than two images (no fold could hold it out).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    smallest = np.bincount(y, minlength=n_classes)[np.unique(y)].min() if len(y) else 0
    folds = int(min(folds, smallest))
    if folds < 2 or len(np.unique(y)) < 2:
        return None
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=300, tol=1e-3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proba = cross_val_predict(
            model,
            features,
            y,
            cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
            method="predict_proba",
        )
    full = np.zeros((len(y), n_classes))
    full[:, np.unique(y)] = proba
    return full


def rank_label_issues(proba: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confident learning, the few lines of it (Northcutt et al., 2021).

    A class's threshold is the mean probability the model gives that class on images labelled
    with it. An image's confident label is its most probable class among those whose threshold
    it reaches; it is a label issue when that differs from its given label. Returns (order of
    all images by self-confidence, lowest first; issue mask; confident label per image).
    """
    n, k = proba.shape
    thresholds = np.array([proba[y == j, j].mean() if (y == j).any() else 1.0 for j in range(k)])
    above = proba >= thresholds[None, :]
    masked = np.where(above, proba, -1.0)
    confident = masked.argmax(axis=1)
    has = above.any(axis=1)
    issue = has & (confident != y)
    self_conf = proba[np.arange(n), y]
    order = np.lexsort((np.arange(n), self_conf))
    return order, issue, np.where(has, confident, proba.argmax(axis=1))


def label_records(
    samples: Sequence[Sample],
    features: np.ndarray,
    nn_idx: np.ndarray,
    nn_sim: np.ndarray,
    folds: int = 5,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """Every image ranked by self-confidence (lowest first), and the likely label issues with
    their evidence (probabilities and the labels of the nearest images).

    None when the labels cannot be cross-validated (one class, or a class of one image).
    """
    classes = sorted({s.label for s in samples})
    y = np.array([classes.index(s.label) for s in samples], dtype=np.int64)
    proba = out_of_fold_proba(features, y, len(classes), folds, seed) if len(classes) > 1 else None
    if proba is None:
        return None
    order, issue, suggested = rank_label_issues(proba, y)
    ranking: list[dict[str, Any]] = []
    issues: list[dict[str, Any]] = []
    for rank, i in enumerate(order, start=1):
        given, best = samples[i].label, classes[suggested[i]]
        record = {
            "rank": rank,
            "path": samples[i].path,
            "given_label": given,
            "suggested_label": best,
            "self_confidence": round(float(proba[i, y[i]]), 4),
            "suggested_probability": round(float(proba[i, suggested[i]]), 4),
            "is_issue": bool(issue[i]),
        }
        ranking.append(record)
        if issue[i]:
            neighbours = [int(j) for j in nn_idx[i]] if nn_idx.shape[1] else []
            agree = sum(samples[j].label == best for j in neighbours)
            issues.append(
                {
                    **record,
                    "evidence": (
                        f"out-of-fold probability {proba[i, y[i]]:.2f} for '{given}' vs "
                        f"{proba[i, suggested[i]]:.2f} for '{best}'; {agree} of "
                        f"{len(neighbours)} nearest images are '{best}'"
                    ),
                    "neighbours": [
                        {"path": samples[j].path, "label": samples[j].label, "cosine": round(float(s), 4)}
                        for j, s in zip(neighbours, nn_sim[i])
                    ],
                }
            )
    return ranking, issues
