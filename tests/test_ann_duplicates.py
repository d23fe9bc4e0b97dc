"""The duplicate check without all pairs: the index and the hash buckets find what all pairs find."""

from __future__ import annotations

import numpy as np
import pytest

from headstart.doctor import duplicates
from headstart.doctor.duplicates import find_duplicates, hash_pairs, similar_pairs
from headstart.doctor.neighbours import ann_similar_pairs, bucketed_hash_pairs
from headstart.features.store import FeatureStore


def _planted(n: int = 3000, d: int = 128, seed: int = 0):
    """Random unit-ish rows with planted near copies (pairs and a chain of three) and exact copies."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    for a, b in [(1, 2000), (10, 11), (500, 2999), (700, 701), (1500, 30)]:
        x[b] = x[a] + 0.15 * rng.normal(size=d)  # cosine ~0.99
    x[1200] = x[1100] + 0.25 * rng.normal(size=d)
    x[1300] = x[1200] + 0.25 * rng.normal(size=d)  # a chain: 1100 ~ 1200 ~ 1300
    content = [f"h{i}" for i in range(n)]
    content[42] = content[41] = "same-bytes"
    return x, content


def _groups(found):
    return sorted(tuple(g.members) + (g.kind,) for g in found[0])


def test_index_finds_the_pairs_of_all_pairs():
    x, _ = _planted()
    exact, nn_exact, _ = similar_pairs(x, 0.9, k=5)
    approx, nn_approx, sim = ann_similar_pairs(x, 0.9, k=5)
    assert exact and [(i, j) for i, j, _ in exact] == [(i, j) for i, j, _ in approx]
    np.testing.assert_allclose([s for *_, s in exact], [s for *_, s in approx], atol=1e-4)
    for a, b in [(1, 2000), (10, 11), (2999, 500)]:  # on pure noise only planted neighbours mean anything
        assert nn_exact[a, 0] == nn_approx[a, 0] == b
    assert np.all(np.diff(sim, axis=1) <= 1e-6)


def test_duplicate_groups_are_the_same_above_the_all_pairs_size(monkeypatch):
    x, content = _planted()
    before = _groups(find_duplicates(content, x))
    monkeypatch.setattr(duplicates, "ANN_FROM", 100)
    after = _groups(find_duplicates(content, x))
    assert before == after
    assert (1100, 1200, 1300, "near") in after and (41, 42, "exact") in after


def test_index_reads_a_feature_store():
    x, content = _planted(n=3000, d=64)
    store = FeatureStore(*x.shape)
    store[np.arange(len(x))] = x
    groups = _groups(find_duplicates(content, store))
    assert groups == _groups(find_duplicates(content, x))


def test_non_discriminative_features_are_refused_as_before():
    x = np.ones((500, 16), np.float32) + 1e-3 * np.random.default_rng(0).normal(size=(500, 16)).astype(
        np.float32
    )
    assert similar_pairs(x, 0.95, max_pairs=2500)[0] is None
    assert ann_similar_pairs(x, 0.95, 5, max_pairs=2500)[0] is None


def test_hash_buckets_find_the_pairs_of_all_pairs():
    rng = np.random.default_rng(0)
    hashes: list[int | None] = [int(v) for v in rng.integers(0, 2**63, 2000, dtype=np.int64)]
    for a, b, flips in [(3, 1500, 6), (7, 8, 0), (100, 101, 3), (200, 201, 7)]:
        h = hashes[a]
        assert h is not None
        for bit in rng.choice(64, flips, replace=False):
            h ^= 1 << int(bit)
        hashes[b] = h
    hashes[5] = None
    assert bucketed_hash_pairs(hashes, 6) == hash_pairs(hashes, 6)
    found = {(i, j) for i, j, _ in bucketed_hash_pairs(hashes, 6)}
    assert {(3, 1500), (7, 8), (100, 101)} <= found and (200, 201) not in found


@pytest.mark.slow
def test_index_scales_past_all_pairs():
    x, content = _planted(n=60_000, d=64)
    found = find_duplicates(content, x)
    assert (1100, 1200, 1300, "near") in _groups(found)
