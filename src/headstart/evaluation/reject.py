"""The reject option: a score per image and the threshold at or below which the model answers unknown.

An image is accepted when its score is above the threshold: 0 accepts every image (a top
probability is never 0), 1 none (a probability rounded to 1.0 included).

The score is the calibrated top probability (the probabilities after temperature scaling): a
model shown something unlike its classes tends to spread its probability, and a confusing image
of a known class too. ``auto`` chooses the threshold on validation images so that the images it
accepts reach a target accuracy (``choose_threshold``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCORE_KIND = "max_probability"


def reject_scores(proba: np.ndarray) -> np.ndarray:
    """The score of each row of (calibrated) probabilities: higher is surer. NaN rows stay NaN."""
    proba = np.asarray(proba, dtype=np.float64)
    return proba.max(axis=1) if proba.size else np.zeros(len(proba))


@dataclass
class ThresholdChoice:
    """``threshold``: the lowest threshold whose accepted images (score above it) reach the
    target; ``reached``: whether any did (when none did, the threshold of the best accuracy
    achievable)."""

    threshold: float
    reached: bool
    accuracy: float  # on the accepted validation images
    coverage: float  # the fraction of validation images accepted


def choose_threshold(scores: np.ndarray, correct: np.ndarray, target_accuracy: float) -> ThresholdChoice:
    """The lowest threshold at which the accepted images (score > threshold) are right at least
    ``target_accuracy`` of the time.

    Accepting the images down to a given score (tied scores taken together: a threshold accepts
    all of them or none) is the threshold at the next lower score, or 0 when every image is
    accepted. When no threshold reaches the target, the one with the best accuracy (the lowest
    such) is returned with ``reached=False``.

    Args:
        scores: (N,) scores of validation images.
        correct: (N,) 1 where the model's top-1 answer is right.
        target_accuracy: wanted accuracy on accepted images, in (0, 1].
    """
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if len(scores) == 0:
        return ThresholdChoice(0.0, False, float("nan"), 0.0)
    order = np.argsort(-scores, kind="stable")
    s, c = scores[order], correct[order]
    last_of_tie = np.append(s[1:] != s[:-1], True)  # accepting down to s[i] takes its ties too
    accepted = np.arange(1, len(s) + 1)[last_of_tie]
    accuracy = np.cumsum(c)[last_of_tie] / accepted
    candidates = np.append(s[last_of_tie][1:], 0.0)  # the threshold that accepts down to each
    good = np.nonzero(accuracy >= target_accuracy - 1e-12)[0]
    reached = len(good) > 0
    i = int(good.max()) if reached else int(np.flatnonzero(accuracy == accuracy.max()).max())
    return ThresholdChoice(float(candidates[i]), reached, float(accuracy[i]), float(accepted[i] / len(s)))


def selective_metrics(scores: np.ndarray, correct: np.ndarray, threshold: float) -> dict[str, float]:
    """Coverage (fraction accepted), accuracy on the accepted images and accuracy overall."""
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    accepted = scores > threshold
    n = len(scores)
    return {
        "coverage": float(accepted.mean()) if n else float("nan"),
        "accuracy_accepted": float(correct[accepted].mean()) if accepted.any() else float("nan"),
        "accuracy_overall": float(correct.mean()) if n else float("nan"),
        "n": int(n),
        "n_accepted": int(accepted.sum()),
    }
