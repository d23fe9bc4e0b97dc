"""Seeded, stratified train/val/test splits that keep duplicate groups on one side.

Stable splits (what ``fit`` uses, given each image's content hash): an image's split is a
function of the seed and its own bytes only, so adding photos or a class, renaming or moving a
file, or relabelling it moves no existing image between train, validation and test. Why the
content and not the path: a rename or a move to another class folder keeps the bytes; two copies
of one photo (even under two labels) land on the same side, never one in train and one in test;
and the content hash is already known (the feature cache keys on it and remembers it by file
stat), so it costs no extra read. An edited photo is a new image and may move.

Each class is stratified in expectation (every image draws its own uniform number), then a
class with no image in validation or test gets its one nearest candidate moved there.

Without hashes (``keys=None``) the split is the older per-class permutation: a split depends
only on the seed, the labels and the groups; per-class random streams mean adding a class never
reshuffles the others, but adding an image to a class reshuffles that class.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import Counter
from collections.abc import Sequence

import numpy as np

from headstart.core.errors import HeadstartError
from headstart.data.discovery import Sample


def _class_rng(seed: int, label: str) -> np.random.Generator:
    # Per-class streams: adding a class never reshuffles the others.
    return np.random.default_rng([seed, zlib.crc32(label.encode("utf-8", "surrogateescape"))])


def hash_fraction(seed: int, key: str) -> float:
    """A uniform number in [0, 1) fixed by the seed and an image's key (its content hash)."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def make_split(
    labels: Sequence[str],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    groups: Sequence[Sequence[int]] | None = None,
    keys: Sequence[str | None] | None = None,
) -> list[str]:
    """Seeded, stratified train/val/test assignment: every class is in every split.

    ``keys`` (each image's content hash) make the split stable (see the module's docstring);
    without them it is the older per-class permutation. ``groups`` (lists of indices, e.g.
    near-duplicate images) are each kept on one side; see :func:`keep_groups_together`.
    """
    fractions = _check_fractions(fractions)
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    out = ["train"] * len(labels)
    need = 1 + (fractions[1] > 0) + (fractions[2] > 0)
    for label, idx in sorted(by_class.items()):
        if len(idx) < need:
            raise HeadstartError(
                f"class '{label}' has {len(idx)} usable image(s): at least {need} are needed to put one in "
                "each of train/validation/test (add images, or remove the class)"
            )
        if keys is None:
            _permuted_class(out, idx, fractions, seed, label)
        else:
            _hashed_class(out, idx, fractions, [hash_fraction(seed, keys[i] or labels[i]) for i in idx])
    return keep_groups_together(out, groups, labels) if groups else out


def _hashed_class(
    out: list[str], idx: Sequence[int], fractions: tuple[float, float, float], draws: Sequence[float]
) -> None:
    """One class, stably: test below ``f_test``, validation up to ``f_test + f_val``, train above.

    Rule for small classes: train keeps at least one image (the highest draw), and an empty
    validation or test split takes one image from a split that has more than one (train first,
    its lowest draw: the nearest to the held-out ranges), so a class only moves images when it
    would otherwise miss a split.
    """
    _, f_val, f_test = fractions
    for i, u in zip(idx, draws):
        out[i] = "test" if u < f_test else "val" if u < f_test + f_val else "train"
    ranked = sorted(zip(draws, idx))
    if not any(out[i] == "train" for i in idx):
        out[ranked[-1][1]] = "train"
    for name, wanted in (("test", f_test), ("val", f_val)):
        counts = Counter(out[i] for i in idx)
        if wanted <= 0 or counts[name]:
            continue
        donors = [(out[i] != "train", u, i) for u, i in ranked if counts[out[i]] > 1]
        if donors:
            out[min(donors)[2]] = name


def _permuted_class(
    out: list[str], idx: Sequence[int], fractions: tuple[float, float, float], seed: int, label: str
) -> None:
    """One class, by its seeded permutation (the split of runs before stable splits)."""
    _, f_val, f_test = fractions
    n = len(idx)
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
    keys: Sequence[str | None] | None = None,
    recorded: Sequence[str | None] | None = None,
) -> tuple[list[str], str]:
    """Use predefined splits where given; fill a missing val/test from train, stratified.

    ``keys`` (content hashes) make every split this draws stable (see the module's docstring).
    ``recorded`` (a split per sample, None for an image an earlier run did not have) is kept
    as it is, over all else: ``train --from RUN`` scores the images RUN held out as RUN did.
    ``groups`` (duplicate images) stay on one side of every split this makes; predefined
    splits are never changed (a group across them is a leak to report, not to fix silently).
    """
    if recorded is not None and any(r is not None for r in recorded):
        drawn, method = assign_splits(samples, fractions, seed, groups, keys)
        kept = [r if r in ("train", "val", "test") else d for r, d in zip(recorded, drawn)]
        n_kept = sum(r is not None for r in recorded)
        return kept, f"recorded for {n_kept} image(s), {method} for the rest"
    given = [s.split for s in samples]
    if all(g is None for g in given):
        method = ("stable " if keys is not None else "") + "stratified"
        method += ", duplicate groups kept together" if groups else ""
        return make_split([s.label for s in samples], fractions, seed, groups, keys), method
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
            [samples[i].label for i in train_idx],
            sub,
            seed,
            [g for g in inner_groups if len(g) > 1],
            None if keys is None else [keys[i] for i in train_idx],
        )
        for i, g in zip(train_idx, inner):
            out[i] = g
        return out, f"predefined (+{'/'.join(missing)} carved from train)"
    return out, "predefined"
