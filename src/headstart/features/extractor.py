"""Bottleneck features: fast streaming extraction and a content-addressed on-disk cache.

Why it is fast on a CPU: decoding runs in a thread pool (Pillow releases the GIL) while the
backbone runs as a static-shape ONNX graph in OpenVINO (bf16 where the CPU has it) or ONNX
Runtime, with uint8 pixels in and normalisation inside the graph. Why a second run is
instant: each image's features are stored under (backbone key, hash of the file's bytes),
so renaming, moving or re-splitting files never re-extracts, and a changed file does.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import sqlite3
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.errors import BadImageError
from headstart.core.progress import NullProgress, ProgressSink
from headstart.core.system import usable_core_count
from headstart.data.images import Preprocessor, read_bytes
from headstart.models.backbones import Backbone

FEATURE_FORMAT = 1  # bump when what a cached vector means changes


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
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# --------------------------------------------------------------------------- cache


class FeatureCache:
    """SQLite store of float32 vectors with a checksum per row.

    A row whose checksum or length does not match is treated as missing (and recomputed);
    a database file that SQLite cannot read is moved aside and started afresh.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "features.sqlite"
        self.damaged = 0
        self._lock = threading.Lock()
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        for attempt in range(2):
            try:
                db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL never corrupts the file; a power cut may only lose the newest
                # rows, which are recomputed. FULL would fsync every batch (~10% of a cold run).
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS features (ns TEXT, key TEXT, dim INTEGER, "
                    "crc TEXT, data BLOB, PRIMARY KEY (ns, key))"
                )
                db.execute(
                    "CREATE TABLE IF NOT EXISTS file_hashes (path TEXT PRIMARY KEY, size INTEGER, "
                    "mtime_ns INTEGER, inode INTEGER, hash TEXT)"
                )
                db.execute("SELECT count(*) FROM features LIMIT 1").fetchone()
                return db
            except sqlite3.DatabaseError:
                if attempt:
                    raise
                aside = self.path.with_name(f"features.sqlite.damaged-{int(time.time())}")
                warnings.warn(f"feature cache {self.path} is damaged; moved to {aside.name}")
                for suffix in ("", "-wal", "-shm"):
                    p = Path(str(self.path) + suffix)
                    if p.exists():
                        p.rename(Path(str(aside) + suffix))
        raise AssertionError("unreachable")

    @staticmethod
    def _crc(blob: bytes) -> str:
        return hashlib.blake2b(blob, digest_size=8).hexdigest()

    def get_many(self, ns: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for i in range(0, len(unique), 500):
                chunk = unique[i : i + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, dim, crc, data FROM features WHERE ns=? AND key IN ({marks})",
                    [ns, *chunk],
                ).fetchall()
                for key, dim, crc, data in rows:
                    if data is None or len(data) != 4 * dim or self._crc(data) != crc:
                        self.damaged += 1
                        continue
                    found[key] = np.frombuffer(data, dtype=np.float32)
        return found

    def put_many(self, ns: str, items: Sequence[tuple[str, np.ndarray]]) -> None:
        rows = []
        for key, vec in items:
            blob = np.ascontiguousarray(vec, dtype=np.float32).tobytes()
            rows.append((ns, key, len(blob) // 4, self._crc(blob), blob))
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?, ?)", rows)

    def known_hashes(self, paths: Sequence[str]) -> dict[str, tuple[int, int, int, str]]:
        """Content hashes seen before, with the file stat they were computed for."""
        found: dict[str, tuple[int, int, int, str]] = {}
        original = {_db_text(p): p for p in paths}
        with self._lock:
            for i in range(0, len(paths), 500):
                chunk = [_db_text(p) for p in paths[i : i + 500]]
                marks = ",".join("?" * len(chunk))
                for path, size, mtime, inode, h in self._db.execute(
                    f"SELECT path, size, mtime_ns, inode, hash FROM file_hashes WHERE path IN ({marks})",
                    chunk,
                ):
                    found[original.get(path, path)] = (size, mtime, inode, h)
        return found

    def remember_hashes(self, rows: Sequence[tuple[str, int, int, int, str]]) -> None:
        rows = [(_db_text(p), *rest) for p, *rest in rows]
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?, ?)", rows)

    def close(self) -> None:
        self._db.close()


# --------------------------------------------------------------------------- engines


def pixels_to_features(backbone: Backbone) -> Any:
    """uint8 NHWC pixels -> normalised NCHW floats -> pooled features, as one torch module."""
    import torch

    class PixelsToFeatures(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = backbone.model
            mean = torch.tensor(backbone.data_config["mean"], dtype=torch.float32) * 255.0
            std = torch.tensor(backbone.data_config["std"], dtype=torch.float32) * 255.0
            self.register_buffer("mean", mean.view(1, 3, 1, 1))
            self.register_buffer("std", std.view(1, 3, 1, 1))

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = pixels.permute(0, 3, 1, 2).float()
            return self.net((x - self.mean) / self.std)

    return PixelsToFeatures().eval()


def export_onnx(backbone: Backbone, path: Path, batch_size: int | None) -> Path:
    """Export the feature network; a static batch is ~1.7x faster on CPU than a dynamic one."""
    import torch

    _, h, w = backbone.data_config["input_size"]
    module = pixels_to_features(backbone)
    example = torch.zeros((batch_size or 2, h, w, 3), dtype=torch.uint8)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            input_names=["pixels"],
            output_names=["features"],
            dynamic_axes=None if batch_size else {"pixels": {0: "batch"}, "features": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    os.replace(tmp, path)
    return path


class Engine:
    """Runs the feature network on a uint8 batch; subclasses pick the runtime."""

    name = "base"
    precision = "fp32"
    static_batch: int | None = None

    def run(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _pad(self, pixels: np.ndarray) -> np.ndarray:
        n = len(pixels)
        if self.static_batch and n != self.static_batch:
            padded = np.zeros((self.static_batch, *pixels.shape[1:]), dtype=pixels.dtype)
            padded[:n] = pixels
            return padded
        return pixels

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.run(self._pad(pixels))[: len(pixels)]

    def stream(self, batches: Iterable[tuple[Any, np.ndarray]]) -> Iterator[tuple[Any, np.ndarray]]:
        """Run ``(tag, pixels)`` batches, yielding ``(tag, features)`` in the same order.

        This one runs them one after another; runtimes with asynchronous requests overlap
        several batches, which keeps every core busy while Python decodes the next ones.
        """
        for tag, pixels in batches:
            yield tag, self(pixels)


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, backbone: Backbone, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.module = pixels_to_features(backbone).to(memory_format=torch.channels_last)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(pixels)).float().numpy()


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, onnx_path: Path, batch_size: int, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.static_batch = batch_size

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"pixels": pixels})[0]


class OpenVinoEngine(Engine):
    name = "openvino"

    def __init__(self, onnx_path: Path, batch_size: int, threads: int, cache_dir: Path) -> None:
        import openvino as ov

        core = ov.Core()
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        self.precision = "bf16" if "BF16" in caps else "fp32"
        # THROUGHPUT: several single-threaded streams instead of one multi-threaded one, so
        # no inference thread spins at a barrier while a decode thread holds its core
        # (~15% more images/s end to end on 2 cores than LATENCY).
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "THROUGHPUT",
            "CACHE_DIR": str(cache_dir / "openvino"),
        }
        self.compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
        self.requests = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.request = self.compiled.create_infer_request()
        self.static_batch = batch_size

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer({0: pixels})[0], dtype=np.float32, copy=True)

    def stream(self, batches: Iterable[tuple[Any, np.ndarray]]) -> Iterator[tuple[Any, np.ndarray]]:
        import openvino as ov

        queue = ov.AsyncInferQueue(self.compiled, self.requests)
        done: dict[int, np.ndarray] = {}
        lock = threading.Lock()

        def finished(request: Any, seq: int) -> None:
            out = np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
            with lock:
                done[seq] = out

        queue.set_callback(finished)
        waiting: deque[tuple[int, Any, int]] = deque()

        def ready() -> Iterator[tuple[Any, np.ndarray]]:
            while waiting:
                seq, tag, n = waiting[0]
                with lock:
                    out = done.pop(seq, None)
                if out is None:
                    return
                waiting.popleft()
                yield tag, out[:n]

        for seq, (tag, pixels) in enumerate(batches):
            queue.start_async({0: self._pad(pixels)}, seq)  # blocks while all requests are busy
            waiting.append((seq, tag, len(pixels)))
            yield from ready()
        queue.wait_all()
        yield from ready()
        if waiting:
            raise RuntimeError("OpenVINO inference did not return every batch")


def available_engines() -> list[str]:
    names = []
    for module, name in (("openvino", "openvino"), ("onnxruntime", "onnxruntime")):
        try:
            __import__(module)
            names.append(name)
        except ImportError:
            pass
    return [*names, "torch"]


@functools.cache
def engine_precision(engine: str) -> str:
    """What numerics an engine will use here, known without building it (part of the cache key)."""
    if engine == "openvino":
        import openvino as ov

        caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        return "bf16" if "BF16" in caps else "fp32"
    return "fp32"


def resolve_engine(engine: str) -> str:
    names = available_engines()
    if engine == "auto":
        return names[0]
    if engine not in ("openvino", "onnxruntime", "torch"):
        raise ValueError(f"unknown engine '{engine}': choose auto, openvino, onnxruntime or torch")
    if engine not in names:
        raise ImportError(f"engine '{engine}' is not installed: pip install {engine}")
    return engine


def build_engine(backbone: Backbone, engine: str, batch_size: int, threads: int, cache_dir: Path) -> Engine:
    engine = resolve_engine(engine)
    if engine == "torch":
        return TorchEngine(backbone, threads)
    onnx_path = cache_dir / "models" / f"{backbone.key}-b{batch_size}.onnx"
    if not onnx_path.exists():
        export_onnx(backbone, onnx_path, batch_size)
    if engine == "openvino":
        return OpenVinoEngine(onnx_path, batch_size, threads, cache_dir)
    return OnnxRuntimeEngine(onnx_path, batch_size, threads)


# --------------------------------------------------------------------------- extraction


@dataclass
class ExtractionResult:
    """Features row-aligned with the input paths; rows of failed images are NaN."""

    features: np.ndarray
    errors: dict[int, str]
    hashes: list[str | None]
    n_cached: int = 0
    n_extracted: int = 0
    n_damaged_cache: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    engine: str = ""

    @property
    def ok(self) -> np.ndarray:
        mask = np.ones(len(self.features), dtype=bool)
        mask[list(self.errors)] = False
        return mask

    @property
    def images_per_s(self) -> float:
        total = self.seconds.get("total", 0.0)
        return (len(self.features) / total) if total > 0 else 0.0

    @property
    def new_images_per_s(self) -> float:
        t = self.seconds.get("extract", 0.0)
        return self.n_extracted / t if t > 0 else 0.0


def _hash_file(path: str) -> str:
    return content_hash(read_bytes(path))


class FeatureExtractor:
    """Turns image paths into cached backbone features, streaming in bounded batches."""

    def __init__(
        self,
        backbone: Backbone,
        cache: FeatureCache | None = None,
        engine: str = "auto",
        batch_size: int = 8,
        workers: int | None = None,
        progress: ProgressSink | None = None,
    ) -> None:
        self.backbone = backbone
        self.cache = cache if cache is not None else FeatureCache()
        self.engine_name = resolve_engine(engine)
        self.batch_size = batch_size
        self.workers = workers or usable_core_count()
        self.progress = progress or NullProgress()
        self._preprocess: Preprocessor | None = None
        self._engine: Engine | None = None

    @property
    def preprocess(self) -> Preprocessor:
        if self._preprocess is None:
            self._preprocess = Preprocessor(self.backbone.data_config)
        return self._preprocess

    @property
    def namespace(self) -> str:
        """Cache namespace: backbone identity plus the engine's numerics."""
        precision = engine_precision(self.engine_name)
        return f"{self.backbone.key}-{precision}-v{FEATURE_FORMAT}"

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = build_engine(
                self.backbone, self.engine_name, self.batch_size, self.workers, self.cache.root
            )
        return self._engine

    def _decode(self, path: str) -> np.ndarray | str:
        try:
            return self.preprocess.load(path)
        except BadImageError as e:
            return e.reason

    def _batches(
        self, pool: ThreadPoolExecutor, paths: Sequence[str], prefetch: int = 3
    ) -> Iterator[list[tuple[int, np.ndarray | str]]]:
        """Yield decoded batches in order, keeping only ``prefetch`` batches in flight."""
        pending: deque[list[tuple[int, Future]]] = deque()
        starts = iter(range(0, len(paths), self.batch_size))

        def submit_next() -> None:
            start = next(starts, None)
            if start is not None:
                idx = range(start, min(start + self.batch_size, len(paths)))
                pending.append([(i, pool.submit(self._decode, paths[i])) for i in idx])

        for _ in range(prefetch):
            submit_next()
        while pending:
            batch = pending.popleft()
            submit_next()
            yield [(i, fut.result()) for i, fut in batch]

    def extract(self, paths: Sequence[str | Path], stage: str = "features") -> ExtractionResult:
        paths = [str(p) for p in paths]
        n = len(paths)
        t_start = time.perf_counter()
        errors: dict[int, str] = {}
        hashes: list[str | None] = [None] * n
        with ThreadPoolExecutor(self.workers) as pool, ThreadPoolExecutor(1) as builder:
            # 1. content hashes: the cache key of every image. A file whose size, mtime and
            #    inode are unchanged since it was last hashed is not read again (as git does).
            known = self.cache.known_hashes(paths)
            # Files never hashed before are most likely not cached either: start exporting and
            # compiling the network now, on its own thread, while they are hashed and decoded.
            engine_future = None
            if self._engine is None and len(known) < n:
                engine_future = builder.submit(lambda: self.engine)
            futures: dict[int, Future] = {}
            fresh = []
            for i, p in enumerate(paths):
                try:
                    st = os.stat(p)
                    stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
                except OSError:
                    stamp = None
                seen = known.get(p)
                if stamp is not None and seen is not None and seen[:3] == stamp:
                    hashes[i] = seen[3]
                else:
                    futures[i] = pool.submit(_hash_file, p)
                    if stamp is not None:
                        fresh.append((i, stamp))
            for i, fut in futures.items():
                try:
                    hashes[i] = fut.result()
                except BadImageError as e:
                    errors[i] = e.reason
            self.cache.remember_hashes(
                [(paths[i], *stamp, hashes[i]) for i, stamp in fresh if hashes[i] is not None]
            )
            t_hash = time.perf_counter()
            damaged_before = self.cache.damaged
            cached = self.cache.get_many(self.namespace, [h for h in hashes if h is not None])
            dim = self.backbone.num_features
            features = np.full((n, dim), np.nan, dtype=np.float32)
            todo: dict[str, list[int]] = {}
            for i, h in enumerate(hashes):
                if h is None:
                    continue
                if h in cached and cached[h].shape[0] == dim:
                    features[i] = cached[h]
                else:
                    todo.setdefault(h, []).append(i)
            n_cached = n - len(errors) - sum(len(v) for v in todo.values())
            t_lookup = time.perf_counter()
            # 2. decode + run the network on the misses, one representative per content hash
            reps = [idxs[0] for idxs in todo.values()]
            extracted = 0
            if reps:
                # Built lazily (a warm run never exports or compiles), and on its own thread so
                # the first batches decode while the network is exported and compiled.
                if engine_future is None:
                    engine_future = builder.submit(lambda: self.engine)
                rep_paths = [paths[i] for i in reps]
                batches = self._batches(pool, rep_paths, prefetch=3 if engine_future.done() else 12)
                first = next(batches)
                engine = engine_future.result()
                t_engine = time.perf_counter()
                self.progress.start(f"extracting {stage}", len(reps))

                def decoded() -> Iterator[tuple[tuple[list[int], int], np.ndarray]]:
                    for batch in itertools.chain([first], batches):
                        good = [(j, item) for j, item in batch if not isinstance(item, str)]
                        for j, item in batch:
                            if isinstance(item, str):
                                for i in todo[hashes[reps[j]]]:
                                    errors[i] = item
                        if good:
                            yield ([j for j, _ in good], len(batch)), np.stack([a for _, a in good])
                        else:
                            self.progress.advance(len(batch))

                for (js, n_batch), out in engine.stream(decoded()):
                    rows = []
                    for j, vec in zip(js, out):
                        h = hashes[reps[j]]
                        features[todo[h]] = vec
                        rows.append((h, vec))
                    self.cache.put_many(self.namespace, rows)
                    extracted += len(js)
                    self.progress.advance(n_batch)
                self.progress.finish()
            else:
                t_engine = time.perf_counter()
        t_end = time.perf_counter()
        return ExtractionResult(
            features=features,
            errors=dict(sorted(errors.items())),
            hashes=hashes,
            n_cached=n_cached,
            n_extracted=extracted,
            n_damaged_cache=self.cache.damaged - damaged_before,
            seconds={
                "hash": t_hash - t_start,
                "lookup": t_lookup - t_hash,
                "engine_setup": t_engine - t_lookup,
                "extract": t_end - t_engine,
                "total": t_end - t_start,
            },
            engine=f"{self.engine_name}-{engine_precision(self.engine_name)}",
        )


def extract_features(
    backbone: Backbone,
    paths: Sequence[str | Path],
    cache: FeatureCache | None = None,
    **kwargs: object,
) -> ExtractionResult:
    """One-call form of :class:`FeatureExtractor` for scripts and notebooks."""
    return FeatureExtractor(backbone, cache=cache, **kwargs).extract(paths)


def build_extractor(
    backbone: str | Backbone | None = None,
    weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    engine: str = "auto",
    batch_size: int = 8,
    workers: int | None = None,
    verbose: bool = True,
) -> FeatureExtractor:
    """The one way to set up extraction: backbone (a timm name, or one already built), the
    feature cache, the engine, the batch size, the decoding threads and progress lines.

    Args:
        backbone: timm model name (default: the offline EfficientNet-Lite0) or a built ``Backbone``.
        weights: local weights file for a named backbone.
        cache_dir: feature cache folder (default ``default_cache_dir()``).
        engine: ``auto``, ``openvino``, ``onnxruntime`` or ``torch``.
        batch_size: images per engine call.
        workers: decoding threads (default: the usable cores).
        verbose: print progress lines (images/s, ETA) to stderr.
    """
    from headstart.core.progress import ConsoleProgress
    from headstart.models.backbones import DEFAULT_BACKBONE, create_backbone

    cache = FeatureCache(cache_dir)
    if not isinstance(backbone, Backbone):
        backbone = create_backbone(backbone or DEFAULT_BACKBONE, weights, cache.root)
    progress = ConsoleProgress() if verbose else NullProgress()
    return FeatureExtractor(
        backbone, cache=cache, engine=engine, batch_size=batch_size, workers=workers, progress=progress
    )
