"""What a model answers, by task: one label per image (``SingleLabel``) or a set of labels above
per-label thresholds (``MultiLabel``).

The classifier asks its model's task (``estimator.fitted.FittedModel.task``) how to turn
probabilities into ``predict`` and ``predict_top_k`` answers, which figure ``score`` returns and
what the bundle records about the task, instead of testing a flag at each step. It lives in
``evaluation`` so that export and serve, below the estimator, can ask it too. Fitting differs
more (targets, split, head, metrics): ``estimator.stages`` fits single-label data,
``estimator.multilabel`` multi-label data, each ending in a ``FittedModel`` that names its task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from headstart.evaluation.answers import UNKNOWN, answer
from headstart.evaluation.multilabel import labels_above, multilabel_answer

THRESHOLD_METRIC = "f1"  # what a multi-label model's per-label thresholds maximise on validation


class Task(Protocol):
    """How a fitted model's probabilities become answers, and how the task is recorded."""

    name: ClassVar[str]

    def labels(
        self, classes: list[str], proba: np.ndarray, scores: np.ndarray, threshold: float | None
    ) -> list[Any]:
        """``predict``: each image's answer (None for a row of NaN: a file that cannot be read)."""
        ...

    def item(
        self, path: str, classes: list[str], row: np.ndarray, k: int, threshold: float | None, score: float
    ) -> dict[str, Any]:
        """``predict_top_k``'s item of one readable image."""
        ...

    def unreadable(self, path: str, reason: str) -> dict[str, Any]:
        """``predict_top_k``'s item of a file that cannot be read."""
        ...

    def headline(self, summary: dict[str, Any]) -> float:
        """``score``: the one figure of an evaluation's summary."""
        ...

    def card(self) -> dict[str, Any]:
        """The bundle's entries about the task ({}: a file as single-label models always wrote)."""
        ...


@dataclass(frozen=True)
class SingleLabel:
    """One class per image: the most probable, or ``unknown`` under the reject threshold."""

    name: ClassVar[str] = "single-label"

    def labels(
        self, classes: list[str], proba: np.ndarray, scores: np.ndarray, threshold: float | None
    ) -> list[Any]:
        return [
            None
            if np.isnan(row).any()
            else UNKNOWN
            if threshold is not None and s <= threshold
            else classes[int(row.argmax())]
            for row, s in zip(proba, scores)
        ]

    def item(
        self, path: str, classes: list[str], row: np.ndarray, k: int, threshold: float | None, score: float
    ) -> dict[str, Any]:
        return {"path": path, **answer(classes, row, k, threshold, score)}

    def unreadable(self, path: str, reason: str) -> dict[str, Any]:
        return {"path": path, "predictions": [], "error": reason}

    def headline(self, summary: dict[str, Any]) -> float:
        return float(summary["accuracy"])

    def card(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class MultiLabel:
    """Several labels per image: every label whose probability reaches its threshold (chosen on
    validation for ``THRESHOLD_METRIC``); the reject option does not apply."""

    thresholds: np.ndarray
    name: ClassVar[str] = "multi-label"

    def labels(
        self, classes: list[str], proba: np.ndarray, scores: np.ndarray, threshold: float | None
    ) -> list[Any]:
        return [
            None if np.isnan(row).any() else [a["label"] for a in labels_above(row, classes, self.thresholds)]
            for row in proba
        ]

    def item(
        self, path: str, classes: list[str], row: np.ndarray, k: int, threshold: float | None, score: float
    ) -> dict[str, Any]:
        return multilabel_answer(path, row, classes, self.thresholds, k)

    def unreadable(self, path: str, reason: str) -> dict[str, Any]:
        return {"path": path, "predictions": [], "labels": [], "unknown": False, "error": reason}

    def headline(self, summary: dict[str, Any]) -> float:
        return float(summary["mAP"])

    def card(self) -> dict[str, Any]:
        return {
            "multi_label": {
                "thresholds": [float(t) for t in self.thresholds],
                "threshold_metric": THRESHOLD_METRIC,
            }
        }


def task_of(thresholds: np.ndarray | None) -> Task:
    """The task of a model with these per-label thresholds (None: single-label)."""
    return SingleLabel() if thresholds is None else MultiLabel(np.asarray(thresholds, dtype=np.float64))
