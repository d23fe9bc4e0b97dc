"""The logistic head's regularisation sweep: it widens beyond an edge, and its tolerance is tight
enough that a far tighter solve would choose the same C."""

from __future__ import annotations

import numpy as np
import pytest

from headstart.models.heads import LogisticHead, next_c


def _noise(seed: int = 0) -> tuple[np.ndarray, ...]:
    """Labels unrelated to the features: the less the model fits, the better (the small-C edge)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 50)).astype(np.float32)
    y = rng.integers(0, 3, 300)
    return x[:200], y[:200], x[200:], y[200:]


def _separable(seed: int = 0) -> tuple[np.ndarray, ...]:
    """Few features, many samples, labels a linear function of them (the large-C edge)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(1500, 4)).astype(np.float32)
    y = (x @ rng.normal(size=(4, 3))).argmax(1)
    return x[:1000], y[:1000], x[1000:], y[1000:]


def test_next_c_walks_the_one_three_grid() -> None:
    down, up = [0.003], [1.0]
    for _ in range(4):
        down.append(next_c(down[-1], upward=False))
        up.append(next_c(up[-1], upward=True))
    assert down == [0.003, 0.001, 0.0003, 0.0001, 3e-05]
    assert up == [1.0, 3.0, 10.0, 30.0, 100.0]


def test_sweep_widens_below_the_small_edge() -> None:
    x, y, xv, yv = _noise()
    info = LogisticHead().fit(x, y, xv, yv, 3)
    tried = [row["C"] for row in info["sweep"]]
    assert info["widened"] is True and min(tried) < 0.003
    assert info["C"] < 0.003
    assert all(row.get("widened") for row in info["sweep"] if row["C"] < 0.003)
    # it stops at the hard limit or once the best is inside the tried range
    assert info["C"] > min(tried) or min(tried) == LogisticHead.C_LIMITS[0]


def test_sweep_widens_above_the_large_edge() -> None:
    x, y, xv, yv = _separable()
    info = LogisticHead().fit(x, y, xv, yv, 3)
    tried = [row["C"] for row in info["sweep"]]
    assert info["widened"] is True and max(tried) > 1.0 and info["C"] > 1.0
    assert info["C"] < max(tried) or max(tried) == LogisticHead.C_LIMITS[1]


def test_interior_best_does_not_widen() -> None:
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(4, 40)) * 0.6
    y = rng.integers(0, 4, 600)
    x = (centers[y] + rng.normal(size=(600, 40))).astype(np.float32)
    info = LogisticHead().fit(x[:400], y[:400], x[400:], y[400:], 4)
    tried = [row["C"] for row in info["sweep"]]
    if min(tried) < info["C"] < max(tried) and not info["widened"]:
        assert tried == sorted(tried) and min(tried) == 0.003
    assert "widened" in info


@pytest.mark.parametrize("data", [_noise, _separable])
def test_tolerance_is_tight_enough_for_the_choice(data, monkeypatch) -> None:
    x, y, xv, yv = data()
    chosen = LogisticHead().fit(x, y, xv, yv, 3)["C"]
    monkeypatch.setattr(LogisticHead, "TOL", 1e-6)
    monkeypatch.setattr(LogisticHead, "MAX_ITER", 5000)
    assert LogisticHead().fit(x, y, xv, yv, 3)["C"] == chosen


def test_the_sweep_runs_on_one_blas_thread_and_gives_the_threads_back(monkeypatch) -> None:
    """The lbfgs steps multiply skinny matrices: one BLAS thread, the caller's count restored."""
    from threadpoolctl import threadpool_info, threadpool_limits

    seen: list[int] = []
    fit_one = LogisticHead._fit_one

    def recording(self, *args, **kwargs):
        seen.extend(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")
        return fit_one(self, *args, **kwargs)

    monkeypatch.setattr(LogisticHead, "_fit_one", recording)
    x, y, xv, yv = _separable()
    with threadpool_limits(limits=2, user_api="blas"):
        LogisticHead(cs=(0.1, 1.0)).fit(x, y, xv, yv, 3)
        after = {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}
    assert seen and set(seen) == {1}
    assert after == {2}
