"""Two models' answers on the same labelled images, compared: accuracies with 95% intervals,
the exact McNemar test on the images both can score, per-class changes, fixed and broken images.

Rule: an image counts for a model only when its label is one of that model's classes (a class
added in B cannot be answered by A); the paired test and the fixed/broken lists use the images
both models can score, so the old classes' changes are the regression check and a new class
shows as a row of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from headstart.evaluation.intervals import accuracy_ci95, compare_paired


@dataclass(frozen=True)
class Answer:
    """One image: its label and each model's predicted class (None: the model knows no such class)."""

    path: str
    label: str
    a: str
    b: str


def _side(right: np.ndarray) -> dict[str, Any]:
    n = int(right.size)
    return {
        "accuracy": float(right.mean()) if n else None,
        "ci95": accuracy_ci95(right) if n else None,
        "n": n,
        "correct": int(right.sum()),
    }


def compare_answers(
    answers: Sequence[Answer], classes_a: Sequence[str], classes_b: Sequence[str]
) -> dict[str, Any]:
    """``compare.json``'s content (see the module's docstring)."""
    labels = np.array([x.label for x in answers], dtype=object)
    right_a = np.array([x.a == x.label for x in answers], dtype=bool)
    right_b = np.array([x.b == x.label for x in answers], dtype=bool)
    known_a = np.isin(labels, list(classes_a))
    known_b = np.isin(labels, list(classes_b))
    both = known_a & known_b
    paired = compare_paired(
        labels[both],
        np.array([x.a for x in answers], dtype=object)[both],
        np.array([x.b for x in answers], dtype=object)[both],
    )
    fixed = [asdict(x) for x, k, ra, rb in zip(answers, both, right_a, right_b) if k and rb and not ra]
    broken = [asdict(x) for x, k, ra, rb in zip(answers, both, right_a, right_b) if k and ra and not rb]
    return {
        "n_images": len(answers),
        "a": {**_side(right_a[known_a]), "classes": list(classes_a)},
        "b": {**_side(right_b[known_b]), "classes": list(classes_b)},
        "both": {
            "n": paired.n,
            "a_accuracy": paired.a_accuracy if paired.n else None,
            "b_accuracy": paired.b_accuracy if paired.n else None,
            "a_ci95": paired.a_ci95 if paired.n else None,
            "b_ci95": paired.b_ci95 if paired.n else None,
        },
        "mcnemar_p": paired.p_two_sided,
        "mcnemar": {
            "n_fixed": paired.only_b_right,
            "n_broken": paired.only_a_right,
            "test": "exact (binomial)",
        },
        "interval": "Wilson score, 95%",
        "per_class": _per_class(labels, right_a, right_b, classes_a, classes_b),
        "fixed": fixed,
        "broken": broken,
    }


def _per_class(
    labels: np.ndarray,
    right_a: np.ndarray,
    right_b: np.ndarray,
    classes_a: Sequence[str],
    classes_b: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """Each class's accuracy (recall) under A and B, the change, and whether the class is new in B."""
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(set(labels.tolist()) | set(classes_a) | set(classes_b)):
        mask = labels == name
        a = _side(right_a[mask]) if name in classes_a else None
        b = _side(right_b[mask]) if name in classes_b else None
        change = (
            b["accuracy"] - a["accuracy"]
            if a and b and a["accuracy"] is not None and b["accuracy"] is not None
            else None
        )
        out[name] = {
            "n": int(mask.sum()),
            "a_accuracy": a["accuracy"] if a else None,
            "a_ci95": a["ci95"] if a else None,
            "b_accuracy": b["accuracy"] if b else None,
            "b_ci95": b["ci95"] if b else None,
            "change": change,
            "status": "new in B"
            if name not in classes_a
            else "dropped in B"
            if name not in classes_b
            else "",
        }
    return out


__all__ = ["Answer", "compare_answers"]
