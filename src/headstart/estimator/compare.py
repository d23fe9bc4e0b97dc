"""``headstart compare RUN_A RUN_B [DATA]``: two models on the same images with the same labels.

By default the images are RUN_B's test split with RUN_B's labels (so a model trained on
corrected labels is judged by them); with DATA, every labelled image of DATA. Both models
predict every image (features come from the cache); ``evaluation.comparison`` does the rest.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.errors import HeadstartError
from headstart.core.io import read_rows, write_json
from headstart.data.discovery import discover
from headstart.evaluation.comparison import Answer, compare_answers
from headstart.runs.recipe import run_folder

COMPARE_JSON = "compare.json"
COMPARE_HTML = "compare.html"


def comparison_images(
    run_b: Path, data: str | Path | None, labels_from: str = "auto"
) -> tuple[list[str], list[str], str]:
    """Paths, labels and a description of the images both models are scored on."""
    if data is not None:
        dataset = discover(data, labels_from)
        return dataset.paths, dataset.labels, f"every image of {dataset.root}"
    metrics = json.loads((run_b / "metrics.json").read_text())
    root = Path((metrics.get("data") or {}).get("source", ""))
    rows = [r for r in read_rows(run_b / "split.csv") if r.get("split") == "test"]
    if not rows:
        raise HeadstartError(f"{run_b} has no test split in split.csv: give DATA to compare on")
    paths = [os.path.normpath(root / r["path"]) for r in rows]
    return paths, [r["label"] for r in rows], f"the test split of {run_b} ({root}), with its labels"


def _predicted(model: Any, paths: list[str]) -> list[str]:
    proba = model.predict_proba(paths)
    return ["" if np.isnan(row).any() else model.classes_[int(row.argmax())] for row in proba]


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    data: str | Path | None = None,
    out_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Compare RUN_A and RUN_B (see the module's docstring); writes compare.json and
    compare.html to ``out_dir`` (default: RUN_B/compare)."""
    from headstart.estimator.classifier import load
    from headstart.reporting.compare_page import write_compare_page

    t0 = time.perf_counter()
    folder_a, folder_b = run_folder(run_a), run_folder(run_b)
    paths, labels, source = comparison_images(folder_b, data)
    model_a = load(folder_a, cache_dir=cache_dir, verbose=verbose)
    model_b = load(folder_b, cache_dir=cache_dir, verbose=verbose)
    answers = [
        Answer(p, y, a, b)
        for p, y, a, b in zip(paths, labels, _predicted(model_a, paths), _predicted(model_b, paths))
    ]
    result = {
        "run_a": str(folder_a),
        "run_b": str(folder_b),
        "images": source,
        **compare_answers(answers, model_a.classes_, model_b.classes_),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    out = Path(out_dir) if out_dir is not None else folder_b / "compare"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / COMPARE_JSON, result)
    write_compare_page(out / COMPARE_HTML, result)
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The comparison in a few lines for the terminal."""

    def side(name: str) -> str:
        s = result[name]
        if s["accuracy"] is None:
            return f"{name.upper()}: no image it can score"
        return f"{name.upper()}: accuracy {s['accuracy']:.4f} (95% {s['ci95'][0]:.4f}-{s['ci95'][1]:.4f}) on {s['n']} images"

    return [
        f"compared on {result['n_images']} images: {result['images']}",
        side("a"),
        side("b"),
        f"B fixes {len(result['fixed'])} and breaks {len(result['broken'])} of the images both score; "
        f"exact McNemar p = {result['mcnemar_p']:.4g}",
    ]


__all__ = ["COMPARE_HTML", "COMPARE_JSON", "compare_runs", "summary_lines"]
