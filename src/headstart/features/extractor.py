"""Bottleneck features: image paths in, cached backbone features out, streaming in bounded batches.

Why it is fast on a CPU: content hashes come from the cache for unchanged files; only images
whose features are not cached are decoded, in a thread pool (Pillow releases the GIL), while the
engine (see ``engines``) is exported and compiled on its own thread and then runs the batches.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from headstart.core.errors import BadImageError, ParameterError
from headstart.core.progress import ConsoleProgress, NullProgress, ProgressSink
from headstart.core.system import usable_core_count
from headstart.data.images import Preprocessor, decode_image, read_bytes
from headstart.features.cache import FEATURE_FORMAT, FeatureCache, content_hash, hash_file
from headstart.features.engines import (
    Engine,
    build_engine,
    check_feature_precision,
    engine_precision,
    resolve_engine,
)
from headstart.features.store import FeatureStore, feature_matrix
from headstart.models.backbones import DEFAULT_BACKBONE, Backbone, create_backbone
from headstart.models.taps import LAYER_CHOICES, layer_group_widths

CALIBRATION_IMAGES = 300
LOOKUP_ROWS = 4096  # cache rows looked up at a time


@dataclass
class ExtractionResult:
    """Features row-aligned with the input paths; rows of failed images are NaN. Beyond the
    memory budget ``features`` is a ``FeatureStore`` (rows on disk, read in chunks)."""

    features: np.ndarray | FeatureStore
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
        precision: str = "auto",
        layers: str = "last",
        flip: bool = False,
        group_widths: Sequence[int] | None = None,
        share_engine_of: FeatureExtractor | None = None,
    ) -> None:
        """Args:
        layers: ``last`` or ``multi`` (pooled block groups too, see ``models.taps``).
        flip: extract the left-right mirror of every image (test-time augmentation).
        group_widths: a multi-layer vector's group widths, where known without building the
            network (a loaded bundle); else read from the network.
        share_engine_of: an extractor of the same backbone and layers whose engine to reuse
            (the mirror is flipped before the engine, so it runs the same graph).
        """
        self.backbone = backbone
        self.cache = cache if cache is not None else FeatureCache()
        self.engine_name = resolve_engine(engine)
        check_feature_precision(precision, self.engine_name)
        self.precision = precision
        self.batch_size = batch_size
        self.workers = workers or usable_core_count()
        self.progress = progress or NullProgress()
        self._preprocess: Preprocessor | None = None
        self._engine: Engine | None = None
        self._calibration_paths: list[str] = []
        if layers not in LAYER_CHOICES:
            raise ParameterError("features", f"unknown value '{layers}': choose last or multi")
        self.layers = layers
        self.flip = flip
        self._group_widths = list(group_widths) if group_widths else None
        self._engine_owner = share_engine_of

    @property
    def group_widths(self) -> list[int]:
        """Width of each feature group: one group for ``last``; each block group, then the last
        features, for ``multi``."""
        if self.layers == "last":
            return [self.backbone.num_features]
        if self._group_widths is None:
            self._group_widths = layer_group_widths(self.backbone.model)
        return self._group_widths

    @property
    def width(self) -> int:
        return sum(self.group_widths)

    @property
    def preprocess(self) -> Preprocessor:
        if self._preprocess is None:
            self._preprocess = Preprocessor(self.backbone.data_config)
        return self._preprocess

    @property
    def namespace(self) -> str:
        """Cache namespace: backbone identity plus the engine's numerics (int8 features never mix
        with fp32 or bf16 ones; multi-layer and mirrored features each have their own)."""
        tags = ("-multi" if self.layers == "multi" else "") + ("-flip" if self.flip else "")
        return f"{self.backbone.key}-{self.numerics}-v{FEATURE_FORMAT}{tags}"

    @property
    def numerics(self) -> str:
        """``fp32``, ``bf16`` or ``int8``: what the features are computed in."""
        return engine_precision(self.engine_name, self.precision)

    @property
    def engine(self) -> Engine:
        if self._engine_owner is not None:
            return self._engine_owner.engine
        if self._engine is None:
            self._engine = build_engine(
                self.backbone,
                self.engine_name,
                self.batch_size,
                self.workers,
                self.cache.root,
                self.precision,
                self._calibration_pixels,
                self.layers,
            )
        return self._engine

    @property
    def _engine_ready(self) -> bool:
        owner = self._engine_owner or self
        return owner._engine is not None

    def _calibration_pixels(self) -> np.ndarray:
        """int8 calibration: up to ``CALIBRATION_IMAGES`` of the images being extracted, taken at
        even steps through them (a class-sorted listing still gives every class), unreadable ones
        left out."""
        paths = self._calibration_paths
        step = max(1, len(paths) // CALIBRATION_IMAGES)
        chosen = paths[::step][:CALIBRATION_IMAGES]
        with ThreadPoolExecutor(self.workers) as pool:
            decoded = [a for a in pool.map(self._decode, chosen) if not isinstance(a, str)]
        shape = (0, self.preprocess.height, self.preprocess.width, 3)
        return np.stack(decoded) if decoded else np.zeros(shape, np.uint8)

    def _decode(self, path: str, expected_hash: str | None = None) -> np.ndarray | str:
        """One file's pixels, or the reason it cannot be used.

        Rule: the bytes decoded are the bytes hashed: a file whose content no longer matches the
        hash it is cached under is refused, so features are never stored under another file's hash.
        """
        try:
            data = read_bytes(path)
            if expected_hash is not None and content_hash(data) != expected_hash:
                return "changed while being read (re-run to use its new content)"
            pixels = self.preprocess(decode_image(data, self.preprocess.min_side))
            return np.ascontiguousarray(pixels[:, ::-1]) if self.flip else pixels
        except BadImageError as e:
            return e.reason

    def _batches(
        self,
        pool: ThreadPoolExecutor,
        paths: Sequence[str],
        prefetch: int = 3,
        hashes: Sequence[str | None] | None = None,
    ) -> Iterator[list[tuple[int, np.ndarray | str]]]:
        """Yield decoded batches in order, keeping only ``prefetch`` batches in flight."""
        pending: deque[list[tuple[int, Future]]] = deque()
        starts = iter(range(0, len(paths), self.batch_size))

        def submit_next() -> None:
            start = next(starts, None)
            if start is not None:
                idx = range(start, min(start + self.batch_size, len(paths)))
                pending.append(
                    [(i, pool.submit(self._decode, paths[i], hashes[i] if hashes else None)) for i in idx]
                )

        for _ in range(prefetch):
            submit_next()
        while pending:
            batch = pending.popleft()
            submit_next()
            yield [(i, fut.result()) for i, fut in batch]

    def extract(self, paths: Sequence[str | Path], stage: str = "features") -> ExtractionResult:
        """Features for ``paths``, row-aligned; a file that cannot be used gets a NaN row and an
        entry in ``errors``. ``stage`` names the progress line."""
        files = [str(p) for p in paths]
        clock = {"start": time.perf_counter()}
        errors: dict[int, str] = {}
        damaged_before = self.cache.damaged
        self._calibration_paths = files
        with ThreadPoolExecutor(self.workers) as pool, ThreadPoolExecutor(1) as builder:
            known = self.cache.known_hashes(files)
            # Files never hashed before are most likely not cached either: start exporting and
            # compiling the network now, on its own thread, while they are hashed and decoded.
            engine_future = None
            if not self._engine_ready and len(known) < len(files):
                self.preprocess  # noqa: B018 - built first: timm's lazy imports are not thread-safe
                engine_future = builder.submit(lambda: self.engine)
            hashes = self._content_hashes(pool, files, known, errors)
            clock["hash"] = time.perf_counter()
            features, todo = self._cached_features(hashes)
            n_cached = len(files) - len(errors) - sum(len(v) for v in todo.values())
            clock["lookup"] = time.perf_counter()
            extracted = 0
            if todo:
                # Built lazily (a warm run never imports timm, exports or compiles), the network
                # on its own thread so the first batches decode while it is exported and compiled.
                self.preprocess  # noqa: B018 - before the builder thread imports timm too
                if engine_future is None:
                    engine_future = builder.submit(lambda: self.engine)
                extracted = self._extract_missing(
                    pool, engine_future, files, todo, features, errors, stage, clock
                )
            else:
                clock["engine"] = time.perf_counter()
        clock["end"] = time.perf_counter()
        return ExtractionResult(
            features=features,
            errors=dict(sorted(errors.items())),
            hashes=hashes,
            n_cached=n_cached,
            n_extracted=extracted,
            n_damaged_cache=self.cache.damaged - damaged_before,
            seconds=_stage_seconds(clock),
            engine=f"{self.engine_name}-{self.numerics}",
        )

    def content_hashes(self, paths: Sequence[str]) -> tuple[list[str | None], dict[int, str]]:
        """Every file's cache key, as ``extract`` computes it (None, with the reason in the errors,
        for a file that cannot be read), remembered in the cache."""
        files: list[str] = list(paths)
        errors: dict[int, str] = {}
        with ThreadPoolExecutor(self.workers) as pool:
            hashes = self._content_hashes(pool, files, self.cache.known_hashes(files), errors)
        return hashes, errors

    def _content_hashes(
        self,
        pool: ThreadPoolExecutor,
        paths: list[str],
        known: dict[str, tuple[int, int, int, int, str]],
        errors: dict[int, str],
    ) -> list[str | None]:
        """Every image's cache key; None (and a reason in ``errors``) for a file that cannot be read.

        Rule: a file whose size, mtime, ctime and inode match those its hash was remembered with
        is not read again (as git does); every other file is hashed in ``pool`` and remembered.
        """
        hashes: list[str | None] = [None] * len(paths)
        futures: dict[int, Future] = {}
        fresh = []
        for i, p in enumerate(paths):
            try:
                st = os.stat(p)
                stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            except OSError:
                stamp = None
            seen = known.get(p)
            if stamp is not None and seen is not None and seen[:4] == stamp:
                hashes[i] = seen[4]
            else:
                futures[i] = pool.submit(hash_file, p)
                if stamp is not None:
                    fresh.append((i, stamp))
        for i, fut in futures.items():
            try:
                hashes[i] = fut.result()
            except BadImageError as e:
                errors[i] = e.reason
        self.cache.remember_hashes(
            [(paths[i], *stamp, h) for i, stamp in fresh if (h := hashes[i]) is not None]
        )
        return hashes

    def _cached_features(
        self, hashes: list[str | None]
    ) -> tuple[np.ndarray | FeatureStore, dict[str, list[int]]]:
        """The feature matrix filled from the cache (NaN elsewhere), and the rows still missing,
        grouped by content hash (identical files are extracted once)."""
        dim = self.width
        features = feature_matrix(len(hashes), dim)
        todo: dict[str, list[int]] = {}
        for start in range(0, len(hashes), LOOKUP_ROWS):  # bounded: a warm run never holds every vector twice
            part = hashes[start : start + LOOKUP_ROWS]
            cached = self.cache.get_many(self.namespace, [h for h in part if h is not None])
            for i, h in enumerate(part, start):
                if h is None:
                    continue
                if h in cached and cached[h].shape[0] == dim:
                    features[i] = cached[h]
                else:
                    todo.setdefault(h, []).append(i)
        return features, todo

    def _extract_missing(
        self,
        pool: ThreadPoolExecutor,
        engine_future: Future,
        paths: list[str],
        todo: dict[str, list[int]],
        features: np.ndarray | FeatureStore,
        errors: dict[int, str],
        stage: str,
        clock: dict[str, float],
    ) -> int:
        """Decode one file per missing content hash and run the engine on them, filling
        ``features`` (every row with that hash) and the cache; returns how many were extracted.

        Rule: decoding starts before the engine is ready (a deeper prefetch while it is still
        being built), so the first batches are waiting when it is.
        """
        rep_hashes = list(todo)
        rep_paths = [paths[idxs[0]] for idxs in todo.values()]
        batches = self._batches(pool, rep_paths, 3 if engine_future.done() else 12, rep_hashes)
        first = next(batches)
        engine: Engine = engine_future.result()
        clock["engine"] = time.perf_counter()
        self.progress.start(f"extracting {stage}", len(rep_paths))
        decoded = self._decoded(itertools.chain([first], batches), rep_hashes, todo, errors)
        extracted = 0
        for (js, n_batch), out in engine.stream(decoded):
            rows = []
            for j, vec in zip(js, out):
                h = rep_hashes[j]
                features[todo[h]] = vec
                rows.append((h, vec))
            self.cache.put_many(self.namespace, rows)
            extracted += len(js)
            self.progress.advance(n_batch)
        self.progress.finish()
        return extracted

    def _decoded(
        self,
        batches: Iterator[list[tuple[int, np.ndarray | str]]],
        rep_hashes: list[str],
        todo: dict[str, list[int]],
        errors: dict[int, str],
    ) -> Iterator[tuple[tuple[list[int], int], np.ndarray]]:
        """The engine's input: each batch's decodable images stacked, tagged with their positions
        and the batch's size. A file that does not decode marks every row sharing its hash."""
        for batch in batches:
            good = [(j, item) for j, item in batch if not isinstance(item, str)]
            for j, item in batch:
                if isinstance(item, str):
                    for i in todo[rep_hashes[j]]:
                        errors[i] = item
            if good:
                yield ([j for j, _ in good], len(batch)), np.stack([a for _, a in good])
            else:
                self.progress.advance(len(batch))


def _stage_seconds(clock: dict[str, float]) -> dict[str, float]:
    """Seconds per stage of one ``extract`` call, from the times each stage ended."""
    return {
        "hash": clock["hash"] - clock["start"],
        "lookup": clock["lookup"] - clock["hash"],
        "engine_setup": clock["engine"] - clock["lookup"],
        "extract": clock["end"] - clock["engine"],
        "total": clock["end"] - clock["start"],
    }


def build_extractor(
    backbone: str | Backbone | None = None,
    weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    engine: str = "auto",
    batch_size: int = 8,
    workers: int | None = None,
    verbose: bool = True,
    precision: str = "auto",
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
        precision: ``auto`` (the engine's native fp32 or bf16) or ``int8`` (the backbone quantised
            once, calibrated on the first images it extracts; openvino or onnxruntime only).
    """
    cache = FeatureCache(cache_dir)
    if not isinstance(backbone, Backbone):
        backbone = create_backbone(backbone or DEFAULT_BACKBONE, weights, cache.root)
    progress = ConsoleProgress() if verbose else NullProgress()
    return FeatureExtractor(
        backbone,
        cache=cache,
        engine=engine,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        precision=precision,
    )
