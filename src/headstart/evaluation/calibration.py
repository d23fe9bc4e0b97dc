"""Calibration: do the predicted probabilities match how often the model is right?

A model that says 90 % should be right about 9 times in 10. The numbers here are computed on
equal-width confidence bins (the top predicted probability), as in Guo et al. 2017.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
