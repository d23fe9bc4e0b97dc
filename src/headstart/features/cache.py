"""The content-addressed feature cache: one SQLite file of float32 vectors.

Each image's features are stored under (backbone key, hash of the file's bytes), so renaming,
moving or re-splitting files never re-extracts, and a changed file does. A file's content hash
is remembered with its size, mtime, ctime and inode, so an unchanged file is not read again.

Several processes on one machine may share a cache (the ranks of a ``torchrun`` job, two runs at
once): SQLite's write-ahead log lets readers go on while one writer writes, a busy timeout makes
a writer wait for another's transaction, and a write still refused as busy after that is retried
(``with_retries``) before the run gives up caching. Machines must not share one cache file over
a network file system (SQLite's locks are not reliable there): see ``features.sharding``.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np

from headstart.core.io import clean_stale_temporaries
from headstart.data.images import read_bytes

T = TypeVar("T")
BUSY_RETRIES = 6  # attempts of an operation refused as busy, after the busy timeout each time
FEATURE_FORMAT = 1
STAMPS = "file_stamps"  # path -> (size, mtime, ctime, inode) the content hash was computed for
STALE_AFTER_S = 600  # a temporary file in the (maybe shared) cache untouched this long is a killed write  # bump when what a cached vector means changes


def default_cache_dir() -> Path:
    """``$HEADSTART_CACHE``, else ``$XDG_CACHE_HOME/headstart``, else ``~/.cache/headstart``."""
    if os.environ.get("HEADSTART_CACHE"):
        return Path(os.environ["HEADSTART_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "headstart"


def _db_text(path: str) -> str:
    """A path SQLite can store: non-UTF-8 bytes in a file name (kept by Python as surrogates)
    become backslash escapes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def content_hash(data: bytes) -> str:
    """The cache key of a file: a 128-bit BLAKE2b digest of its bytes."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


_WARNED: set[str] = set()


def _scratch_folder() -> Path:
    """A private folder removed when the process ends: the cache's place for one run."""
    path = tempfile.mkdtemp(prefix="headstart-cache-")
    atexit.register(shutil.rmtree, path, True)
    return Path(path)


CORRUPTION_CODES = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
BUSY_CODES = ("SQLITE_BUSY", "SQLITE_LOCKED")


def is_busy(error: sqlite3.Error) -> bool:
    """True when another connection holds the lock (a fault of the moment: try again)."""
    name = getattr(error, "sqlite_errorname", "") or ""
    if name:
        return name.startswith(BUSY_CODES)
    text = str(error).lower()
    return isinstance(error, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def with_retries(operation: Callable[[], T], attempts: int = BUSY_RETRIES) -> T:
    """``operation()``, tried again (after a growing, jittered pause) while the database is busy.

    Rule: the busy timeout already waits for another process's transaction; a retry covers what
    it cannot (a lock taken while changing the journal mode, a write refused to avoid a deadlock).
    """
    for attempt in range(attempts):
        try:
            return operation()
        except sqlite3.Error as e:
            if attempt == attempts - 1 or not is_busy(e):
                raise
            time.sleep(0.05 * 2**attempt * (1 + random.random()))
    raise AssertionError("unreachable")


def is_corruption(error: sqlite3.Error) -> bool:
    """True for a file SQLite cannot read as a database (moved aside); False for a fault of the
    moment or the place (locked, disk full, read-only folder), which leaves the file alone."""
    name = getattr(error, "sqlite_errorname", "") or ""
    if name:
        return name.startswith(CORRUPTION_CODES)
    return isinstance(error, sqlite3.DatabaseError) and not isinstance(error, sqlite3.OperationalError)


class FeatureCache:
    """SQLite store of float32 vectors with a checksum per row.

    A row whose checksum or length does not match is treated as missing (and recomputed);
    a database file that SQLite cannot read is moved aside and started afresh. A cache that
    cannot be used now (locked, disk full, read-only folder) gives one warning and the run goes
    on without caching: the cache is a speed-up, never a reason to fail.
    """

    def __init__(self, root: str | Path | None = None, timeout: float = 60.0) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.path = self.root / "features.sqlite"
        self.damaged = 0
        self.timeout = timeout
        self.problem = ""  # why the cache is not in use (empty while it is)
        self._lock = threading.Lock()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            clean_stale_temporaries(self.root, min_age=STALE_AFTER_S)
            self._db = self._open()
        except OSError as e:
            self._db = self._without_caching(e)
            self.root = _scratch_folder()  # exported networks and backbones too, for this run only
        except sqlite3.Error as e:
            self._db = self._without_caching(e)

    def _connect(self, path: Path | str) -> sqlite3.Connection:
        db = sqlite3.connect(path, timeout=self.timeout, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        if path != ":memory:":
            db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL never corrupts the file; a power cut may only lose the newest
        # rows, which are recomputed. FULL would fsync every batch (~10% of a cold run).
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS features (ns TEXT, key TEXT, dim INTEGER, "
            "crc TEXT, data BLOB, PRIMARY KEY (ns, key))"
        )
        # file_stamps, not the older file_hashes (without ctime), which an older headstart sharing
        # this cache still reads and writes: the two never touch each other's table
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {STAMPS} (path TEXT PRIMARY KEY, size INTEGER, "
            "mtime_ns INTEGER, ctime_ns INTEGER, inode INTEGER, hash TEXT)"
        )
        db.execute("SELECT count(*) FROM features LIMIT 1").fetchone()
        return db

    def _open(self) -> sqlite3.Connection:
        for attempt in range(2):
            try:
                return with_retries(lambda: self._connect(self.path))
            except sqlite3.Error as e:
                if attempt or not is_corruption(e):
                    raise
                aside = self.path.with_name(f"features.sqlite.damaged-{int(time.time())}")
                warnings.warn(f"feature cache {self.path} is damaged; moved to {aside.name}")
                for suffix in ("", "-wal", "-shm"):
                    p = Path(str(self.path) + suffix)
                    if p.exists():
                        p.rename(Path(str(aside) + suffix))
        raise AssertionError("unreachable")

    def _without_caching(self, error: Exception) -> sqlite3.Connection:
        """An in-memory store for the rest of the run, after one warning line naming the cause."""
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        self.problem = f"feature cache {self.path} not usable ({reason}): going on without caching"
        if self.problem not in _WARNED:  # once per process, however many caches open the same place
            _WARNED.add(self.problem)
            print(f"warning: {self.problem}", file=sys.stderr, flush=True)
        return self._connect(":memory:")

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Run one cache operation; a fault switches the run to an in-memory cache instead of failing."""
        try:
            yield
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = self._without_caching(e)

    @staticmethod
    def _crc(blob: bytes) -> str:
        return hashlib.blake2b(blob, digest_size=8).hexdigest()

    def get_many(self, ns: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of ``keys`` in namespace ``ns``; a missing or damaged row is left out."""
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock, self._guard():
            for i in range(0, len(unique), 500):
                chunk = unique[i : i + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._read(
                    f"SELECT key, dim, crc, data FROM features WHERE ns=? AND key IN ({marks})", [ns, *chunk]
                )
                for key, dim, crc, data in rows:
                    if data is None or len(data) != 4 * dim or self._crc(data) != crc:
                        self.damaged += 1
                        continue
                    found[key] = np.frombuffer(data, dtype=np.float32)
        return found

    def put_many(self, ns: str, items: Sequence[tuple[str, np.ndarray]]) -> None:
        """Store ``(key, vector)`` pairs in namespace ``ns`` in one transaction."""
        rows = []
        for key, vec in items:
            blob = np.ascontiguousarray(vec, dtype=np.float32).tobytes()
            rows.append((ns, key, len(blob) // 4, self._crc(blob), blob))
        with self._lock, self._guard():
            with_retries(lambda: self._write("INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?, ?)", rows))

    def _read(self, sql: str, params: Sequence[object]) -> list[tuple]:
        """The rows of one query, retried while the database is busy."""
        return with_retries(lambda: self._db.execute(sql, params).fetchall())

    def _write(self, sql: str, rows: Sequence[tuple]) -> None:
        """``rows`` written by ``sql`` in one transaction (rolled back whole on an error)."""
        with self._db:
            self._db.executemany(sql, rows)

    def known_hashes(self, paths: Sequence[str]) -> dict[str, tuple[int, int, int, int, str]]:
        """Content hashes seen before, with the file stat they were computed for: ``(size,
        mtime_ns, ctime_ns, inode, hash)``. ctime is in the stamp because a file rewritten with
        its size and mtime put back still gets a new ctime, which no user call can set."""
        found: dict[str, tuple[int, int, int, int, str]] = {}
        original = {_db_text(p): p for p in paths}
        with self._lock, self._guard():
            for i in range(0, len(paths), 500):
                chunk = [_db_text(p) for p in paths[i : i + 500]]
                marks = ",".join("?" * len(chunk))
                for path, size, mtime, ctime, inode, h in self._read(
                    f"SELECT path, size, mtime_ns, ctime_ns, inode, hash FROM {STAMPS} WHERE path IN ({marks})",
                    chunk,
                ):
                    found[original.get(path, path)] = (size, mtime, ctime, inode, h)
        return found

    def remember_hashes(self, rows: Sequence[tuple[str, int, int, int, int, str]]) -> None:
        """Store ``(path, size, mtime_ns, ctime_ns, inode, hash)`` rows for ``known_hashes``."""
        stored = [(_db_text(p), size, mtime, ctime, inode, h) for p, size, mtime, ctime, inode, h in rows]
        sql = (
            f"INSERT OR REPLACE INTO {STAMPS} (path, size, mtime_ns, ctime_ns, inode, hash) "
            "VALUES (?, ?, ?, ?, ?, ?)"
        )
        with self._lock, self._guard():
            with_retries(lambda: self._write(sql, stored))

    def close(self) -> None:
        self._db.close()


def hash_file(path: str) -> str:
    """``content_hash`` of a file's bytes; a missing or unreadable file raises ``BadImageError``."""
    return content_hash(read_bytes(path))
