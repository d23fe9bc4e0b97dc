import numpy as np
import pytest

from headstart.models.heads import make_head, restore_head


def blobs(n_per=40, d=32, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (k, d))
    x = np.concatenate([c + rng.normal(0, 1, (n_per, d)) for c in centers]).astype(np.float32)
    y = np.repeat(np.arange(k), n_per)
    order = rng.permutation(len(y))
    return x[order], y[order]


@pytest.mark.parametrize("name", ["logistic", "mlp", "knn"])
def test_head_learns_and_restores_exactly(name):
    x, y = blobs(n_per=80)
    x, y, xv, yv = x[:120], y[:120], x[120:], y[120:]
    head = make_head(name)
    info = head.fit(x[:90], y[:90], x[90:], y[90:], 3)
    proba = head.predict_proba(xv)
    assert proba.shape == (len(yv), 3) and np.allclose(proba.sum(1), 1)
    assert (proba.argmax(1) == yv).mean() > 0.9
    again = restore_head(name, head.arrays(), head.params())
    np.testing.assert_allclose(again.predict_proba(xv), proba, rtol=1e-5, atol=1e-6)
    assert {"logistic": {"C", "sweep"}, "mlp": {"best_epoch", "history"}, "knn": {"k", "sweep"}}[name] <= set(
        info
    )


def test_logistic_sweep_picks_c_on_validation():
    x, y = blobs()
    head = make_head("logistic")
    info = head.fit(x[:90], y[:90], x[90:], y[90:], 3)
    tried = [row["C"] for row in info["sweep"]]
    assert tried[: len(head.cs)] == sorted(head.cs) and head.C in tried  # widened past an edge best


def test_binary_logistic_matches_two_way_softmax():
    x, y = blobs(k=2)
    head = make_head("logistic")
    head.fit(x[:60], y[:60], x[60:], y[60:], 2)
    assert (head.predict_proba(x[60:]).argmax(1) == y[60:]).mean() > 0.9
