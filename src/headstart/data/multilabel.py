"""Multi-label data: label sets as multi-hot rows, and a seeded split that keeps every label in train.

A multi-label image carries several labels (``Sample.labels``). Its split is drawn by iterative
stratification (Sechidis et al., ``iterstrat``), which keeps each label's share close to the
fractions in every split; duplicate groups then stay on one side, as in single-label splits, and
any label left without a training image gets one back.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from headstart.core.errors import HeadstartError
from headstart.data.discovery import Sample
from headstart.data.splits import _check_fractions, keep_groups_together


def label_names(samples: Sequence[Sample]) -> list[str]:
    """Every label any sample carries, sorted."""
    return sorted({name for s in samples for name in s.label_set})


def multi_hot(samples: Sequence[Sample], classes: Sequence[str]) -> np.ndarray:
    """One row per sample, one 0/1 column per class (labels not in ``classes`` are ignored)."""
    index = {name: i for i, name in enumerate(classes)}
    out = np.zeros((len(samples), len(classes)), dtype=np.float32)
    for row, s in enumerate(samples):
        for name in s.label_set:
            if name in index:
                out[row, index[name]] = 1.0
    return out


def _shuffle_split(y: np.ndarray, rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The rows (of ``rows``) that iterative stratification sends to the held-out part."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    if fraction <= 0 or len(rows) < 2:
        return np.zeros(0, dtype=int)
    n_out = max(1, int(round(fraction * len(rows))))
    if n_out >= len(rows):
        return np.zeros(0, dtype=int)
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n_out, random_state=seed)
    _, held = next(splitter.split(np.zeros((len(rows), 1)), y[rows]))
    return rows[np.sort(held)]


def make_multilabel_split(
    y: np.ndarray,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    groups: Sequence[Sequence[int]] | None = None,
    group_labels: Sequence[str] | None = None,
) -> list[str]:
    """Seeded train/val/test assignment of multi-hot rows ``y`` by iterative stratification.

    ``groups`` (duplicate images) are kept on one side (see ``keep_groups_together``, which is
    given ``group_labels``, the joined label sets, so a move never takes a label set out of
    train); then every label some image carries has at least one training image.
    """
    _, f_val, f_test = _check_fractions(fractions)
    n = len(y)
    if n < 3:
        raise HeadstartError(f"{n} usable image(s): at least 3 are needed for train/validation/test")
    out = np.array(["train"] * n, dtype=object)
    test = _shuffle_split(y, np.arange(n), f_test, seed)
    out[test] = "test"
    rest = np.flatnonzero(out == "train")
    val = _shuffle_split(y, rest, f_val / max(1e-9, 1.0 - f_test), seed + 1)
    out[val] = "val"
    names = [str(v) for v in out]
    if groups:
        names = keep_groups_together(names, groups, group_labels)
    return keep_labels_in_train(names, y)


def keep_labels_in_train(splits: Sequence[str], y: np.ndarray) -> list[str]:
    """Move one image of each label that no training image carries into train (the one with the
    fewest labels, so the other splits lose least); labels no image carries are left alone."""
    out = list(splits)
    is_train = np.array([s == "train" for s in out])
    for label in range(y.shape[1]):
        carriers = np.flatnonzero(y[:, label] > 0)
        if len(carriers) == 0 or is_train[carriers].any():
            continue
        chosen = int(min(carriers, key=lambda i: (y[i].sum(), i)))
        out[chosen] = "train"
        is_train[chosen] = True
    return out


def assign_multilabel_splits(
    samples: Sequence[Sample],
    classes: Sequence[str],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    groups: Sequence[Sequence[int]] | None = None,
) -> tuple[list[str], str]:
    """Predefined splits where given (a missing val/test carved from train); else iterative
    stratification. Returns each sample's split and how it was made."""
    y = multi_hot(samples, classes)
    joined = [s.label for s in samples]
    given = [s.split for s in samples]
    if all(g is None for g in given):
        method = "iterative stratification (multi-label)" + (
            ", duplicate groups kept together" if groups else ""
        )
        return make_multilabel_split(y, fractions, seed, groups, joined), method
    f_train, f_val, f_test = _check_fractions(fractions)
    out = [g or "train" for g in given]
    missing = [s for s in ("val", "test") if s not in set(out)]
    if not missing:
        return out, "predefined"
    train_idx = np.array([i for i, g in enumerate(out) if g == "train"])
    sub = (f_train, f_val if "val" in missing else 0.0, f_test if "test" in missing else 0.0)
    inner = make_multilabel_split(y[train_idx], sub, seed)
    for i, g in zip(train_idx, inner):
        out[int(i)] = g
    return out, f"predefined (+{'/'.join(missing)} carved from train, iterative stratification)"
