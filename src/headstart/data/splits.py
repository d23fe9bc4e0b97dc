"""Seeded, stratified train/val/test splits that keep duplicate groups on one side.

A split depends only on the seed, the labels and the groups: per-class random streams mean
adding a class never reshuffles the others.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence

import numpy as np

from headstart.core.errors import HeadstartError
from headstart.data.discovery import Sample


def _class_rng(seed: int, label: str) -> np.random.Generator:
    # Per-class streams: adding a class never reshuffles the others.
    return np.random.default_rng([seed, zlib.crc32(label.encode("utf-8", "surrogateescape"))])


def make_split(
    labels: Sequence[str],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    groups: Sequence[Sequence[int]] | None = None,
) -> list[str]:
    """Seeded, stratified train/val/test assignment: every class is in every split.

    ``groups`` (lists of indices, e.g. duplicate images) are each kept on one side; see
    :func:`keep_groups_together`. Without groups the split is what it always was.
    """
    f_train, f_val, f_test = _check_fractions(fractions)
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    out = ["train"] * len(labels)
    need = 1 + (f_val > 0) + (f_test > 0)
    for label, idx in sorted(by_class.items()):
        n = len(idx)
        if n < need:
            raise HeadstartError(
                f"class '{label}' has {n} usable image(s): at least {need} are needed to put one in "
                "each of train/validation/test (add images, or remove the class)"
            )
        order = _class_rng(seed, label).permutation(idx)
        n_test = max(1, round(n * f_test)) if f_test > 0 else 0
        n_val = max(1, round(n * f_val)) if f_val > 0 else 0
        while n - n_test - n_val < 1:  # keep at least one training image
            if n_val > 1:
                n_val -= 1
            else:
                n_test -= 1
        for i in order[:n_test]:
            out[i] = "test"
        for i in order[n_test : n_test + n_val]:
            out[i] = "val"
    return keep_groups_together(out, groups, labels) if groups else out


def keep_groups_together(
    splits: Sequence[str], groups: Sequence[Sequence[int]], labels: Sequence[str] | None = None
) -> list[str]:
    """Move each group's members to one split: the one most of them drew, ties to train.

    Applied after the plain seeded split, so data without groups splits exactly as before, and
    a copy of a training image never lands in validation or test. A group whose move would
    empty a split, or (given ``labels``) take a class out of train, is left as drawn (and so
    shows up as a group across splits) rather than making training fail.
    """
    out = list(splits)
    rank = {"train": 0, "val": 1, "test": 2}
    labels = labels if labels is not None else [""] * len(out)
    count = Counter(out) + Counter((lab, s) for lab, s in zip(labels, out) if s == "train")
    for group in groups:
        if len({out[i] for i in group}) < 2:
            continue
        votes = Counter(out[i] for i in group)
        target = min(votes, key=lambda s: (-votes[s], rank.get(s, 3)))
        after = count.copy()
        for i in group:
            for key, step in ((out[i], -1), (target, 1)):
                after[key] += step
                if key == "train":
                    after[(labels[i], "train")] += step
        if any(after[key] <= 0 < count[key] for key in count):
            continue
        count = after
        for i in group:
            out[i] = target
    return out


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or fractions[0] <= 0:
        raise HeadstartError(
            f"--split needs three fractions train,val,test like 0.8,0.1,0.1 (got {fractions})"
        )
    total = float(sum(fractions))
    return fractions[0] / total, fractions[1] / total, fractions[2] / total


def parse_split(text: str) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` as normalised train, val and test fractions."""
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError as e:
        raise HeadstartError(f"--split takes fractions like 0.8,0.1,0.1 (got '{text}')") from e
    return _check_fractions(parts)


def assign_splits(
    samples: Sequence[Sample],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    groups: Sequence[Sequence[int]] | None = None,
) -> tuple[list[str], str]:
    """Use predefined splits where given; fill a missing val/test from train, stratified.

    ``groups`` (duplicate images) stay on one side of every split this makes; predefined
    splits are never changed (a group across them is a leak to report, not to fix silently).
    """
    given = [s.split for s in samples]
    if all(g is None for g in given):
        method = "stratified" + (", duplicate groups kept together" if groups else "")
        return make_split([s.label for s in samples], fractions, seed, groups), method
    f_train, f_val, f_test = _check_fractions(fractions)
    out = [g or "train" for g in given]
    present = set(out)
    missing = [s for s in ("val", "test") if s not in present]
    if missing:
        train_idx = [i for i, g in enumerate(out) if g == "train"]
        sub = (
            f_train,
            f_val if "val" in missing else 0.0,
            f_test if "test" in missing else 0.0,
        )
        where = {i: k for k, i in enumerate(train_idx)}
        inner_groups = [[where[i] for i in g if i in where] for g in groups or ()]
        inner = make_split(
            [samples[i].label for i in train_idx], sub, seed, [g for g in inner_groups if len(g) > 1]
        )
        for i, g in zip(train_idx, inner):
            out[i] = g
        return out, f"predefined (+{'/'.join(missing)} carved from train)"
    return out, "predefined"
