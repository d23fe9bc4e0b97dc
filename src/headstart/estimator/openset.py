"""``reject.held_out_class`` of metrics.json: how well this model's "unknown" works, measured by
holding each class out in turn (``evaluation.heldout``).

Each fold's head is a logistic probe refitted from the cached features the model's head takes
(the tuned network's for a fine-tuned model), at the model's own C (C = 1 for an MLP or kNN
head, whose own refit would cost a training per class), calibrated with the model's
temperature, and scored as the model scores: with a neighbour bank of the fold's train images
for a ``max_probability*knn`` model.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from headstart.estimator.fitting import Split
from headstart.estimator.reliability import Reliability
from headstart.evaluation.calibration import apply_temperature
from headstart.evaluation.heldout import FoldScorer, held_out_folds, held_out_summary
from headstart.evaluation.reject import neighbour_bank, reject_scores
from headstart.features.store import FeatureStore
from headstart.models.heads import Head, LogisticHead


def fold_scorer(c: float, temperature: float, with_bank: bool, seed: int) -> FoldScorer:
    """Fits a probe on a fold's train images and scores validation images as the model would."""
    from sklearn.linear_model import LogisticRegression

    def scores(x_train: np.ndarray, y_train: np.ndarray, n: int, x_val: np.ndarray) -> np.ndarray:
        mean, scale = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
        model = LogisticRegression(C=c, max_iter=LogisticHead.MAX_ITER, tol=LogisticHead.TOL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit((x_train - mean) / scale, y_train)
        proba = apply_temperature(model.predict_proba((x_val - mean) / scale), temperature)
        bank = neighbour_bank(x_train, y_train, seed) if with_bank else None
        return reject_scores(proba, x_val if with_bank else None, bank)

    return scores


def held_out_class_report(
    head: Head,
    features: np.ndarray | FeatureStore,
    y: np.ndarray,
    split: Split,
    classes: list[str],
    rel: Reliability,
    seed: int,
) -> dict[str, Any]:
    """``reject.held_out_class`` for a model whose reject threshold is ``rel.reject_threshold``.

    Args:
        head: the model's head (its C is reused).
        features: (N, D) the features the head takes, of every usable image (array or store).
        y: (N,) class indices.
        split: the split (train fits each fold's probe, val is scored).
        classes: class names.
        rel: the model's ``Reliability`` (temperature, threshold, bank).
        seed: the banks' subsample seed.
    """
    tr, va = split.mask("train"), split.mask("val")
    x_train = np.asarray(features[tr], dtype=np.float32)
    x_val = np.asarray(features[va], dtype=np.float32)
    ok_train, ok_val = np.isfinite(x_train).all(axis=1), np.isfinite(x_val).all(axis=1)
    c = float(head.C) if isinstance(head, LogisticHead) and head.C is not None else 1.0
    scorer = fold_scorer(c, rel.temperature, rel.bank is not None, seed)
    x_train, y_train, x_val, y_val = x_train[ok_train], y[tr][ok_train], x_val[ok_val], y[va][ok_val]
    threshold = rel.reject_threshold
    assert threshold is not None, "only a model with a reject threshold has this report"
    folds = held_out_folds(x_train, y_train, x_val, y_val, classes, threshold, scorer)
    return held_out_summary(folds, threshold)
