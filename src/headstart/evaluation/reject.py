"""The reject option: a score per image and the threshold at or below which the model answers unknown.

An image is accepted when its score is above the threshold: 0 accepts every image (a top
probability is never 0; a similarity is 0 only for features at or beyond a right angle to every
training image's), 1 none (a probability rounded to 1.0 included).

Two score kinds:

- ``max_probability``: the calibrated top probability (the probabilities after temperature
  scaling). A model shown something unlike its classes tends to spread its probability, and a
  confusing image of a known class too. Models saved without a neighbour bank use it.
- ``max_probability*knn``: that probability times the image's largest cosine similarity to a
  *neighbour bank* (unit-normalised features of the model's training images, the very features
  its head takes). An image unlike every training image can still get a confident softmax (a
  linear head extrapolates); its features are far from the bank, which lowers its score. On
  flowers with one class held out as unknown (``benchmarks/open_set.py``) it separates unknown
  from known images better than either factor alone.

``auto`` chooses the threshold on validation images with two targets (``choose_threshold``):
the images it accepts reach a target accuracy, and at most ``1 - target_coverage`` of the
(known) validation images are turned down. The threshold is the higher of the two rules'. The
accuracy rule alone turns nothing down once a model is accurate enough, and then an image unlike
every class is never answered unknown; the coverage rule spends a fixed share of the known
images (5% by default) to place the threshold where unlike images fall. When the accuracy target
needs more, it wins: the accuracy asked for is kept. ``target_coverage=1`` is the accuracy rule
alone (models saved before the coverage target keep the threshold they were saved with).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCORE_KIND = "max_probability"
KNN_SCORE_KIND = "max_probability*knn"
SCORE_KINDS = (SCORE_KIND, KNN_SCORE_KIND)
# The bank's most rows: the file stays bounded (4096 x 1280 float16 is 10 MB) and a score costs
# one (N, D) @ (D, 4096) product; a subsample this large keeps every class's region covered.
MAX_BANK_ROWS = 4096
BANK_DTYPE = np.float16  # cosine similarities move by ~1e-3 at most: far below a threshold's grain
BANK_ARRAY = "reject_bank"  # the bank's name among a bundle's head arrays
_CHUNK_ROWS = 1024  # rows scored at once: bounds the (rows, bank) similarity matrix in memory


def score_kind(bank: np.ndarray | None) -> str:
    """The score kind of a model with (or without) a neighbour bank."""
    return SCORE_KIND if bank is None else KNN_SCORE_KIND


def reject_scores(
    proba: np.ndarray, features: np.ndarray | None = None, bank: np.ndarray | None = None
) -> np.ndarray:
    """The score of each row of (calibrated) probabilities: higher is surer. NaN rows stay NaN.

    Args:
        proba: (N, C) calibrated probabilities.
        features: (N, D) the images' model features (what the head takes); only with ``bank``.
        bank: (M, D) the neighbour bank (``neighbour_bank``); None: ``max_probability`` alone.
    """
    proba = np.asarray(proba, dtype=np.float64)
    top = proba.max(axis=1) if proba.size else np.zeros(len(proba))
    if bank is None:
        return top
    if features is None:
        raise ValueError("the max_probability*knn score needs the images' features")
    return top * knn_similarity(features, bank)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (float32); an all-zero row stays zero instead of NaN."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.finfo(np.float32).tiny)


def knn_similarity(features: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Each row's largest cosine similarity to a bank row, clipped to [0, 1] (NaN for a NaN row):
    a score stays a number in [0, 1] like a probability (float16 rounding can put an image's
    similarity to itself a hair above 1), and anything at a right angle or beyond is equally far.

    Args:
        features: (N, D) features, any scale (normalised here).
        bank: (M, D) unit-normalised rows (``neighbour_bank``), float16 or float32.
    """
    x = unit_rows(features) if len(features) else np.zeros((0, bank.shape[1]), dtype=np.float32)
    neighbours = np.asarray(bank, dtype=np.float32).T
    out = np.empty(len(x), dtype=np.float64)
    for start in range(0, len(x), _CHUNK_ROWS):
        out[start : start + _CHUNK_ROWS] = (x[start : start + _CHUNK_ROWS] @ neighbours).max(axis=1)
    return np.clip(out, 0.0, 1.0)


def bank_rows(y: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """Indices of at most ``max_rows`` rows, each class's share as in ``y`` (largest remainders),
    drawn with ``seed``: a rare class keeps its neighbours in a subsampled bank."""
    y = np.asarray(y)
    if len(y) <= max_rows:
        return np.arange(len(y))
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * max_rows / len(y)
    quota = np.floor(exact).astype(int)
    quota[np.argsort(-(exact - quota), kind="stable")[: max_rows - int(quota.sum())]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(y == c), q, replace=False) for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(chosen))


def neighbour_bank(
    features: np.ndarray, y: np.ndarray, seed: int, max_rows: int = MAX_BANK_ROWS
) -> np.ndarray:
    """The bank the ``max_probability*knn`` score compares images with: unit-normalised
    ``BANK_DTYPE`` rows of ``features`` (rows with a NaN left out), at most ``max_rows`` of them.

    Args:
        features: (N, D) the model's features of its training images.
        y: (N,) their class indices (for a per-class proportional subsample).
        seed: the subsample's seed.
        max_rows: the most rows kept.
    """
    x = np.asarray(features, dtype=np.float32)
    finite = np.isfinite(x).all(axis=1)
    x, y = x[finite], np.asarray(y)[finite]
    rows = bank_rows(y, max_rows, seed)
    return unit_rows(x[rows]).astype(BANK_DTYPE)


def bank_problem(bank: np.ndarray, width: int) -> str:
    """What is wrong with a saved bank for a model of ``width`` features ('' when nothing): a
    crafted file must not bring a huge, ragged or non-finite bank."""
    if bank.dtype != BANK_DTYPE or bank.ndim != 2:
        return f"the reject bank must be a 2-D {np.dtype(BANK_DTYPE).name} array"
    if not (1 <= bank.shape[0] <= MAX_BANK_ROWS and bank.shape[1] == width):
        return f"the reject bank must have 1 to {MAX_BANK_ROWS} rows of {width} features"
    if not np.isfinite(bank).all():
        return "the reject bank must hold finite numbers"
    return ""


@dataclass
class ThresholdChoice:
    """``threshold``: the higher of the accuracy rule's (the lowest threshold whose accepted
    images reach the target accuracy) and the coverage rule's; ``reached``: whether the accuracy
    target was reached (when not, the accuracy rule's threshold is the best accuracy's)."""

    threshold: float
    reached: bool
    accuracy: float  # on the accepted validation images
    coverage: float  # the fraction of validation images accepted
    set_by: str = "accuracy"  # which rule gave the threshold: accuracy or coverage


def coverage_threshold(scores: np.ndarray, target_coverage: float) -> float:
    """The highest threshold that still accepts (score > threshold) at least ``target_coverage``
    of ``scores``; tied scores are accepted or turned down together. 0 when every score must be
    accepted (or there are none).

    Args:
        scores: (N,) scores of known validation images.
        target_coverage: the least fraction accepted, in (0, 1].
    """
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    needed = int(np.ceil(target_coverage * len(s) - 1e-9))
    if needed >= len(s) or needed <= 0:
        return 0.0 if needed >= len(s) or len(s) == 0 else float(s[0])
    # accept s[0 .. needed-1] and their ties: the threshold is the next lower distinct score
    lower = s[needed - 1]
    below = s[s < lower]
    return float(below[0]) if len(below) else 0.0


def choose_threshold(
    scores: np.ndarray, correct: np.ndarray, target_accuracy: float, target_coverage: float = 1.0
) -> ThresholdChoice:
    """The threshold of the accuracy rule or of the coverage rule, whichever is higher.

    Accuracy rule: the lowest threshold at which the accepted images (score > threshold) are
    right at least ``target_accuracy`` of the time. Coverage rule: ``coverage_threshold``.

    Accepting the images down to a given score (tied scores taken together: a threshold accepts
    all of them or none) is the threshold at the next lower score, or 0 when every image is
    accepted. When no threshold reaches the target, the one with the best accuracy (the lowest
    such) is returned with ``reached=False``.

    Args:
        scores: (N,) scores of validation images.
        correct: (N,) 1 where the model's top-1 answer is right.
        target_accuracy: wanted accuracy on accepted images, in (0, 1].
        target_coverage: the least fraction of validation images accepted, in (0, 1] (1: the
            accuracy rule alone).
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
    by_coverage = coverage_threshold(scores, target_coverage)
    if by_coverage <= candidates[i]:
        return ThresholdChoice(float(candidates[i]), reached, float(accuracy[i]), float(accepted[i] / len(s)))
    kept = s > by_coverage
    return ThresholdChoice(by_coverage, reached, float(c[kept].mean()), float(kept.mean()), "coverage")


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


def restore_bank(kind: str | None, head_arrays: dict[str, np.ndarray], width: int) -> np.ndarray | None:
    """A bundle's bank, taken out of its head arrays (the head restores from the rest), checked
    against the bundle's ``reject`` entry: a ``max_probability*knn`` model needs one, any other
    has none. Raises ValueError for a damaged or crafted file.

    Args:
        kind: the bundle's reject score kind (None without the reject option).
        head_arrays: the bundle's head arrays; ``BANK_ARRAY`` is removed from them.
        width: the number of features the model's head takes.
    """
    bank = head_arrays.pop(BANK_ARRAY, None)
    if kind is not None and kind not in SCORE_KINDS:
        raise ValueError(f"unknown reject score {str(kind)[:40]!r}")
    if (kind == KNN_SCORE_KIND) != (bank is not None):
        raise ValueError(f"its reject score ({kind or 'off'}) and its neighbour bank disagree")
    if bank is not None:
        problem = bank_problem(bank, width)
        if problem:
            raise ValueError(problem)
    return bank
