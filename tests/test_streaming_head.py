"""The logistic head fitted in mini-batches on a feature store: same choice, same accuracy, same file."""

from __future__ import annotations

import numpy as np
import pytest

from headstart.features.store import FeatureStore
from headstart.models.heads import make_head, restore_head
from headstart.models.streaming import StreamingLogisticHead


def _blobs(n: int, d: int = 32, k: int = 3, seed: int = 0, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 1.5
    y = rng.integers(0, k, n)
    return (centres[y] + spread * rng.normal(size=(n, d))).astype(np.float32), y


def _store_of(x: np.ndarray) -> FeatureStore:
    store = FeatureStore(*x.shape)
    store[np.arange(len(x))] = x
    return store


def test_streaming_head_matches_the_in_memory_head():
    x, y = _blobs(1500)
    tr, va, te = (
        np.arange(1500) < 900,
        (np.arange(1500) >= 900) & (np.arange(1500) < 1200),
        np.arange(1500) >= 1200,
    )
    exact = make_head("logistic")
    exact_info = exact.fit(x[tr], y[tr], x[va], y[va], 3)
    store = _store_of(x)
    streamed = make_head("logistic-sgd", seed=0)
    info = streamed.fit(store.select(tr), y[tr], store.select(va), y[va], 3)
    assert info["streaming"] and info["refit_on_train_val"]
    assert len(info["sweep"]) == len(exact.cs)
    acc_exact = (exact.predict_proba(x[te]).argmax(1) == y[te]).mean()
    acc_streamed = (streamed.predict_proba(x[te]).argmax(1) == y[te]).mean()
    assert abs(acc_exact - acc_streamed) <= 0.01
    chosen = [r["val_accuracy"] for r in info["sweep"] if r["C"] == info["C"]][0]
    best_exact = max(r["val_accuracy"] for r in exact_info["sweep"])
    assert abs(chosen - best_exact) <= 0.02


def test_streaming_head_prefers_strong_regularisation_on_noise():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(600, 64)).astype(np.float32), rng.integers(0, 2, 600)
    head = StreamingLogisticHead(cs=(0.001, 1000.0))
    info = head.fit(x[:400], y[:400], x[400:], y[400:], 2)
    assert info["C"] == 0.001  # labels carry no signal: the strongest penalty has the lowest val loss


def test_streaming_head_saves_as_a_logistic_head_and_exports():
    x, y = _blobs(300)
    head = make_head("logistic-sgd", epochs=2)
    head.fit(x[:200], y[:200], x[200:], y[200:], 3)
    again = restore_head(head.name, head.arrays(), head.params())
    np.testing.assert_allclose(again.predict_proba(x), head.predict_proba(x), rtol=1e-5, atol=1e-6)
    assert set(head.arrays()) == {"mean", "scale", "coef", "intercept"}
    torch = pytest.importorskip("torch")
    from headstart.export.graph import head_module

    module = head_module(again)
    with torch.no_grad():
        out = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, head.predict_proba(x), atol=1e-4)


def _peak_bytes_of_fit(n: int, monkeypatch) -> int:
    import tracemalloc

    from headstart.models import streaming

    monkeypatch.setattr(streaming, "CHUNK_ROWS", 500)
    x, y = _blobs(n, d=256)
    store = _store_of(x)
    head = StreamingLogisticHead(cs=(0.1, 1.0), epochs=1, min_steps=1)
    train, val = np.arange(n) < n * 3 // 4, np.arange(n) >= n * 3 // 4
    tracemalloc.start()
    head.fit(store.select(train), y[train], store.select(val), y[val], 3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_fit_memory_does_not_grow_with_rows(monkeypatch):
    _peak_bytes_of_fit(500, monkeypatch)  # imports and first-call caches out of the way
    small, large = _peak_bytes_of_fit(2000, monkeypatch), _peak_bytes_of_fit(8000, monkeypatch)
    assert large < 2 * small  # 4x the rows: the labels grow, the chunks do not


@pytest.mark.slow
def test_training_beyond_the_budget_uses_the_streaming_head(tmp_path, monkeypatch):
    from conftest import make_class_folders

    import headstart

    data = make_class_folders(tmp_path / "data", per_class=12)
    monkeypatch.setenv("HEADSTART_FEATURE_MEMORY_MB", "0")
    clf = headstart.ImageClassifier(strategy="feature-extraction", verbose=False, report_map="none")
    clf.fit(data, tmp_path / "run")
    assert clf.head_.name == "logistic-sgd"
    assert clf.metrics_["head"]["fit"]["streaming"]
    assert clf.metrics_["test"]["accuracy"] >= 0.9
    loaded = headstart.load(tmp_path / "run" / "model.safetensors")
    assert loaded.head_.name == "logistic-sgd"
    some = sorted(str(p) for p in data.rglob("*.jpg"))[:5]
    np.testing.assert_allclose(loaded.predict_proba(some), clf.predict_proba(some), atol=1e-5)
