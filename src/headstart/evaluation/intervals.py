"""How sure a figure is: 95% intervals for accuracies and the exact McNemar test for two models.

Rule: an accuracy is a proportion of n images, so its interval is the Wilson score interval.
Why Wilson: its coverage stays close to 95% for small n and for accuracies near 0 or 1 (where
the plain normal interval collapses to a point and Clopper-Pearson is needlessly wide), it needs
no resampling (the same images give the same interval, unlike a bootstrap), and it is closed
form (no scipy on the metrics path).

Two models scored on the same images are compared on the images where they disagree: the exact
McNemar test is a binomial test on those discordant pairs (under "no difference" each one is a
coin flip), so n in the hundreds with a handful of disagreements is still exact.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

Z95 = 1.959963984540054  # the normal quantile of 0.975
Alternative = Literal["two-sided", "greater"]


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``correct / n`` (95% by default); ``(nan, nan)`` for n = 0."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exact at the ends: k = 0 and k = n touch 0 and 1 (rounding would leave 1e-16 off them)
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == n else min(1.0, centre + half)
    return (low, high)


def accuracy_ci95(correct: np.ndarray | int, n: int | None = None) -> list[float]:
    """The 95% interval of an accuracy as ``[low, high]`` (JSON-ready): from a boolean array of
    right answers, or from a count and ``n``."""
    if n is None:
        hits = np.asarray(correct, dtype=bool)
        k, n = int(hits.sum()), int(hits.size)
    else:
        k = int(correct)
    low, high = wilson_interval(k, n)
    return [round(low, 6), round(high, 6)]


def binomial_tail(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly (integers, then one division)."""
    if k < 0:
        return 0.0
    return min(1.0, sum(math.comb(n, i) for i in range(min(k, n) + 1)) / 2**n)


def mcnemar_exact(b: int, c: int, alternative: Alternative = "two-sided") -> float:
    """The exact McNemar p-value of ``b`` images only model A gets right and ``c`` only B does.

    ``two-sided``: any difference; ``greater``: B better than A. No disagreement gives p = 1.
    """
    n = b + c
    if n == 0:
        return 1.0
    if alternative == "greater":  # P(B wins at least c of the n disagreements)
        return binomial_tail(b, n)
    return min(1.0, 2 * binomial_tail(min(b, c), n))


@dataclass(frozen=True)
class PairedComparison:
    """Two models on the same images: each one's accuracy and interval, and the McNemar test."""

    n: int
    a_accuracy: float
    b_accuracy: float
    a_ci95: list[float]
    b_ci95: list[float]
    only_a_right: int  # images B breaks
    only_b_right: int  # images B fixes
    p_two_sided: float
    p_b_better: float  # one-sided: B better than A

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_paired(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> PairedComparison:
    """Models A and B on the same images (true classes ``y``, each one's predicted class)."""
    y, pred_a, pred_b = np.asarray(y), np.asarray(pred_a), np.asarray(pred_b)
    if not (y.shape == pred_a.shape == pred_b.shape):
        raise ValueError(
            f"paired predictions need one answer per image ({y.shape}, {pred_a.shape}, {pred_b.shape})"
        )
    right_a, right_b = pred_a == y, pred_b == y
    b = int((right_a & ~right_b).sum())
    c = int((right_b & ~right_a).sum())
    n = int(y.size)
    return PairedComparison(
        n=n,
        a_accuracy=float(right_a.mean()) if n else float("nan"),
        b_accuracy=float(right_b.mean()) if n else float("nan"),
        a_ci95=accuracy_ci95(right_a),
        b_ci95=accuracy_ci95(right_b),
        only_a_right=b,
        only_b_right=c,
        p_two_sided=mcnemar_exact(b, c),
        p_b_better=mcnemar_exact(b, c, "greater"),
    )


def better_beyond_noise(comparison: PairedComparison, alpha: float = 0.05) -> bool:
    """B is better than A beyond noise: the one-sided exact McNemar test rejects "no better" at
    ``alpha`` (a costlier model must win more disagreements than chance would give it)."""
    return comparison.only_b_right > comparison.only_a_right and comparison.p_b_better < alpha


__all__ = [
    "PairedComparison",
    "accuracy_ci95",
    "better_beyond_noise",
    "compare_paired",
    "mcnemar_exact",
    "wilson_interval",
]
