"""Similar pairs without comparing all pairs: a FAISS inverted-file index on projected features,
and 64-bit image hashes bucketed by bands.

Why it finds what the exhaustive check finds: rows are unit vectors, and a projection on
orthonormal axes (PCA) never lengthens a difference, so two rows with cosine >= t are within
sqrt(2 - 2t) of each other after projection too. A range search of that radius in the projected
space therefore returns every true pair (plus some that are not); each candidate is then scored
with the full features, so the pairs kept are exact. What is approximate is only which cells of
the inverted file are searched (``NPROBE`` nearest of about 4 sqrt(n)), and the neighbours quoted
as evidence (nearest in the projected space, their cosine computed on the full rows).
FAISS (faiss-cpu) rather than hnswlib: it has range search, inverted files that hold the
projected rows compactly, and k-means training in one library.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from headstart.features.store import FeatureStore, iter_chunks

if TYPE_CHECKING:
    import faiss

Features = np.ndarray | FeatureStore  # one row per image

PROJECTED_DIM = 64  # PCA axes the index works in
NPROBE = 24  # inverted lists searched per query
TRAIN_ROWS = 10_000  # rows the PCA and the k-means are fitted on (an even sample)
QUERY_ROWS = 4096  # queries per range search
VERIFY_PAIRS = 8192  # candidate pairs scored on full rows at a time (their rows read at once)


def _unit(chunk: np.ndarray) -> np.ndarray:
    chunk = np.nan_to_num(np.asarray(chunk, dtype=np.float32))
    return chunk / np.maximum(np.linalg.norm(chunk, axis=1, keepdims=True), 1e-12)


def _projection(features: Features, dim: int) -> np.ndarray:
    """Orthonormal axes (d, dim) of the largest variance of an even sample of unit rows."""
    n = len(features)
    step = max(1, n // TRAIN_ROWS)
    sample = _unit(features[np.arange(0, n, step)[:TRAIN_ROWS]])
    sample = (sample - sample.mean(axis=0)).astype(np.float64)
    _, vectors = np.linalg.eigh(sample.T @ sample)  # ascending eigenvalues: the last axes vary most
    return np.ascontiguousarray(vectors[:, ::-1][:, :dim], dtype=np.float32)


def _projected(features: Features, axes: np.ndarray) -> np.ndarray:
    return np.concatenate([_unit(c) @ axes for c in iter_chunks(features)]) if len(features) else axes[:0]


def _index(projected: np.ndarray) -> faiss.Index:
    import faiss

    n, d = projected.shape
    nlist = min(int(4 * np.sqrt(n)), n // 39)  # k-means wants 39 training rows per list
    quantizer = faiss.IndexFlatL2(d)
    if nlist < 2:  # too few rows for an inverted file: the flat index (exact, and small)
        quantizer.add(projected)
        return quantizer
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_L2)
    step = max(1, n // max(TRAIN_ROWS, nlist * 39))
    index.train(np.ascontiguousarray(projected[::step]))
    index.add(projected)
    index.nprobe = min(NPROBE, nlist)  # the number of lists searched per query
    return index


def _candidates(
    index: faiss.Index, projected: np.ndarray, radius2: float, limit: int | None
) -> np.ndarray | None:
    """(i, j) pairs, i < j, within ``radius2`` (squared L2) in the projected space; None past ``limit``."""
    found = []
    total = 0
    for start in range(0, len(projected), QUERY_ROWS):
        lims, _, ids = index.range_search(projected[start : start + QUERY_ROWS], radius2)
        counts: np.ndarray = np.diff(np.asarray(lims, dtype=np.int64))  # results per query row
        rows = np.repeat(np.arange(start, start + len(lims) - 1), counts)
        keep = rows < ids
        pairs = np.stack([rows[keep], ids[keep]], axis=1)
        total += len(pairs)
        if limit is not None and total > limit:
            return None
        found.append(pairs)
    return np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)


def _cosines(features: Features, pairs: np.ndarray) -> np.ndarray:
    """Exact cosine of each (i, j) pair, reading the rows concerned a batch at a time."""
    out = np.empty(len(pairs), dtype=np.float32)
    for start in range(0, len(pairs), VERIFY_PAIRS):
        part = pairs[start : start + VERIFY_PAIRS]
        rows, inverse = np.unique(part, return_inverse=True)
        unit = _unit(features[rows])
        inverse = inverse.reshape(part.shape)
        out[start : start + len(part)] = np.einsum("ij,ij->i", unit[inverse[:, 0]], unit[inverse[:, 1]])
    return out


def _neighbours(
    index: faiss.Index, projected: np.ndarray, features: Features, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest other rows in the projected space, with their exact cosine."""
    n = len(projected)
    nn_idx = np.zeros((n, k), dtype=np.int64)
    nn_sim = np.zeros((n, k), dtype=np.float32)
    if not k:
        return nn_idx, nn_sim
    for start in range(0, n, QUERY_ROWS):
        _, ids = index.search(projected[start : start + QUERY_ROWS], k + 1)
        for r, row in enumerate(ids, start):
            others = [int(j) for j in row if j != r and j >= 0][:k]
            others += [others[-1] if others else (r + 1) % n] * (k - len(others))
            nn_idx[r] = others
    pairs = np.stack([np.repeat(np.arange(n), k), nn_idx.ravel()], axis=1)
    nn_sim[:] = _cosines(features, pairs).reshape(n, k)
    order = np.argsort(-nn_sim, axis=1, kind="stable")
    return np.take_along_axis(nn_idx, order, axis=1), np.take_along_axis(nn_sim, order, axis=1)


def ann_similar_pairs(
    features: Features, threshold: float, k: int, max_pairs: int | None = None
) -> tuple[list[tuple[int, int, float]] | None, np.ndarray, np.ndarray]:
    """``duplicates.similar_pairs`` through the index: pairs with cosine >= threshold (None past
    ``max_pairs`` candidates), and each row's k nearest neighbours."""
    axes = _projection(features, PROJECTED_DIM)
    projected = _projected(features, axes)
    index = _index(projected)
    radius2 = max(0.0, 2.0 - 2.0 * threshold) * 1.0001 + 1e-6
    limit = None if max_pairs is None else 10 * max_pairs
    candidates = _candidates(index, projected, radius2, limit)
    pairs: list[tuple[int, int, float]] | None = None
    if candidates is not None:
        cos = _cosines(features, candidates)
        keep = cos >= threshold
        pairs = [(int(i), int(j), float(s)) for (i, j), s in zip(candidates[keep], cos[keep])]
        pairs.sort()
        if max_pairs is not None and len(pairs) > max_pairs:
            pairs = None
    nn_idx, nn_sim = _neighbours(index, projected, features, min(k, max(len(projected) - 1, 0)))
    return pairs, nn_idx, nn_sim


def bucketed_hash_pairs(hashes: Sequence[int | None], max_distance: int) -> list[tuple[int, int, int]]:
    """Pairs (i < j) of 64-bit hashes within ``max_distance`` differing bits, without all pairs.

    Rule (pigeonhole): split the 64 bits into ``max_distance + 1`` bands; two hashes that differ
    in at most ``max_distance`` bits agree exactly on at least one band, so only hashes sharing a
    band's value are compared.
    """
    idx = np.array([i for i, h in enumerate(hashes) if h is not None], dtype=np.int64)
    if len(idx) < 2:
        return []
    values = np.array([hashes[i] for i in idx], dtype=np.uint64)
    edges = np.linspace(0, 64, max_distance + 2).astype(int)
    seen: dict[tuple[int, int], int] = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        band = (values >> np.uint64(lo)) & np.uint64((1 << int(hi - lo)) - 1)
        order = np.argsort(band, kind="stable")
        starts = np.flatnonzero(np.r_[True, band[order][1:] != band[order][:-1]])
        for members in np.split(order, starts[1:]):
            if len(members) < 2:
                continue
            a, b = np.triu_indices(len(members), 1)
            left, right = np.minimum(members[a], members[b]), np.maximum(members[a], members[b])
            dist = _popcount(values[left] ^ values[right])
            close = dist <= max_distance
            for x, y, d in zip(idx[left[close]], idx[right[close]], dist[close]):
                seen[(int(x), int(y))] = int(d)
    return sorted((i, j, d) for (i, j), d in seen.items())


def _popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64."""
    return np.unpackbits(values.astype(np.uint64).view(np.uint8)).reshape(-1, 64).sum(axis=1)
