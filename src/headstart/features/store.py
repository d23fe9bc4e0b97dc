"""Feature matrices that do not have to fit in memory: rows kept in a memory-mapped scratch file.

Small data keeps its features as one in-memory float32 array (what every step did before and
still does). Beyond ``memory_budget()`` bytes of float32 features, ``feature_matrix`` gives a
``FeatureStore`` instead: float16 rows in a file of a private scratch folder (never the user's
data folder), removed when the store is dropped or the process ends. Readers take rows in
chunks through short-lived mappings, so the resident memory of a run is the chunk being used,
not the matrix.

A killed run (``kill -9``, an out-of-memory kill) skips that removal, so the folder's name holds
its process id, and the next store made removes the folders of processes that are gone.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from headstart.core.io import process_alive

DEFAULT_BUDGET_MB = 128  # float32 features above this many MiB go to a FeatureStore (26,000 images of 1,280)
STORE_DTYPE = np.float16  # on flowers, float16 features score as float32 ones (see README)
# what numpy takes to pick rows (and, in a tuple, columns)
RowIndex = int | slice | np.ndarray | list[int] | tuple[int | slice | np.ndarray | None, ...]
CHUNK_ROWS = 8192  # rows per read: ~20 MB of float16 at 1280 features
REMAP_BYTES = 64 << 20  # the writer's mapping is renewed after this many bytes (bounds its resident pages)
SCRATCH_PREFIX = "headstart-features-"  # + PID-RANDOM, in the temporary folder
# a scratch folder of a process that is gone, untouched this long, was left by a kill (the check of
# the age keeps a folder that another container sharing /tmp, with its own process ids, still uses)
ABANDONED_AFTER_S = 600


def memory_budget() -> int:
    """Bytes of float32 features kept in memory (``$HEADSTART_FEATURE_MEMORY_MB``, default 128 MiB)."""
    return int(float(os.environ.get("HEADSTART_FEATURE_MEMORY_MB", DEFAULT_BUDGET_MB)) * (1 << 20))


def feature_matrix(n_rows: int, dim: int) -> np.ndarray | FeatureStore:
    """An (n_rows, dim) matrix filled with NaN: in memory within ``memory_budget()``, else a store."""
    if n_rows * dim * 4 <= memory_budget():
        return np.full((n_rows, dim), np.nan, dtype=np.float32)
    return FeatureStore(n_rows, dim)


def is_store(x: object) -> bool:
    return isinstance(x, FeatureStore)


def select_rows(features: np.ndarray | FeatureStore, mask: np.ndarray) -> np.ndarray | FeatureStore:
    """``features[mask]``: a copy for an array, a view (no copy) for a store."""
    if isinstance(features, FeatureStore):
        return features.select(mask)
    return features[mask]


def remove_abandoned_scratch(parent: str | Path | None = None, min_age: float = ABANDONED_AFTER_S) -> int:
    """Delete the scratch folders in ``parent`` (default: the temporary folder) of processes that
    are gone and untouched for ``min_age`` seconds; returns how many."""
    removed = 0
    for folder in Path(parent or tempfile.gettempdir()).glob(SCRATCH_PREFIX + "*"):
        pid = folder.name.removeprefix(SCRATCH_PREFIX).split("-")[0]
        try:
            age = time.time() - max(p.stat().st_mtime for p in [folder, *folder.iterdir()])
        except OSError:
            continue  # removed meanwhile, or not ours to read
        if pid.isdigit() and age >= min_age and not folder.is_symlink() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


class _Scratch:
    """The store's file and folder; removed with the last store sharing it, or at exit."""

    def __init__(self, n_rows: int, dim: int, dtype: npt.DTypeLike) -> None:
        remove_abandoned_scratch()
        self.folder = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))
        self.path = self.folder / "features.f16" if dtype == np.float16 else self.folder / "features.bin"
        self.shape, self.dtype = (n_rows, dim), np.dtype(dtype)
        with open(self.path, "wb") as f:
            f.truncate(n_rows * dim * self.dtype.itemsize)
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.folder), True)
        atexit.register(self._cleanup)

    def mapping(self, start: int, stop: int, mode: Literal["r", "r+"] = "r") -> np.memmap:
        """Rows ``start:stop`` mapped (a mapping of its own, so dropping it frees its pages)."""
        row_bytes = self.shape[1] * self.dtype.itemsize
        return np.memmap(
            self.path, self.dtype, mode, offset=start * row_bytes, shape=(stop - start, self.shape[1])
        )


class FeatureStore:
    """A (rows, features) matrix on disk, read and written in chunks.

    ``store[mask]`` / ``store[indices]`` / ``store[a:b]`` give float32 arrays of the rows asked
    for; ``select(mask)`` gives a view (no copy) that the fit flow passes around instead of
    ``features[mask]``; ``chunks()`` streams a view's rows.
    """

    def __init__(
        self, n_rows: int, dim: int, dtype: npt.DTypeLike = STORE_DTYPE, *, _scratch: _Scratch | None = None
    ) -> None:
        self._scratch = _scratch or _Scratch(n_rows, dim, dtype)
        self._rows: np.ndarray | None = None  # row numbers in the file (None: all, in order)
        self._writer: np.memmap | None = None
        self._written = 0
        if _scratch is None:
            self.fill(np.nan)

    # ---------------------------------------------------------------- shape
    @property
    def path(self) -> Path:
        return self._scratch.path

    @property
    def dtype(self) -> np.dtype:
        return self._scratch.dtype

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self._scratch.shape[1])

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return self._scratch.shape[0] if self._rows is None else len(self._rows)

    def file_rows(self) -> np.ndarray:
        """The file's row number of each of this view's rows."""
        return np.arange(self._scratch.shape[0]) if self._rows is None else self._rows

    # ---------------------------------------------------------------- writing
    def fill(self, value: float) -> None:
        n = self._scratch.shape[0]
        for start in range(0, n, CHUNK_ROWS):
            part = self._scratch.mapping(start, min(start + CHUNK_ROWS, n), "r+")
            part[:] = value
            part.flush()
            del part

    def __setitem__(self, index: RowIndex, value: npt.ArrayLike) -> None:
        """Write rows (file row numbers of an unselected store); the mapping is renewed now and then."""
        if self._rows is not None:
            raise TypeError("a selected view of a FeatureStore is read-only")
        if self._writer is None:
            self._writer = self._scratch.mapping(0, self._scratch.shape[0], "r+")
        self._writer[index] = value
        self._written += np.size(value) * self.dtype.itemsize
        if self._written >= REMAP_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write pending rows to the file and drop the writer's mapping (and its resident pages)."""
        if self._writer is not None:
            self._writer.flush()
            self._writer = None
        self._written = 0

    # ---------------------------------------------------------------- reading
    def select(self, mask: np.ndarray) -> FeatureStore:
        """The rows where ``mask`` is True (or at these positions), as a view sharing the file."""
        self.flush()
        view = FeatureStore(0, 0, _scratch=self._scratch)
        view._rows = self.file_rows()[np.asarray(mask)]
        return view

    def _read(self, file_rows: np.ndarray) -> np.ndarray:
        """float32 copies of the given file rows, read in chunks of short-lived mappings."""
        self.flush()
        out = np.empty((len(file_rows), self._scratch.shape[1]), dtype=np.float32)
        if len(file_rows) == 0:
            return out
        order = np.argsort(file_rows, kind="stable")
        ordered = file_rows[order]
        for start in range(0, len(ordered), CHUNK_ROWS):
            part = ordered[start : start + CHUNK_ROWS]
            lo, hi = int(part[0]), int(part[-1]) + 1
            mapped = self._scratch.mapping(lo, hi)
            out[order[start : start + CHUNK_ROWS]] = mapped[part - lo]
            del mapped
        return out

    def __getitem__(self, index: RowIndex) -> np.ndarray:
        rows = self.file_rows()
        if isinstance(index, (int, np.integer)):
            return self._read(rows[[int(index)]])[0]
        if isinstance(index, tuple):
            raise TypeError("a FeatureStore is indexed by rows only")
        return self._read(rows[index])

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        data = self._read(self.file_rows())
        return data if dtype is None else data.astype(dtype)

    def chunks(self, rows: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
        """This view's rows in order, ``rows`` at a time, as float32 arrays."""
        file_rows = self.file_rows()
        for start in range(0, len(file_rows), rows):
            yield self._read(file_rows[start : start + rows])

    def close(self) -> None:
        """Remove the scratch file now (every view sharing it becomes unusable)."""
        self._writer = None
        self._scratch._cleanup()


def iter_chunks(x: np.ndarray | FeatureStore, rows: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
    """Rows of an array or a store, ``rows`` at a time (float32)."""
    if isinstance(x, FeatureStore):
        yield from x.chunks(rows)
        return
    for start in range(0, len(x), rows):
        yield np.asarray(x[start : start + rows], dtype=np.float32)
