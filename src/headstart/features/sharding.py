"""Sharded extraction: under ``torchrun``, each rank extracts its share of the images, once.

Shards are chosen by content hash (``owner``), so a re-run, or a resumed one, gives every rank the
same images, and identical files are extracted once. Each rank writes the features it extracts to
its own feature cache; the features then travel to every rank over the process group
(``all_gather_object``), never through a shared file.

Why the process group and not the cache: on one machine the ranks share one SQLite cache (WAL,
a busy timeout and retries make that safe), but SQLite's locks are not to be trusted on a
network file system, so several machines must not share one cache file. Each node keeps its own
cache (``$HEADSTART_CACHE`` on a local disk), holding its ranks' shards; the gathered features
need no file at all. Outside a process group, ``extract_sharded`` is ``extractor.extract``.

int8 features are the exception: the quantised graph is calibrated on the images being
extracted, so rank 0 extracts them all (one calibration, as one process makes it) and sends them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from headstart.core.progress import NullProgress
from headstart.features.extractor import ExtractionResult, FeatureExtractor

T = TypeVar("T")


def process_rank() -> tuple[int, int]:
    """(rank, world size) of this process's torch.distributed group; (0, 1) without one."""
    if "torch.distributed" not in sys.modules:  # no group without it: a warm run never imports torch
        return 0, 1
    try:
        import torch.distributed as dist
    except ImportError:  # torch without distributed support
        return 0, 1
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def owner(content_hash: str, world_size: int) -> int:
    """The rank that extracts the image of ``content_hash`` (the same on every run)."""
    return int(content_hash[:8], 16) % world_size


def all_gather(obj: T, world_size: int) -> list[T]:
    """Every rank's ``obj``, in rank order."""
    import torch.distributed as dist

    out: list[T] = [obj] * world_size  # all_gather_object replaces each
    dist.all_gather_object(out, obj)
    return out


def extract_sharded(
    extractor: FeatureExtractor, paths: Sequence[str | Path], stage: str = "features"
) -> ExtractionResult:
    """``extractor.extract(paths)``, the work shared among the ranks of a process group.

    Each rank hashes every world_size-th file, the hashes are gathered, each rank extracts the
    images it owns, and every rank gets the whole result, row-aligned with ``paths``.
    """
    rank, world = process_rank()
    files = [str(p) for p in paths]
    if world == 1:
        return extractor.extract(files, stage)
    if rank:
        extractor.progress = NullProgress()  # one progress line: rank 0's
    if extractor.numerics == "int8":  # one calibration, from every image, as one process makes it
        whole = all_gather(extractor.extract(files, stage) if rank == 0 else None, world)[0]
        assert whole is not None, "rank 0 extracts every image"
        return whole
    start = time.perf_counter()
    hashes, errors = _gathered_hashes(extractor, files, rank, world)
    mine: dict[str, str] = {}
    for path, h in zip(files, hashes):
        if h is not None and owner(h, world) == rank:
            mine.setdefault(h, path)
    local = extractor.extract(list(mine.values()), stage)
    found = {}
    for i, h in enumerate(mine):
        found[h] = local.errors[i] if i in local.errors else local.features[i]
    counts = (local.n_cached, local.n_extracted, local.n_damaged_cache)
    shards = all_gather((found, counts), world)
    return _assemble(extractor, hashes, errors, shards, local, time.perf_counter() - start)


def _gathered_hashes(
    extractor: FeatureExtractor, files: list[str], rank: int, world: int
) -> tuple[list[str | None], dict[int, str]]:
    """Every file's content hash (each file read by one rank only) and the unreadable files."""
    part = files[rank::world]
    hashes, errors = extractor.content_hashes(part)
    every: list[str | None] = [None] * len(files)
    failed: dict[int, str] = {}
    for r, (rank_hashes, rank_errors) in enumerate(all_gather((hashes, errors), world)):
        for j, h in enumerate(rank_hashes):
            every[r + j * world] = h
        failed.update({r + j * world: reason for j, reason in rank_errors.items()})
    return every, failed


def _assemble(
    extractor: FeatureExtractor,
    hashes: list[str | None],
    errors: dict[int, str],
    shards: list[tuple[dict[str, Any], tuple[int, int, int]]],
    local: ExtractionResult,
    seconds: float,
) -> ExtractionResult:
    """The whole result from every rank's features (or reasons) by content hash."""
    found: dict[str, Any] = {}
    for rank_found, _ in shards:
        found.update(rank_found)
    features = np.full((len(hashes), extractor.backbone.num_features), np.nan, dtype=np.float32)
    for i, h in enumerate(hashes):
        if h is None:
            continue
        value = found.get(h, "not extracted by its rank")
        if isinstance(value, str):
            errors[i] = value
        else:
            features[i] = value
    n_cached, n_extracted, n_damaged = (int(sum(c[k] for _, c in shards)) for k in range(3))
    return ExtractionResult(
        features=features,
        errors=dict(sorted(errors.items())),
        hashes=hashes,
        n_cached=n_cached,
        n_extracted=n_extracted,
        n_damaged_cache=n_damaged,
        seconds={**local.seconds, "total": seconds},
        engine=local.engine,
    )
