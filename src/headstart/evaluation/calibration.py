"""Calibration: do the predicted probabilities match how often the model is right?

A model that says 90 % should be right about 9 times in 10. The numbers here are computed on
equal-width confidence bins (the top predicted probability), as in Guo et al. 2017.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from headstart.core.probability import log_loss, softmax

CALIBRATION_BINS = 10


@dataclass
class ReliabilityBins:
    """Per confidence bin: its edges, how many predictions fall in it, their accuracy and mean confidence."""

    edges: np.ndarray  # (bins + 1,) from 0 to 1
    counts: np.ndarray  # (bins,) int
    accuracy: np.ndarray  # (bins,) NaN where a bin is empty
    confidence: np.ndarray  # (bins,) NaN where a bin is empty

    @property
    def centers(self) -> np.ndarray:
        return (self.edges[:-1] + self.edges[1:]) / 2


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS
) -> ReliabilityBins:
    """Group predictions into ``bins`` equal-width confidence bins (a confidence of 1 goes in the last).

    Args:
        confidence: the top predicted probability of each prediction, in [0, 1].
        correct: 1 where the prediction was right, 0 where it was wrong.
        bins: how many bins split [0, 1].
    """
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    accuracy = np.full(bins, np.nan)
    mean_confidence = np.full(bins, np.nan)
    for b in np.nonzero(counts)[0]:
        mask = which == b
        accuracy[b] = correct[mask].mean()
        mean_confidence[b] = confidence[mask].mean()
    return ReliabilityBins(edges, counts, accuracy, mean_confidence)


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS
) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size (NaN when empty)."""
    if len(confidence) == 0:
        return float("nan")
    r = reliability_bins(confidence, correct, bins)
    filled = r.counts > 0
    weights = r.counts[filled] / r.counts.sum()
    return float(np.sum(weights * np.abs(r.accuracy[filled] - r.confidence[filled])))


# --------------------------------------------------------------------------- temperature scaling

TEMPERATURE_BOUNDS = (0.05, 20.0)  # a fitted T outside this means the probabilities carry no signal


def log_probabilities(proba: np.ndarray) -> np.ndarray:
    """``log(proba)`` with zeros kept finite: for a softmax head these are its logits less a
    per-row constant, which temperature scaling ignores, so the head's logits need not be kept."""
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(np.asarray(proba, dtype=np.float64)), -1e4)


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(logits / T)`` computed from ``softmax(logits)``: the calibrated probabilities.

    T > 1 softens an over-confident model, T < 1 sharpens an under-confident one; the ranking of
    the classes (and so every top-k answer) never changes. T = 1 returns ``proba`` as it is.
    """
    proba = np.asarray(proba)
    if temperature == 1.0 or proba.size == 0:
        return proba
    return softmax(log_probabilities(proba) / temperature).astype(proba.dtype, copy=False)


def negative_log_likelihood(proba: np.ndarray, y: np.ndarray) -> float:
    """Mean -log p(true class) (NaN when empty)."""
    if len(y) == 0:
        return float("nan")
    return log_loss(np.asarray(proba, dtype=np.float64), y)


def fit_temperature(proba: np.ndarray, y: np.ndarray) -> float:
    """The one scalar T minimising the negative log-likelihood of ``softmax(log(proba) / T)``
    on held-out images (Guo et al. 2017), found by scipy's bounded scalar minimiser over log T.

    Args:
        proba: (N, C) probabilities of images the model did not learn from (validation).
        y: (N,) their true class indices.

    Returns:
        T in ``TEMPERATURE_BOUNDS``; 1.0 when there is nothing to fit on.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    y = np.asarray(y, dtype=int)
    if len(y) == 0:
        return 1.0
    z = log_probabilities(proba)
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return float(-log_softmax(z / np.exp(log_t), axis=1)[rows, y].mean())

    low, high = np.log(TEMPERATURE_BOUNDS)
    best = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    # never worse than leaving the model as it is
    return float(np.exp(best.x)) if best.fun < nll(0.0) else 1.0
