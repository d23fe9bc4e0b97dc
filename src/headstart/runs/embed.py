"""``headstart embed``: a 2-D map of every image's backbone features, coloured by class.

A whole run: discover the images, extract their features (through the feature cache, set up
by ``features.extractor.build_extractor``), map them (``reporting.maps.embed_features``, cached
too) and write the outputs, each file atomically through ``core.io``:

- ``map.png`` and ``map.html`` (self-contained page on the shared shell);
- ``map.csv`` (path,label,x,y) and ``map.json`` (method, counts, seconds, backbone, source);
- ``skipped.csv`` (files passed over, with the reason and stage) and ``log.txt``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headstart.core.errors import HeadstartError
from headstart.core.io import summarize_skips, write_json, write_rows
from headstart.core.logs import log_run
from headstart.data.discovery import Dataset, Sample, check_out_dir, discover
from headstart.features.extractor import ExtractionResult, build_extractor
from headstart.reporting.maps import FeatureMap, embed_features
from headstart.reporting.run_report import write_map_page

logger = logging.getLogger(__name__)


def _write_skipped(out: Path, dataset: Dataset, result: ExtractionResult) -> None:
    """``skipped.csv``: files discovery passed over and images that could not be decoded."""
    skipped = [(p, r, "discovery") for p, r in dataset.ignored]
    skipped += [(dataset.samples[i].path, r, "decode") for i, r in result.errors.items()]
    write_rows(out / "skipped.csv", ["path", "reason", "stage"], skipped)
    if skipped:
        logger.info(summarize_skips(skipped))


def _write_map_files(out: Path, samples: Sequence[Sample], fmap: FeatureMap, info: dict[str, Any]) -> None:
    write_rows(
        out / "map.csv",
        ["path", "label", "x", "y"],
        [[s.path, s.label, f"{x:.4f}", f"{y:.4f}"] for s, (x, y) in zip(samples, fmap.xy)],
    )
    write_json(out / "map.json", info)


def embed_map(
    data: str | Path,
    out_dir: str | Path,
    backbone: str | None = None,
    weights: str | Path | None = None,
    method: str = "tsne",
    labels_from: str = "auto",
    seed: int = 0,
    cache_dir: str | Path | None = None,
    verbose: bool = True,
) -> Path:
    """Map every image of ``data`` to 2-D and write the outputs to ``out_dir``; returns ``map.html``.

    Args:
        data: labelled images, as for ``train`` (folders, file names or a CSV).
        out_dir: folder for the outputs (created).
        backbone: timm model name (default: the offline EfficientNet-Lite0).
        weights: local weights file for ``backbone``.
        method: ``tsne`` (openTSNE) or ``pca``.
        labels_from: ``auto``, ``folder``, ``filename`` or ``csv``.
        seed: seed of the map.
        cache_dir: feature and map cache folder (default: the user cache).
        verbose: print progress and the log lines to stderr.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    check_out_dir(out, data)
    with log_run(out, verbose):
        return _embed(data, out, backbone, weights, method, labels_from, seed, cache_dir, verbose, t0)


def _embed(
    data: str | Path,
    out: Path,
    backbone: str | None,
    weights: str | Path | None,
    method: str,
    labels_from: str,
    seed: int,
    cache_dir: str | Path | None,
    verbose: bool,
    t0: float,
) -> Path:
    dataset = discover(data, labels_from)
    logger.info(f"found {len(dataset.samples)} images in {len(dataset.classes)} classes in {dataset.root}")
    extractor = build_extractor(backbone, weights, cache_dir, batch_size=8, verbose=verbose)
    result = extractor.extract(dataset.paths)
    logger.info(f"features: {result.n_extracted} extracted, {result.n_cached} from cache")
    _write_skipped(out, dataset, result)
    ok = result.ok
    samples = [s for s, good in zip(dataset.samples, ok) if good]
    if not samples:
        raise HeadstartError(f"none of the {len(dataset.samples)} images in {dataset.root} could be read")
    logger.info(f"mapping {len(samples)} images with {method}...")
    fmap = embed_features(result.features[ok], method, seed, extractor.cache.root)
    info = {
        "method": fmap.method,
        "points": "all",
        "n": len(samples),
        "n_total": len(samples),
        "seconds": round(fmap.seconds, 3),
        "from_cache": fmap.cached,
        "backbone": extractor.backbone.name,
        "source": str(dataset.root),
    }
    _write_map_files(out, samples, fmap, info)
    page = write_map_page(out, fmap.xy, [s.label for s in samples], info, str(dataset.root))
    logger.info(
        f"{fmap.method} map of {len(samples)} images in {fmap.seconds:.1f}s"
        + (" (cached)" if fmap.cached else "")
        + f"; {page} and map.png written in {time.perf_counter() - t0:.1f}s"
    )
    return page
