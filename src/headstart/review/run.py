"""The run under review: its images (as its split recorded them), and what its model says of each.

The images are the run's own: every file its ``split`` lists (paths relative to the data root,
or absolute), with the label it trained on and its split. The model's features come through
``transform`` (the feature cache: a trained run's images are cached, so this reads, not
extracts); its probabilities are the calibrated ones ``predict`` uses, its reject score the one
``predict`` compares with its threshold.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.errors import HeadstartError
from headstart.estimator.classifier import ImageClassifier, load
from headstart.evaluation.calibration import apply_temperature
from headstart.evaluation.reject import reject_scores, unit_rows
from headstart.runs.writer import MODEL_FILE

Log = Callable[[str], None]


@dataclass(frozen=True)
class RunImage:
    """One image of the run: ``path`` as the run records it (the key of corrections.csv),
    ``file`` where it is on disk, its training label and split."""

    index: int
    path: str
    file: str
    label: str
    split: str


@dataclass
class ModelOutputs:
    """What the model says of every image, row-aligned with ``ReviewRun.images``."""

    features: np.ndarray  # (N, D) float32 as the head takes them; NaN rows for unreadable files
    unit: np.ndarray  # the same rows scaled to length 1 (for nearest images by cosine)
    proba: np.ndarray  # (N, K) calibrated probabilities; NaN rows likewise
    scores: np.ndarray | None  # reject scores, where the model's reject option is on
    threshold: float | None  # at or below it the model answers unknown

    @property
    def readable(self) -> np.ndarray:
        return np.isfinite(self.proba).all(axis=1)


@dataclass
class ReviewRun:
    """A run folder, its data root, its images and the model's outputs on them."""

    run_dir: Path
    root: Path
    classes: list[str]
    images: list[RunImage]
    outputs: ModelOutputs
    seconds: dict[str, float]

    def __post_init__(self) -> None:
        self._by_path = {image.path: image.index for image in self.images}

    def find(self, path: str) -> RunImage | None:
        """The run's image recorded under ``path`` exactly; None for any other path."""
        index = self._by_path.get(path)
        return None if index is None else self.images[index]

    def labels(self) -> np.ndarray:
        """Each image's training label as a class index."""
        lookup = {c: i for i, c in enumerate(self.classes)}
        return np.array([lookup.get(image.label, -1) for image in self.images], dtype=np.int64)


def run_images(split: dict[str, Any]) -> tuple[Path, list[RunImage]]:
    """The data root and the images a model's saved ``split_`` lists."""
    root = split.get("root")
    files = split.get("files") or []
    if not root or not files:
        raise HeadstartError("this run's model records no split (root and files): retrain it to review it")
    base = Path(root)
    images = [
        RunImage(i, str(path), os.path.normpath(path if os.path.isabs(path) else base / path), label, group)
        for i, (path, label, group) in enumerate(files)
    ]
    return base, images


def reject_threshold(clf: ImageClassifier) -> float | None:
    """The threshold a loaded model answers unknown at or below: None with its reject option off."""
    if clf.reject == "off":
        return None
    if isinstance(clf.reject, (int, float)) and not isinstance(clf.reject, bool):
        return float(clf.reject)
    return getattr(clf, "reject_threshold_", None)


def model_outputs(clf: ImageClassifier, files: list[str]) -> ModelOutputs:
    """Features (through the cache), calibrated probabilities and reject scores of ``files``."""
    features = np.asarray(clf.transform(files), dtype=np.float32)
    ok = np.isfinite(features).all(axis=1)
    proba = np.full((len(files), len(clf.classes_)), np.nan)
    threshold = reject_threshold(clf)
    scores = np.full(len(files), np.nan) if threshold is not None else None
    if ok.any():
        proba[ok] = apply_temperature(
            clf.head_.predict_proba(features[ok]), getattr(clf, "temperature_", 1.0)
        )
        if scores is not None:
            bank = getattr(clf, "reject_bank_", None)
            scores[ok] = reject_scores(proba[ok], features[ok], bank)
    unit = np.full_like(features, np.nan)
    unit[ok] = unit_rows(features[ok])
    return ModelOutputs(features, unit, proba, scores, threshold)


def load_review_run(
    run_dir: str | Path,
    cache_dir: str | Path | None = None,
    engine: str = "auto",
    log: Log | None = None,
) -> ReviewRun:
    """Read ``run_dir``'s model and split, and run the model over every image of the run.

    Args:
        run_dir: a run folder (``headstart train --out``) holding ``model.safetensors``.
        cache_dir: the feature cache (default: headstart's).
        engine: the feature-extraction engine, for images not in the cache.
        log: where progress lines go (None: nowhere).
    """
    say = log or (lambda _message: None)
    run = Path(run_dir).expanduser()
    if not (run / MODEL_FILE).is_file():
        raise HeadstartError(f"{run} holds no {MODEL_FILE}: give the folder of a training run (train --out)")
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    clf = load(run, verbose=log is not None, cache_dir=cache_dir, engine=engine)
    if getattr(clf, "multi_label_", False):
        raise HeadstartError("review works on single-label runs; this run is multi-label")
    root, images = run_images(clf.split_)
    seconds["load"] = time.perf_counter() - t
    say(f"review: {len(images)} images of {run} (data {root}); the model's view of each...")
    t = time.perf_counter()
    outputs = model_outputs(clf, [image.file for image in images])
    seconds["model"] = time.perf_counter() - t
    return ReviewRun(run, root, list(clf.classes_), images, outputs, seconds)
