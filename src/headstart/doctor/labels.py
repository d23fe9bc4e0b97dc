"""Likely wrong labels: confident learning (Northcutt et al., 2021) through cleanlab, on class
probabilities that no image's own label shaped.

Each image's probabilities are the mean of two estimates that never saw its label: a
cross-validated logistic regression on the backbone features (out of fold), and the labels of
its nearest other images (weighted by feature similarity). cleanlab's ``find_label_issues``
decides which images are issues (``prune_by_noise_rate``: as many per pair of classes as the
estimated noise between them) and ranks every image by self-confidence; cleanlab's
``find_overlapping_classes`` names the pairs of classes most often confused.

What stays ours, because cleanlab does not do it: the neighbour evidence quoted per image, the
suggested label (cleanlab says which label is wrong, not which is right: ours is the most
probable class among those whose per-class threshold the image reaches), and, in the rest of
the doctor, duplicates, bad files and leaks. ``rank_label_issues`` is the doctor's own confident
learning as it was before cleanlab (kept: it still gives the suggested label, and
``benchmarks/doctor_label_noise.py`` measures it against the current queue).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headstart.data.discovery import Sample

# Measured on flowers with 5% and 20% of labels flipped (benchmarks/doctor_label_noise.py): a
# head regularised harder than a classifier's (C 0.001, was 0.03) overfits the flipped labels
# less, and averaging in the neighbours' labels lifts both recall and the first-k ranking.
LABEL_C = 0.001
BEFORE_C = 0.03  # the head of the doctor before cleanlab, for ``rank_label_issues``
LABEL_NEIGHBOURS = 20  # nearest images whose labels vote
NEIGHBOUR_TEMPERATURE = 0.05  # a vote weighs exp(cosine / T): the nearest count most
QUOTED_NEIGHBOURS = 5  # nearest images quoted as evidence per issue
MAX_CONFUSED_PAIRS = 10


@dataclass
class LabelFindings:
    """What the label check found: every image ranked (most suspicious first), the likely
    issues with their evidence, and the pairs of classes most often confused."""

    ranking: list[dict[str, Any]]
    issues: list[dict[str, Any]]
    confused_pairs: list[dict[str, Any]] = field(default_factory=list)


def out_of_fold_proba(
    features: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    folds: int = 5,
    seed: int = 0,
    c: float = LABEL_C,
) -> np.ndarray | None:
    """Cross-validated class probabilities: each image scored by a model that never saw it.

    Standardised features, multinomial logistic regression, stratified ``folds``-fold split.
    None when a class has fewer than two images (no fold could hold it out).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    smallest = np.bincount(y, minlength=n_classes)[np.unique(y)].min() if len(y) else 0
    folds = int(min(folds, smallest))
    if folds < 2 or len(np.unique(y)) < 2:
        return None
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=300, tol=1e-3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proba = cross_val_predict(
            model,
            features,
            y,
            cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
            method="predict_proba",
        )
    full = np.zeros((len(y), n_classes))
    full[:, np.unique(y)] = proba
    return full


def neighbour_proba(
    y: np.ndarray,
    nn_idx: np.ndarray,
    nn_sim: np.ndarray,
    n_classes: int,
    temperature: float = NEIGHBOUR_TEMPERATURE,
) -> np.ndarray:
    """Each image's class distribution among its nearest other images (never itself), each
    neighbour weighing exp(cosine / ``temperature``); a small floor keeps every class possible."""
    n, k = nn_idx.shape
    votes = np.full((n, n_classes), 1e-3)
    if k:
        weights = np.exp((nn_sim - nn_sim[:, :1]) / temperature)  # shifted by each row's max: no overflow
        np.add.at(votes, (np.repeat(np.arange(n), k), y[nn_idx].ravel()), weights.ravel())
    return votes / votes.sum(axis=1, keepdims=True)


def label_proba(
    features: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    nn_idx: np.ndarray,
    nn_sim: np.ndarray,
    folds: int = 5,
    seed: int = 0,
) -> np.ndarray | None:
    """The probabilities the label check judges by: the mean of the out-of-fold logistic
    regression's and the neighbours' (the classifier's alone where no neighbours are given).
    None when the labels cannot be cross-validated."""
    proba = out_of_fold_proba(features, y, n_classes, folds, seed)
    if proba is None or not nn_idx.shape[1]:
        return proba
    return (proba + neighbour_proba(y, nn_idx, nn_sim, n_classes)) / 2


def rank_label_issues(proba: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confident learning, the few lines of it (Northcutt et al., 2021): the doctor's own before
    cleanlab, kept for its suggested label and as the benchmark's "before".

    A class's threshold is the mean probability the model gives that class on images labelled
    with it. An image's confident label is its most probable class among those whose threshold
    it reaches; it is a label issue when that differs from its given label. Returns (order of
    all images by self-confidence, lowest first; issue mask; confident label per image).
    """
    n, k = proba.shape
    thresholds = np.array([proba[y == j, j].mean() if (y == j).any() else 1.0 for j in range(k)])
    above = proba >= thresholds[None, :]
    masked = np.where(above, proba, -1.0)
    confident = masked.argmax(axis=1)
    has = above.any(axis=1)
    issue = has & (confident != y)
    self_conf = proba[np.arange(n), y]
    order = np.lexsort((np.arange(n), self_conf))
    return order, issue, np.where(has, confident, proba.argmax(axis=1))


def find_label_issues(proba: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cleanlab's confident learning: (order of all images by cleanlab's self-confidence score,
    lowest first; issue mask from ``find_label_issues`` with ``prune_by_noise_rate``; suggested
    label per image, which is never the given one for an issue)."""
    from cleanlab.filter import find_label_issues as cleanlab_issues
    from cleanlab.rank import get_label_quality_scores

    n = len(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = cleanlab_issues(y, proba, filter_by="prune_by_noise_rate", n_jobs=1)
        quality = get_label_quality_scores(y, proba, method="self_confidence")
    order = np.lexsort((np.arange(n), quality))
    _, _, suggested = rank_label_issues(proba, y)
    other = np.where(np.arange(proba.shape[1])[None, :] == y[:, None], -1.0, proba).argmax(axis=1)
    suggested = np.where(found & (suggested == y), other, suggested)
    return order, np.asarray(found, dtype=bool), suggested


def confused_pairs(proba: np.ndarray, y: np.ndarray, classes: Sequence[str]) -> list[dict[str, Any]]:
    """The pairs of classes most often confused, by cleanlab's ``find_overlapping_classes``: how
    many images of one are estimated to belong to the other (both ways), and that share of the
    data set (joint probability). Pairs with none are left out."""
    from cleanlab.dataset import find_overlapping_classes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = find_overlapping_classes(labels=y, pred_probs=proba, class_names=list(classes))
    pairs = []
    for row in table.head(MAX_CONFUSED_PAIRS).itertuples(index=False):
        count = int(row[table.columns.get_loc("Num Overlapping Examples")])
        if count:
            pairs.append(
                {
                    "a": str(row[table.columns.get_loc("Class Name A")]),
                    "b": str(row[table.columns.get_loc("Class Name B")]),
                    "images": count,
                    "joint_probability": round(float(row[table.columns.get_loc("Joint Probability")]), 4),
                }
            )
    return pairs


def label_records(
    samples: Sequence[Sample],
    features: np.ndarray,
    nn_idx: np.ndarray,
    nn_sim: np.ndarray,
    folds: int = 5,
    seed: int = 0,
) -> LabelFindings | None:
    """Every image ranked by self-confidence (lowest first), the likely label issues with their
    evidence (probabilities and the labels of the nearest images), and the confused pairs.

    ``nn_idx``/``nn_sim``: each image's nearest other images, most similar first; all of them
    vote, the first ``QUOTED_NEIGHBOURS`` are quoted. None when the labels cannot be
    cross-validated (one class, or a class of one image).
    """
    classes = sorted({s.label for s in samples})
    y = np.array([classes.index(s.label) for s in samples], dtype=np.int64)
    proba = label_proba(features, y, len(classes), nn_idx, nn_sim, folds, seed) if len(classes) > 1 else None
    if proba is None:
        return None
    order, issue, suggested = find_label_issues(proba, y)
    findings = LabelFindings([], [], confused_pairs(proba, y, classes))
    for rank, i in enumerate(order, start=1):
        record = {
            "rank": rank,
            "path": samples[i].path,
            "given_label": samples[i].label,
            "suggested_label": classes[suggested[i]],
            "self_confidence": round(float(proba[i, y[i]]), 4),
            "suggested_probability": round(float(proba[i, suggested[i]]), 4),
            "is_issue": bool(issue[i]),
        }
        findings.ranking.append(record)
        if issue[i]:
            findings.issues.append(_with_evidence(record, samples, nn_idx[i], nn_sim[i]))
    return findings


def _with_evidence(
    record: dict[str, Any], samples: Sequence[Sample], nn_idx: np.ndarray, nn_sim: np.ndarray
) -> dict[str, Any]:
    """An issue's record with why: its probabilities, and the nearest images with their labels."""
    given, best = record["given_label"], record["suggested_label"]
    neighbours = [int(j) for j in nn_idx[:QUOTED_NEIGHBOURS]]
    agree = sum(samples[j].label == best for j in neighbours)
    return {
        **record,
        "evidence": (
            f"probability {record['self_confidence']:.2f} for '{given}' vs "
            f"{record['suggested_probability']:.2f} for '{best}' (out-of-fold classifier and "
            f"nearest images); {agree} of {len(neighbours)} nearest images are '{best}'"
        ),
        "neighbours": [
            {"path": samples[j].path, "label": samples[j].label, "cosine": round(float(s), 4)}
            for j, s in zip(neighbours, nn_sim[:QUOTED_NEIGHBOURS])
        ],
    }
