"""Features beyond the memory budget: a memory-mapped float16 store read in chunks."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import tracemalloc

import numpy as np
import pytest

from headstart.features.store import FeatureStore, feature_matrix, iter_chunks, select_rows
from headstart.models.heads import make_head


def _store_of(x: np.ndarray) -> FeatureStore:
    store = FeatureStore(*x.shape)
    for start in range(0, len(x), 100):
        store[np.arange(start, min(start + 100, len(x)))] = x[start : start + 100]
    return store


def test_store_reads_what_was_written_within_float16():
    x = np.random.default_rng(0).normal(size=(1000, 32)).astype(np.float32)
    store = _store_of(x)
    mask = np.random.default_rng(1).random(1000) < 0.3
    assert store.dtype == np.float16 and store.shape == (1000, 32)
    np.testing.assert_allclose(store[mask], x[mask], rtol=1e-3, atol=1e-3)
    view = store.select(mask)
    assert len(view) == mask.sum()
    np.testing.assert_allclose(np.concatenate(list(view.chunks(37))), x[mask], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(view[[2, 0]], x[mask][[2, 0]], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(store[5], x[5], rtol=1e-3, atol=1e-3)


def test_store_file_is_scratch_and_removed():
    store = FeatureStore(10, 4)
    path = store.path
    assert path.is_file() and "headstart-features-" in str(path.parent)
    assert np.isnan(np.asarray(store)).all()  # a new store is NaN, like the in-memory matrix
    store.close()
    assert not path.parent.exists()


KILLED_WITH_A_STORE = (
    "import os, signal\n"
    "from headstart.features.store import FeatureStore\n"
    "store = FeatureStore(10, 4)\n"
    "print(store.path.parent, flush=True)\n"
    "os.kill(os.getpid(), signal.SIGKILL)\n"
)


def _backdate(folder, seconds: float) -> None:
    for path in [folder, *folder.iterdir()]:
        os.utime(path, (path.stat().st_atime - seconds,) * 2)


def test_a_killed_runs_scratch_is_removed_by_the_next_store_and_no_other(tmp_path, monkeypatch):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WITH_A_STORE], capture_output=True, text=True, env=env
    )
    assert killed.returncode == -9, killed.stderr
    left = tmp_path / os.path.basename(killed.stdout.strip())
    assert left.is_dir() and (left / "features.f16").is_file()  # a kill skips the removal at exit
    live = tmp_path / f"headstart-features-{os.getpid()}-live"
    live.mkdir()  # a folder of a process that runs (this one), however old, is kept
    touched_lately = tmp_path / (left.name + "-copy")
    touched_lately.mkdir()  # the same dead process, but touched lately (maybe another container)
    _backdate(left, 700)
    _backdate(live, 7000)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    store = FeatureStore(10, 4)
    assert not left.exists() and live.is_dir() and touched_lately.is_dir()
    assert store.path.parent.name.startswith(f"headstart-features-{os.getpid()}-")
    store.close()


def test_feature_matrix_stays_in_memory_within_the_budget(monkeypatch):
    assert isinstance(feature_matrix(100, 1280), np.ndarray)
    monkeypatch.setenv("HEADSTART_FEATURE_MEMORY_MB", "0.1")
    big = feature_matrix(100, 1280)
    assert isinstance(big, FeatureStore)
    arr = np.zeros((10, 3), np.float32)
    assert isinstance(select_rows(arr, np.ones(10, bool)), np.ndarray)
    assert isinstance(select_rows(big, np.ones(100, bool)), FeatureStore)


def test_float16_store_gives_the_predictions_of_float32_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 64)) * 2
    y = rng.integers(0, 4, 800)
    x = (centres[y] + rng.normal(size=(800, 64))).astype(np.float32)
    tr, va = np.arange(800) < 600, np.arange(800) >= 600
    in_memory = make_head("logistic")
    in_memory.fit(x[tr], y[tr], x[va], y[va], 4)
    store = _store_of(x)
    from_store = make_head("logistic")
    from_store.fit(store[tr], y[tr], store[va], y[va], 4)
    a, b = in_memory.predict_proba(x[va]), from_store.predict_proba(store[va])
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.99
    assert np.abs(a - b).max() < 0.05


def _peak_bytes_of_chunked_pass(n: int) -> int:
    store = _store_of(np.ones((n, 256), np.float32))
    tracemalloc.start()
    total = sum(float(c.sum()) for c in iter_chunks(store.select(np.ones(n, bool)), 512))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    store.close()
    assert total == n * 256
    return peak


def test_reading_a_store_in_chunks_does_not_grow_with_rows():
    small, large = _peak_bytes_of_chunked_pass(2000), _peak_bytes_of_chunked_pass(8000)
    assert large < 2 * small  # 4x the rows, far less than 4x the memory


@pytest.mark.slow
def test_extraction_beyond_the_budget_fills_a_store(tmp_path, monkeypatch):
    from conftest import make_class_folders

    from headstart.features.extractor import build_extractor

    paths = sorted(str(p) for p in make_class_folders(tmp_path / "data", per_class=4).rglob("*.jpg"))
    extractor = build_extractor(cache_dir=tmp_path / "cache", verbose=False)
    dense = extractor.extract(paths).features
    monkeypatch.setenv("HEADSTART_FEATURE_MEMORY_MB", "0")
    cold = build_extractor(cache_dir=tmp_path / "cache2", verbose=False).extract(paths).features
    warm = build_extractor(cache_dir=tmp_path / "cache2", verbose=False).extract(paths).features
    assert isinstance(cold, FeatureStore) and isinstance(warm, FeatureStore)
    for store in (cold, warm):
        np.testing.assert_allclose(np.asarray(store), dense, rtol=2e-3, atol=2e-3)
