"""2-D maps of bottleneck features (t-SNE through openTSNE, or PCA), computed once and cached.

Why cached: a warm re-run of ``train`` must stay fast, and t-SNE is the slow part of a report.
The coordinates are stored under a key made of the features' bytes, the method and the seed
(``CACHE/maps/KEY.npy``, plain ``.npy``, never pickle), so the same test split maps instantly.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headstart.core.choices import MAP_METHODS
from headstart.core.errors import ParameterError
from headstart.core.io import atomic_path
from headstart.core.system import usable_core_count

METHODS = MAP_METHODS
MAP_FORMAT = 1  # bump when the map for given features changes
PARALLEL_FROM = 5000
PCA_DIMS = 50  # t-SNE runs on the top principal components (the usual de-noising step)


@dataclass
class FeatureMap:
    xy: np.ndarray  # (n, 2) float32
    method: str
    seconds: float
    cached: bool


def map_key(features: np.ndarray, method: str, seed: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{method}-{seed}-v{MAP_FORMAT}-{features.shape}".encode())
    h.update(np.ascontiguousarray(features, dtype=np.float32).tobytes())
    return h.hexdigest()


def _pca(features: np.ndarray, dims: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    dims = min(dims, features.shape[0], features.shape[1])
    solver = "randomized" if dims < min(features.shape) // 4 else "auto"  # ~10x faster for 2 of 1280
    return PCA(dims, svd_solver=solver, random_state=seed).fit_transform(features.astype(np.float64))


def _tsne(features: np.ndarray, seed: int) -> np.ndarray:
    import openTSNE

    n = len(features)
    reduced = _pca(features, PCA_DIMS, seed)
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
    tsne = openTSNE.TSNE(
        perplexity=perplexity,
        initialization="pca",  # a stable global layout; and it converges faster than random
        # One thread below a few thousand points: on a busy CPU two threads ran 6-8x slower
        # (measured on a shared 2-core machine); beyond that the parallel gradient pays off.
        n_jobs=1 if n < PARALLEL_FROM else usable_core_count(),
        random_state=seed,
        verbose=False,
    )
    return np.asarray(tsne.fit(reduced))


def embed_features(
    features: np.ndarray, method: str = "tsne", seed: int = 0, cache_dir: str | Path | None = None
) -> FeatureMap:
    """2-D coordinates for ``features`` (rows), from the cache when these features were mapped before.

    Tiny inputs fall back gracefully: t-SNE needs a handful of points, so under 8 rows PCA is used;
    a single point sits at the origin.
    """
    if method not in METHODS:
        raise ParameterError(
            "method", f"unknown map method '{method}': choose tsne or pca (or none for no map)"
        )
    t0 = time.perf_counter()
    features = np.asarray(features, dtype=np.float32)
    n = len(features)
    used = method if n >= 8 else "pca"
    path = None
    if cache_dir is not None and n:
        path = Path(cache_dir) / "maps" / f"{map_key(features, used, seed)}.npy"
        if path.is_file():
            try:
                xy = np.load(path, allow_pickle=False)
                if xy.shape == (n, 2):
                    return FeatureMap(xy, used, time.perf_counter() - t0, True)
            except (OSError, ValueError):
                pass  # damaged entry: recompute below
    if n == 0:
        xy = np.zeros((0, 2))
    elif n == 1 or np.allclose(features, features[0]):
        xy = np.zeros((n, 2))
    elif used == "tsne":
        xy = _tsne(features, seed)
    else:
        xy = _pca(features, 2, seed)
    if xy.shape[1] < 2:  # two points give one principal component
        xy = np.hstack([xy, np.zeros((n, 2 - xy.shape[1]))])
    xy = xy.astype(np.float32)
    if path is not None:
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.save(f, xy, allow_pickle=False)
        except OSError:
            pass  # the cache is a speed-up: a read-only or full disk only costs the next run time
    return FeatureMap(xy, used, time.perf_counter() - t0, False)
