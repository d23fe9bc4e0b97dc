"""Softmax, sigmoid and the log-losses, written once for every layer that turns scores into
probabilities or judges them (heads, calibration, auto's averaged networks, multi-label)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]


def softmax(z: npt.ArrayLike) -> FloatArray:
    """Row-wise softmax of scores ``z`` (N, C), shifted by each row's maximum so it never overflows."""
    z = np.asarray(z)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(z: npt.ArrayLike) -> FloatArray:
    """Element-wise logistic function, clipped so ``exp`` never overflows."""
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def log_loss(proba: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Mean ``-log p(true class)`` of probabilities ``proba`` (N, C) for labels ``y`` (N,); a zero
    probability counts as 1e-12, so one certain mistake does not make the loss infinite."""
    labels = np.asarray(y, dtype=int)
    picked = np.asarray(proba)[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0))))


def binary_log_loss(y: npt.ArrayLike, proba: npt.ArrayLike) -> float:
    """Mean binary cross-entropy over every (image, class) cell of 0/1 targets ``y``."""
    p = np.clip(np.asarray(proba), 1e-7, 1 - 1e-7)
    t = np.asarray(y)
    return float(-np.mean(t * np.log(p) + (1 - t) * np.log(1 - p)))
