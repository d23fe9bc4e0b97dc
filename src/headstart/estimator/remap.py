"""A new feature map for a finished run (``headstart report RUN --points all --method pca``).

The run's model gives the features (through the public ``transform``, so from the feature cache
when it has them); ``reporting.run_report.save_map`` stores the map beside the run's files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.errors import HeadstartError
from headstart.estimator.classifier import load
from headstart.features.cache import FeatureCache
from headstart.reporting.run_report import load_run, save_map
from headstart.runs.writer import MODEL_FILE


def remap_run(
    run_dir: str | Path,
    method: str,
    points: str,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Recompute ``run_dir``'s map with ``method`` (tsne, pca) of its ``points`` (test, all).

    Returns ``save_map``'s summary (method, n, seconds...).
    """
    run_dir = Path(run_dir)
    model = run_dir / MODEL_FILE
    if not model.is_file():
        raise HeadstartError(
            f"{run_dir} has no {MODEL_FILE}, which a new map needs for the features; use the training "
            "run folder, or rebuild the report with the map it has"
        )
    run = load_run(run_dir)
    if points == "all":
        if not run.split_rows:
            raise HeadstartError(
                f"{run_dir} has no split.csv: a map of all images needs a training run folder"
            )
        rows = run.split_rows
    else:
        rows = [{"path": r["path"], "label": r["label"], "split": "test"} for r in run.predictions]
    clf = load(model, cache_dir=cache_dir, verbose=verbose)
    features = clf.transform([r["path"] for r in rows])
    ok = np.isfinite(features).all(axis=1) if len(features) else np.zeros(0, dtype=bool)
    kept = [r for r, good in zip(rows, ok) if good]
    return save_map(
        run_dir,
        features[ok],
        [r["path"] for r in kept],
        [r["label"] for r in kept],
        [r["split"] for r in kept],
        method,
        points,
        seed,
        FeatureCache(cache_dir).root,
    )
