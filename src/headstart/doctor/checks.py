"""The data doctor: broken files, duplicates, leaks, likely wrong labels and class imbalance.

Small transfer-learning data sets are scraped and hand-sorted, and their flaws decide the
accuracy more than the backbone does. ``diagnose`` looks at every file (decoding it, a
perceptual hash), reuses the cached backbone features (exact duplicates by content hash, near
duplicates by feature cosine similarity, label issues by out-of-fold probabilities: the
confident-learning idea), and writes ``doctor.json`` plus a self-contained HTML page.
``quick_check`` is the cheap subset that ``train`` runs on the features it extracts anyway.

Nothing here writes to the user's data: every check only reads.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from headstart.core.errors import BadImageError, HeadstartError
from headstart.core.progress import ConsoleProgress, NullProgress, ProgressSink
from headstart.core.system import usable_core_count
from headstart.data.discovery import Dataset, Sample, discover
from headstart.data.images import decode_image, read_bytes
from headstart.reporting.doctor_page import write_doctor_page

MIN_SIDE = 32  # pixels: smaller images carry almost nothing once resized to the backbone's input
MAX_ASPECT = 10.0  # longer side / shorter side beyond which the centre crop keeps a sliver
NEAR_COSINE = 0.95  # feature cosine similarity at or above which two images are near duplicates
HASH_DISTANCE = 6  # dHash bits (of 64) within which two images look alike...
HASH_COSINE = 0.85  # ...and are near duplicates when their features also agree this much
IMBALANCE_RATIO = 1.5  # largest class / smallest class from which imbalance is reported
NEIGHBOURS = 5  # nearest neighbours quoted as evidence for a label issue
MAX_PAIRS_PER_IMAGE = 5  # more similar pairs than this per image: features are not discriminative


# --------------------------------------------------------------------------- per-file checks


def dhash(img: Image.Image, size: int = 8) -> int:
    """Difference hash: 64 bits of 'is this pixel brighter than its right neighbour'."""
    small = np.asarray(img.convert("L").resize((size + 1, size), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


@dataclass
class FileCheck:
    """What looking at one file found: a problem (with severity) or nothing; size and dHash."""

    path: str
    problem: str | None = None
    severity: str | None = None  # "error": unusable, train skips it; "warning": used, but look at it
    width: int | None = None
    height: int | None = None
    dhash: int | None = None


def check_file(path: str, min_side: int = MIN_SIDE, max_aspect: float = MAX_ASPECT) -> FileCheck:
    """Read and fully decode one file (small, via JPEG draft mode) and judge it."""
    out = FileCheck(path)
    try:
        data = read_bytes(path)
        width = height = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(io.BytesIO(data)) as header:
                    width, height = header.size
        except Exception:  # noqa: BLE001 - decode_image below names the reason
            pass
        img = decode_image(data, min_side=64)
    except BadImageError as e:
        out.problem, out.severity = e.reason, "error"
        return out
    out.width, out.height = (width, height) if width else img.size
    out.dhash = dhash(img)
    w, h = out.width, out.height
    if min(w, h) < min_side:
        out.problem, out.severity = f"tiny: {w}x{h} px (under {min_side} px)", "warning"
    elif max(w, h) / max(min(w, h), 1) > max_aspect:
        out.problem, out.severity = f"extreme aspect ratio: {w}x{h} (over {max_aspect:g}:1)", "warning"
    elif Image.MAX_IMAGE_PIXELS and w * h > Image.MAX_IMAGE_PIXELS:
        out.problem, out.severity = (
            f"huge: {w}x{h} px, over Pillow's decompression-bomb warning limit",
            "warning",
        )
    return out


def check_files(
    paths: Sequence[str], workers: int | None = None, progress: ProgressSink | None = None
) -> list[FileCheck]:
    """``check_file`` on every path in a thread pool (Pillow decodes outside the GIL)."""
    progress = progress or NullProgress()
    progress.start("checking files", len(paths))
    out: list[FileCheck] = []
    with ThreadPoolExecutor(workers or usable_core_count()) as pool:
        for check in pool.map(check_file, paths):
            out.append(check)
            progress.advance(1)
    progress.finish()
    return out


# --------------------------------------------------------------------------- duplicates


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def _unit_rows(features: np.ndarray) -> np.ndarray:
    f = np.asarray(features, dtype=np.float32)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def _block_rows(n: int, budget: int = 8_000_000) -> int:
    """Rows per block of an all-pairs computation so one block holds ~``budget`` floats."""
    return max(16, min(1024, budget // max(n, 1)))


def similar_pairs(
    features: np.ndarray,
    threshold: float,
    k: int = NEIGHBOURS,
    block: int | None = None,
    max_pairs: int | None = None,
) -> tuple[list[tuple[int, int, float]] | None, np.ndarray, np.ndarray]:
    """Pairs (i < j) with cosine >= threshold, plus each row's k nearest neighbours.

    Computed in row blocks of at most 8M similarities (32 MB), however large the set.
    More than ``max_pairs`` pairs (features that do not tell images apart, e.g. an untrained
    backbone) gives None instead of a list that would swallow the data set.
    """
    unit = _unit_rows(features)
    n = len(unit)
    block = block or _block_rows(n)
    k = min(k, max(n - 1, 0))
    pairs: list[tuple[int, int, float]] | None = []
    nn_idx = np.zeros((n, k), dtype=np.int64)
    nn_sim = np.zeros((n, k), dtype=np.float32)
    for start in range(0, n, block):
        sims = unit[start : start + block] @ unit.T
        rows = np.arange(len(sims))
        sims[rows, start + rows] = -np.inf  # never one's own neighbour
        if pairs is not None:
            ii, jj = np.nonzero(sims >= threshold)
            pairs += [(start + i, j, float(sims[i, j])) for i, j in zip(ii, jj) if start + i < j]
            if max_pairs is not None and len(pairs) > max_pairs:
                pairs = None
        if k:
            part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1)
            nn_idx[start : start + len(sims)] = np.take_along_axis(part, order, axis=1)
            nn_sim[start : start + len(sims)] = np.take_along_axis(
                sims, nn_idx[start : start + len(sims)], axis=1
            )
    return pairs, nn_idx, nn_sim


def hash_pairs(hashes: Sequence[int | None], max_distance: int = HASH_DISTANCE) -> list[tuple[int, int, int]]:
    """Pairs (i < j) of 64-bit dHashes within ``max_distance`` differing bits."""
    idx = [i for i, h in enumerate(hashes) if h is not None]
    if len(idx) < 2:
        return []
    bits = np.array([[(hashes[i] >> b) & 1 for b in range(64)] for i in idx], dtype=np.float32)
    out = []
    block = _block_rows(len(idx))
    for start in range(0, len(idx), block):
        a = bits[start : start + block]
        dist = a @ (1 - bits).T + (1 - a) @ bits.T
        ii, jj = np.nonzero(dist <= max_distance)
        out += [(idx[start + i], idx[j], int(dist[i, j])) for i, j in zip(ii, jj) if start + i < j]
    return out


@dataclass
class DuplicateGroup:
    """Images that are the same picture: identical bytes (``exact``) or nearly (``near``)."""

    members: list[int]
    kind: str
    evidence: list[dict[str, Any]] = field(default_factory=list)


def find_duplicates(
    content_hashes: Sequence[str | None],
    features: np.ndarray | None = None,
    image_hashes: Sequence[int | None] | None = None,
    near_cosine: float = NEAR_COSINE,
    hash_distance: int = HASH_DISTANCE,
    hash_cosine: float = HASH_COSINE,
) -> tuple[list[DuplicateGroup], np.ndarray, np.ndarray, list[str]]:
    """Group duplicates: same content hash; or feature cosine >= ``near_cosine``; or a dHash
    within ``hash_distance`` bits confirmed by cosine >= ``hash_cosine``.

    Returns the groups (two or more members each, sorted), every row's nearest neighbours, and
    notes (e.g. why near duplicates were not looked for).
    """
    notes: list[str] = []
    n = len(content_hashes)
    uf = _UnionFind(n)
    evidence: list[tuple[int, int, dict[str, Any]]] = []
    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(content_hashes):
        if h is not None:
            by_hash.setdefault(h, []).append(i)
    for same in by_hash.values():
        for j in same[1:]:
            uf.union(same[0], j)
    nn_idx = np.zeros((n, 0), dtype=np.int64)
    nn_sim = np.zeros((n, 0), dtype=np.float32)
    if features is not None and n > 1:
        low = min(near_cosine, hash_cosine) if image_hashes is not None else near_cosine
        found, nn_idx, nn_sim = similar_pairs(features, low, max_pairs=MAX_PAIRS_PER_IMAGE * n)
        if found is None:
            notes.append(
                f"near duplicates not checked: over {MAX_PAIRS_PER_IMAGE} image pairs per image have feature "
                f"cosine >= {low:g}, so this backbone's features do not tell these images apart"
            )
        cos = {(i, j): s for i, j, s in found or []}
        close = {(i, j): d for i, j, d in hash_pairs(image_hashes)} if image_hashes is not None else {}
        for (i, j), s in cos.items():
            if content_hashes[i] is not None and content_hashes[i] == content_hashes[j]:
                continue
            if s >= near_cosine or ((i, j) in close and s >= hash_cosine):
                uf.union(i, j)
                info: dict[str, Any] = {"cosine": round(s, 4)}
                if (i, j) in close:
                    info["dhash_distance"] = close[(i, j)]
                evidence.append((i, j, info))
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(uf.find(i), []).append(i)
    groups = []
    for root, idx in sorted(members.items()):
        if len(idx) < 2:
            continue
        exact = len({content_hashes[i] for i in idx}) == 1
        ev = [{"a": i, "b": j, **info} for i, j, info in evidence if uf.find(i) == root]
        groups.append(DuplicateGroup(idx, "exact" if exact else "near", ev))
    return groups, nn_idx, nn_sim, notes


# --------------------------------------------------------------------------- label issues


def out_of_fold_proba(
    features: np.ndarray, y: np.ndarray, n_classes: int, folds: int = 5, seed: int = 0, c: float = 0.03
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


def rank_label_issues(proba: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confident learning, the few lines of it (Northcutt et al., 2021).

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


# --------------------------------------------------------------------------- the quick check (train)


@dataclass
class CheckReport:
    """What a data check found, index-aligned with the samples it was given."""

    samples: list[Sample]
    groups: list[DuplicateGroup]
    class_counts: dict[str, int]
    bad_files: list[dict[str, Any]] = field(default_factory=list)
    label_issues: list[dict[str, Any]] = field(default_factory=list)
    label_ranking: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def group_indices(self) -> list[list[int]]:
        return [g.members for g in self.groups]

    def conflicts(self) -> list[DuplicateGroup]:
        """Groups whose members carry different labels."""
        return [g for g in self.groups if len({self.samples[i].label for i in g.members}) > 1]

    def leaks(self) -> list[DuplicateGroup]:
        """Groups spread over more than one predefined split."""
        return [g for g in self.groups if len({self.samples[i].split for i in g.members} - {None}) > 1]

    def imbalance(self) -> dict[str, Any]:
        counts = self.class_counts
        if not counts:
            return {"ratio": None, "suggestion": None}
        big, small = max(counts, key=counts.get), min(counts, key=counts.get)  # type: ignore[arg-type]
        ratio = counts[big] / max(counts[small], 1)
        suggestion = None
        if ratio >= IMBALANCE_RATIO:
            suggestion = (
                f"'{big}' has {ratio:.1f}x the images of '{small}': weight classes by inverse frequency "
                "(--class-weight balanced), and read per-class recall, not just accuracy"
            )
        return {"largest": big, "smallest": small, "ratio": round(ratio, 3), "suggestion": suggestion}

    def group_records(self, relative=None) -> list[dict[str, Any]]:
        rel = relative or (lambda p: p)
        out = []
        for n, g in enumerate(self.groups, start=1):
            labels = sorted({self.samples[i].label for i in g.members})
            splits = sorted({self.samples[i].split for i in g.members} - {None})
            out.append(
                {
                    "group": n,
                    "kind": g.kind,
                    "cross_class": len(labels) > 1,
                    "cross_split": len(splits) > 1,
                    "labels": labels,
                    "files": [
                        {
                            "path": rel(self.samples[i].path),
                            "label": self.samples[i].label,
                            **({"split": self.samples[i].split} if self.samples[i].split else {}),
                        }
                        for i in g.members
                    ],
                    "evidence": [
                        {
                            "a": rel(self.samples[e["a"]].path),
                            "b": rel(self.samples[e["b"]].path),
                            **{k: v for k, v in e.items() if k not in ("a", "b")},
                        }
                        for e in g.evidence
                    ],
                }
            )
        return out

    def summary_lines(self) -> list[str]:
        """The one-screen summary train prints."""
        exact = sum(g.kind == "exact" for g in self.groups)
        near = len(self.groups) - exact
        lines = [
            f"data check: {len(self.samples)} images, {len(self.class_counts)} classes; "
            f"{exact} exact + {near} near duplicate group(s) "
            f"({sum(len(g.members) for g in self.groups)} images), "
            f"{len(self.conflicts())} with conflicting labels"
        ]
        if self.bad_files:
            kinds = Counter(b["reason"].split(":")[0] for b in self.bad_files)
            lines.append(
                f"  {len(self.bad_files)} bad file(s): "
                + ", ".join(f"{n} {r}" for r, n in kinds.most_common(4))
            )
        for g in self.conflicts()[:3]:
            files = ", ".join(
                f"{Path(self.samples[i].path).name} ({self.samples[i].label})" for i in g.members[:3]
            )
            lines.append(f"  same image under different labels: {files}")
        leaks = self.leaks()
        if leaks:
            lines.append(
                f"  LEAK: {len(leaks)} duplicate group(s) span your predefined splits; the split is kept as "
                "given (headstart never moves your files). `headstart doctor` lists them in its exclude.txt: "
                "--exclude would drop the copies outside train"
            )
        imbalance = self.imbalance()
        if imbalance.get("suggestion"):
            lines.append(f"  imbalance: {imbalance['suggestion']}")
        if self.label_issues:
            lines.append(f"  {len(self.label_issues)} likely mislabeled image(s) (confident learning)")
        lines += [f"  note: {note}" for note in self.notes]
        return lines


def quick_check(
    samples: Sequence[Sample],
    features: np.ndarray,
    content_hashes: Sequence[str | None],
    bad_files: Sequence[tuple[str, str]] = (),
    near_cosine: float = NEAR_COSINE,
) -> CheckReport:
    """The cheap checks train runs: duplicates from hashes and features it already has."""
    t = time.perf_counter()
    groups, _, _, notes = find_duplicates(content_hashes, features, None, near_cosine)
    report = CheckReport(
        list(samples),
        groups,
        dict(sorted(Counter(s.label for s in samples).items())),
        [{"path": p, "reason": r, "severity": "error"} for p, r in bad_files],
        notes=notes,
    )
    report.seconds["duplicates"] = time.perf_counter() - t
    return report


def exclude_copies(report: CheckReport) -> list[tuple[int, str]]:
    """Which copies to drop so no duplicate group crosses a split or a label.

    Leak: keep the train copies (or the first split's), drop the others. Conflicting labels:
    drop them all (which label is right is for a person to say).
    """
    out: list[tuple[int, str]] = []
    order = {"train": 0, "val": 1, "test": 2}
    for g in report.groups:
        labels = {report.samples[i].label for i in g.members}
        if len(labels) > 1:
            out += [(i, "duplicate with conflicting labels") for i in g.members]
            continue
        splits = {report.samples[i].split for i in g.members} - {None}
        if len(splits) > 1:
            keep = min(splits, key=lambda s: order.get(s, 9))
            out += [
                (i, f"leak: copy of a {keep} image") for i in g.members if report.samples[i].split != keep
            ]
    return out


# --------------------------------------------------------------------------- the full doctor


def diagnose(
    data: str | Path | Dataset,
    backbone: str | None = None,
    weights: str | Path | None = None,
    labels_from: str = "auto",
    cache_dir: str | Path | None = None,
    engine: str = "auto",
    batch_size: int = 8,
    workers: int | None = None,
    folds: int = 5,
    seed: int = 0,
    near_cosine: float = NEAR_COSINE,
    verbose: bool = True,
) -> CheckReport:
    """Every check: file health, exact/near duplicates, label issues, class balance."""
    from headstart.features.extractor import FeatureCache, FeatureExtractor
    from headstart.models.backbones import DEFAULT_BACKBONE, create_backbone

    seconds: dict[str, float] = {}
    t = time.perf_counter()
    dataset = data if isinstance(data, Dataset) else discover(data, labels_from)
    seconds["discover"] = time.perf_counter() - t
    progress = ConsoleProgress() if verbose else NullProgress()

    t = time.perf_counter()
    checks = check_files(dataset.paths, workers, progress)
    seconds["check_files"] = time.perf_counter() - t

    t = time.perf_counter()
    cache = FeatureCache(cache_dir)
    bb = create_backbone(backbone or DEFAULT_BACKBONE, weights, cache.root)
    result = FeatureExtractor(
        bb, cache=cache, engine=engine, batch_size=batch_size, workers=workers, progress=progress
    ).extract(dataset.paths)
    seconds["features"] = time.perf_counter() - t

    bad = [{"path": p, "reason": r, "severity": "error", "stage": "discovery"} for p, r in dataset.ignored]
    usable = []
    for i, (sample, check) in enumerate(zip(dataset.samples, checks)):
        reason = check.problem if check.severity == "error" else result.errors.get(i)
        if reason:
            bad.append({"path": sample.path, "reason": reason, "severity": "error", "stage": "decode"})
            continue
        if check.problem:
            bad.append(
                {
                    "path": sample.path,
                    "reason": check.problem,
                    "severity": "warning",
                    "stage": "check",
                    "width": check.width,
                    "height": check.height,
                }
            )
        usable.append(i)
    samples = [dataset.samples[i] for i in usable]
    features = result.features[usable]

    t = time.perf_counter()
    groups, nn_idx, nn_sim, notes = find_duplicates(
        [result.hashes[i] for i in usable], features, [checks[i].dhash for i in usable], near_cosine
    )
    seconds["duplicates"] = time.perf_counter() - t
    report = CheckReport(
        samples, groups, dict(sorted(Counter(s.label for s in samples).items())), bad, notes=notes
    )

    t = time.perf_counter()
    classes = sorted(report.class_counts)
    y = np.array([classes.index(s.label) for s in samples], dtype=np.int64)
    proba = out_of_fold_proba(features, y, len(classes), folds, seed) if len(classes) > 1 else None
    if proba is not None:
        order, issue, suggested = rank_label_issues(proba, y)
        for rank, i in enumerate(order, start=1):
            neighbours = [int(j) for j in nn_idx[i]] if nn_idx.shape[1] else []
            agree = sum(samples[j].label == classes[suggested[i]] for j in neighbours)
            record = {
                "rank": rank,
                "path": samples[i].path,
                "given_label": samples[i].label,
                "suggested_label": classes[suggested[i]],
                "self_confidence": round(float(proba[i, y[i]]), 4),
                "suggested_probability": round(float(proba[i, suggested[i]]), 4),
                "is_issue": bool(issue[i]),
            }
            report.label_ranking.append(record)
            if issue[i]:
                record = dict(record)
                record["evidence"] = (
                    f"out-of-fold probability {proba[i, y[i]]:.2f} for '{samples[i].label}' vs "
                    f"{proba[i, suggested[i]]:.2f} for '{classes[suggested[i]]}'; {agree} of "
                    f"{len(neighbours)} nearest images are '{classes[suggested[i]]}'"
                )
                record["neighbours"] = [
                    {"path": samples[j].path, "label": samples[j].label, "cosine": round(float(s), 4)}
                    for j, s in zip(neighbours, nn_sim[i])
                ]
                report.label_issues.append(record)
    seconds["label_issues"] = time.perf_counter() - t
    report.seconds = seconds
    report.dataset = dataset  # type: ignore[attr-defined]
    report.cross_validated = proba is not None  # type: ignore[attr-defined]
    return report


def report_dict(report: CheckReport, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``doctor.json`` content."""
    exclude = [
        {"path": b["path"], "reason": b["reason"]} for b in report.bad_files if b["severity"] == "error"
    ]
    exclude += [{"path": r["path"], "reason": "likely mislabeled"} for r in report.label_issues]
    exclude += [{"path": report.samples[i].path, "reason": why} for i, why in exclude_copies(report)]
    seen: set[str] = set()
    exclude = [e for e in exclude if not (e["path"] in seen or seen.add(e["path"]))]  # type: ignore[func-returns-value]
    groups = report.group_records()
    return {
        "summary": {
            "images": len(report.samples) + sum(b["severity"] == "error" for b in report.bad_files),
            "usable": len(report.samples),
            "bad_files": sum(b["severity"] == "error" for b in report.bad_files),
            "warnings": sum(b["severity"] == "warning" for b in report.bad_files),
            "exact_duplicate_groups": sum(g["kind"] == "exact" for g in groups),
            "near_duplicate_groups": sum(g["kind"] == "near" for g in groups),
            "images_in_duplicate_groups": sum(len(g["files"]) for g in groups),
            "cross_class_groups": sum(g["cross_class"] for g in groups),
            "cross_split_groups": sum(g["cross_split"] for g in groups),
            "label_issues": len(report.label_issues),
            "notes": report.notes,
        },
        "bad_files": report.bad_files,
        "duplicates": groups,
        "label_issues": report.label_issues,
        "class_counts": report.class_counts,
        "imbalance": report.imbalance(),
        "exclude_suggested": exclude,
        "settings": settings or {},
        "timings": report.seconds,
    }


# --------------------------------------------------------------------------- writing


def write_report(
    report: CheckReport, out_dir: str | Path, settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``doctor.json``, ``doctor.html``, ``exclude.txt`` (ready for ``train --exclude``) and
    ``label_ranking.csv`` (every image by self-confidence) in ``out_dir``."""
    from headstart.core.io import write_json, write_rows

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    doc = report_dict(report, settings)
    write_json(out / "doctor.json", doc)
    write_doctor_page(doc, out / "doctor.html")
    with open(out / "exclude.txt", "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write("# headstart doctor: files to leave out. Delete the lines you disagree with, then\n")
        f.write("# headstart train DATA --exclude exclude.txt\n")
        for e in doc["exclude_suggested"]:
            f.write(f"# {e['reason']}\n{e['path']}\n")
    write_rows(
        out / "label_ranking.csv",
        [
            "rank",
            "path",
            "given_label",
            "suggested_label",
            "self_confidence",
            "suggested_probability",
            "is_issue",
        ],
        [
            [
                r[k]
                for k in (
                    "rank",
                    "path",
                    "given_label",
                    "suggested_label",
                    "self_confidence",
                    "suggested_probability",
                    "is_issue",
                )
            ]
            for r in report.label_ranking
        ],
    )
    report.seconds["write"] = time.perf_counter() - t
    doc["timings"] = report.seconds
    write_json(out / "doctor.json", doc)
    return doc


# --------------------------------------------------------------------------- --exclude


def read_exclude_list(path: str | Path) -> list[str]:
    """Paths to leave out, from a text file (one per line, ``#`` comments), a CSV with a
    ``path`` column, or a ``doctor.json`` (its ``exclude_suggested`` list)."""
    path = Path(path).expanduser()
    try:
        text = path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as e:
        raise HeadstartError(f"cannot read --exclude file {path}: {e.strerror}") from e
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
            return [e["path"] for e in doc["exclude_suggested"]]
        except (ValueError, KeyError, TypeError) as e:
            raise HeadstartError(
                f"--exclude {path} is not a doctor.json (no 'exclude_suggested' list); give a text file of paths"
            ) from e
    if path.suffix.lower() == ".csv":
        rows = list(csv.reader(text.splitlines()))
        header = [c.strip().lower() for c in rows[0]] if rows else []
        if "path" not in header:
            raise HeadstartError(f"--exclude CSV {path} needs a 'path' column")
        col = header.index("path")
        return [r[col] for r in rows[1:] if len(r) > col and r[col].strip()]
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def exclude_samples(dataset: Dataset, entries: Sequence[str]) -> tuple[Dataset, list[Sample], list[str]]:
    """Drop listed files from ``dataset`` (the files themselves are untouched).

    An entry matches a sample's path as given, as an absolute path, or relative to the data root.
    Returns the smaller data set, the samples left out, and entries that matched nothing.
    """
    keys: dict[str, int] = {}
    for i, s in enumerate(dataset.samples):
        for key in (s.path, os.path.abspath(s.path), dataset.relative(s.path)):
            keys.setdefault(os.path.normpath(key), i)
    drop: set[int] = set()
    unmatched = []
    for entry in entries:
        candidates = [entry, os.path.abspath(entry), os.path.join(str(dataset.root), entry)]
        hit = next((keys[os.path.normpath(c)] for c in candidates if os.path.normpath(c) in keys), None)
        if hit is None:
            unmatched.append(entry)
        else:
            drop.add(hit)
    kept = [s for i, s in enumerate(dataset.samples) if i not in drop]
    left_out = [s for i, s in enumerate(dataset.samples) if i in drop]
    return Dataset(dataset.root, kept, dataset.kind, list(dataset.ignored)), left_out, unmatched


# --------------------------------------------------------------------------- train's run folder


def check_summary(
    report: CheckReport, plain_splits: Sequence[str], splits: Sequence[str], excluded: Sequence[Sample] = ()
) -> dict[str, Any]:
    """The ``data_checks`` section of train's metrics.json: counts, and which groups were merged
    (their members would have been split apart by the plain seeded split)."""
    merged = [
        n for n, g in enumerate(report.groups, start=1) if len({plain_splits[i] for i in g.members}) > 1
    ]
    leaks = [n for n, g in enumerate(report.groups, start=1) if len({splits[i] for i in g.members}) > 1]
    return {
        "exact_duplicate_groups": sum(g.kind == "exact" for g in report.groups),
        "near_duplicate_groups": sum(g.kind == "near" for g in report.groups),
        "images_in_duplicate_groups": sum(len(g.members) for g in report.groups),
        "cross_class_groups": len(report.conflicts()),
        "groups_merged_into_one_split": merged,
        "groups_across_splits": leaks,
        "notes": report.notes,
        "near_cosine": NEAR_COSINE,
        "bad_files": len(report.bad_files),
        "class_counts": report.class_counts,
        "imbalance": report.imbalance(),
        "excluded": len(excluded),
        "seconds": report.seconds,
    }


def write_run_checks(
    run_dir: Path,
    dataset: Dataset,
    report: CheckReport | None,
    splits: Sequence[str],
    summary: dict[str, Any] | None,
    excluded: Sequence[Sample] = (),
) -> None:
    """``duplicate_groups.csv`` (every group member with its final split and whether the group
    was merged) and ``excluded.csv`` (what ``--exclude`` left out) in train's run folder."""
    from headstart.core.io import write_rows

    if report is not None:
        merged = set((summary or {}).get("groups_merged_into_one_split", []))
        rows = []
        for n, g in enumerate(report.groups, start=1):
            conflict = len({report.samples[i].label for i in g.members}) > 1
            leak = len({splits[i] for i in g.members}) > 1
            for i in g.members:
                s = report.samples[i]
                rows.append(
                    [
                        n,
                        g.kind,
                        dataset.relative(s.path),
                        s.label,
                        splits[i],
                        "yes" if n in merged else "no",
                        "yes" if conflict else "no",
                        "yes" if leak else "no",
                    ]
                )
        write_rows(
            run_dir / "duplicate_groups.csv",
            ["group", "kind", "path", "label", "split", "merged", "conflicting_labels", "across_splits"],
            rows,
        )
    if excluded:
        write_rows(
            run_dir / "excluded.csv",
            ["path", "label"],
            [[dataset.relative(s.path), s.label] for s in excluded],
        )
