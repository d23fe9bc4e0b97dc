"""Duplicate groups: identical bytes, or near-identical pictures by backbone features and dHash.

Groups are the connected components of the "same picture" pairs (a union-find), so a chain of
near copies is one group however it was cropped or re-encoded along the way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np

from headstart.doctor.neighbours import ann_similar_pairs, bucketed_hash_pairs
from headstart.features.store import FeatureStore, is_store

NEAR_COSINE = 0.95  # feature cosine similarity at or above which two images are near duplicates
HASH_DISTANCE = 6  # dHash bits (of 64) within which two images look alike...
HASH_COSINE = 0.85  # ...and are near duplicates when their features also agree this much


class PairEvidence(TypedDict, total=False):
    """Why two files are near duplicates: their features' cosine, their images' dhash distance."""

    cosine: float
    dhash_distance: int


class GroupEvidence(PairEvidence, total=False):
    """A pair of a duplicate group: members ``a`` and ``b`` (sample indices) and why."""

    a: int
    b: int


NEIGHBOURS = 5  # nearest neighbours quoted as evidence for a label issue
MAX_PAIRS_PER_IMAGE = 5  # more similar pairs than this per image: features are not discriminative
ANN_FROM = 20_000  # beyond this many images, an index and hash buckets instead of all pairs


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
    features: np.ndarray | FeatureStore,
    threshold: float,
    k: int = NEIGHBOURS,
    block: int | None = None,
    max_pairs: int | None = None,
) -> tuple[list[tuple[int, int, float]] | None, np.ndarray, np.ndarray]:
    """Pairs (i < j) with cosine >= threshold, plus each row's k nearest neighbours.

    Computed in row blocks of at most 8M similarities (32 MB); beyond ``ANN_FROM`` rows (or rows
    in a feature store) through an approximate nearest-neighbour index instead of all pairs.
    More than ``max_pairs`` pairs (features that do not tell images apart, e.g. an untrained
    backbone) gives None instead of a list that would swallow the data set.
    """
    if is_store(features) or len(features) > ANN_FROM:
        return ann_similar_pairs(features, threshold, k, max_pairs)
    unit = _unit_rows(np.asarray(features))
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
            pairs += [(int(start + i), int(j), float(sims[i, j])) for i, j in zip(ii, jj) if start + i < j]
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
    if len(hashes) > ANN_FROM:
        return bucketed_hash_pairs(hashes, max_distance)
    idx = [i for i, h in enumerate(hashes) if h is not None]
    if len(idx) < 2:
        return []
    known = [h for h in hashes if h is not None]
    bits = np.array([[(h >> b) & 1 for b in range(64)] for h in known], dtype=np.float32)
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
    evidence: list[GroupEvidence] = field(default_factory=list)


def find_duplicates(
    content_hashes: Sequence[str | None],
    features: np.ndarray | FeatureStore | None = None,
    image_hashes: Sequence[int | None] | None = None,
    near_cosine: float = NEAR_COSINE,
    hash_distance: int = HASH_DISTANCE,
    hash_cosine: float = HASH_COSINE,
    neighbours: int = NEIGHBOURS,
) -> tuple[list[DuplicateGroup], np.ndarray, np.ndarray, list[str]]:
    """Group duplicates: same content hash; or feature cosine >= ``near_cosine``; or a dHash
    within ``hash_distance`` bits confirmed by cosine >= ``hash_cosine``.

    Returns the groups (two or more members each, sorted), every row's ``neighbours`` nearest
    neighbours (none with 0: the quick check does not quote them), and notes (e.g. why near
    duplicates were not looked for).
    """
    n = len(content_hashes)
    uf = _UnionFind(n)
    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(content_hashes):
        if h is not None:
            by_hash.setdefault(h, []).append(i)
    for same in by_hash.values():
        for j in same[1:]:
            uf.union(same[0], j)
    notes: list[str] = []
    evidence: list[tuple[int, int, PairEvidence]] = []
    nn_idx = np.zeros((n, 0), dtype=np.int64)
    nn_sim = np.zeros((n, 0), dtype=np.float32)
    if features is not None and n > 1:
        evidence, nn_idx, nn_sim, notes = _near_pairs(
            content_hashes, features, image_hashes, near_cosine, hash_distance, hash_cosine, neighbours
        )
        for i, j, _ in evidence:
            uf.union(i, j)
    return _groups(uf, content_hashes, evidence), nn_idx, nn_sim, notes


def _near_pairs(
    content_hashes: Sequence[str | None],
    features: np.ndarray | FeatureStore,
    image_hashes: Sequence[int | None] | None,
    near_cosine: float,
    hash_distance: int,
    hash_cosine: float,
    neighbours: int = NEIGHBOURS,
) -> tuple[list[tuple[int, int, PairEvidence]], np.ndarray, np.ndarray, list[str]]:
    """Pairs of different files that are near duplicates, each with its evidence (cosine, and
    dHash distance where the hashes are close), plus every row's nearest neighbours and notes."""
    n = len(content_hashes)
    notes = []
    low = min(near_cosine, hash_cosine) if image_hashes is not None else near_cosine
    found, nn_idx, nn_sim = similar_pairs(features, low, neighbours, max_pairs=MAX_PAIRS_PER_IMAGE * n)
    if found is None:
        notes.append(
            f"near duplicates not checked: over {MAX_PAIRS_PER_IMAGE} image pairs per image have feature "
            f"cosine >= {low:g}, so this backbone's features do not tell these images apart"
        )
    close = (
        {(i, j): d for i, j, d in hash_pairs(image_hashes, hash_distance)} if image_hashes is not None else {}
    )
    evidence = []
    for i, j, s in found or []:
        if content_hashes[i] is not None and content_hashes[i] == content_hashes[j]:
            continue
        if s >= near_cosine or ((i, j) in close and s >= hash_cosine):
            info: PairEvidence = {"cosine": round(s, 4)}
            if (i, j) in close:
                info["dhash_distance"] = close[(i, j)]
            evidence.append((i, j, info))
    return evidence, nn_idx, nn_sim, notes


def _groups(
    uf: _UnionFind, content_hashes: Sequence[str | None], evidence: list[tuple[int, int, PairEvidence]]
) -> list[DuplicateGroup]:
    """The union-find's components of two or more images, in order of their first member."""
    members: dict[int, list[int]] = {}
    for i in range(len(content_hashes)):
        members.setdefault(uf.find(i), []).append(i)
    groups = []
    for root, idx in sorted(members.items()):
        if len(idx) < 2:
            continue
        exact = len({content_hashes[i] for i in idx}) == 1
        ev = [GroupEvidence(a=i, b=j, **info) for i, j, info in evidence if uf.find(i) == root]
        groups.append(DuplicateGroup(idx, "exact" if exact else "near", ev))
    return groups
