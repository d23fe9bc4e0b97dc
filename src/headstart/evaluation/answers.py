"""One answer shape for every model: what ``predict --format json``, ``predict_top_k``, an
exported model's runtime and ``headstart serve`` return for one image.

    {"predictions": [{"label", "probability"}, ...],   # the top k, most probable first
     "labels": ["roses"],                               # the accepted labels ([] when rejected)
     "unknown": false,                                  # true when the reject option turned it down
     "score": 0.93}                                     # only when the reject option is on

Everything that answers calls :func:`answer`, so the shapes cannot drift apart. A file that
could not be read keeps its own shape: ``{"path", "predictions": [], "error"}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

UNKNOWN = "unknown"


def answer(
    classes: Sequence[str],
    proba_row: np.ndarray,
    k: int,
    reject_threshold: float | None = None,
    score: float | None = None,
    label_thresholds: Sequence[float] | np.ndarray | None = None,
    decimals: int | None = None,
) -> dict[str, Any]:
    """The answer for one image from its (calibrated) probabilities.

    Args:
        classes: class names, index-aligned with ``proba_row``.
        proba_row: (C,) probabilities of the image (softmax for a single-label model; one
            independent probability per class for a multi-label one).
        k: how many of the most probable labels ``predictions`` lists (at most C).
        reject_threshold: the reject option's threshold (None: the option is off). The image is
            ``unknown`` when its score is not above it; ``score`` is then part of the answer.
        score: the image's reject score (default: the top probability of ``proba_row``, the
            score of ``evaluation.reject.reject_scores``).
        label_thresholds: multi-label models: (C,) one threshold per class; ``labels`` is then
            every class whose probability reaches its threshold, most probable first (possibly
            none). None (single-label): ``labels`` is the top-1 class.
        decimals: round the probabilities and score to this many decimals (None: as computed).
    """
    row = np.asarray(proba_row, dtype=np.float64)
    order = np.argsort(-row, kind="stable")

    def number(value: float) -> float:
        return round(float(value), decimals) if decimals is not None else float(value)

    predictions = [{"label": classes[i], "probability": number(row[i])} for i in order[: max(0, k)]]
    if label_thresholds is None:
        labels = [classes[int(order[0])]] if len(order) else []
    else:
        limits = np.asarray(label_thresholds, dtype=np.float64)
        labels = [classes[i] for i in order if row[i] >= limits[i]]
    out: dict[str, Any] = {"predictions": predictions, "labels": labels, "unknown": False}
    if reject_threshold is not None:
        value = float(row.max()) if score is None else float(score)
        if value <= reject_threshold:
            out.update(labels=[], unknown=True)
        out["score"] = number(value)
    return out
