"""``model.explain(paths)``: a class activation map per image (``features.cam``), and
``model.neighbours(paths, k)``: the most similar training photos from the neighbour bank.

The bank (``evaluation.reject``) keeps features, not paths; its rows are the train + validation
images of the saved split, in the split's order, subsampled by ``bank_rows`` with the model's
seed, so the paths are recovered from the bundle's split record and checked against the bank's
row count (a mismatch is refused rather than guessed).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from headstart.core.errors import HeadstartError
from headstart.data.images import decode_image, read_bytes
from headstart.estimator.fitted import FittedModel
from headstart.evaluation.reject import MAX_BANK_ROWS, bank_rows, unit_rows
from headstart.features.cam import class_map, class_weights
from headstart.features.extractor import ExtractionResult


@dataclass
class Explanation:
    """One image's explanation: the label explained and its heatmap ((H, W) float32 in [0, 1],
    the image's own size), or the reason it could not be read."""

    path: str
    label: str | None
    heatmap: np.ndarray | None
    error: str = ""


@dataclass(frozen=True)
class ExplainSource:
    """What explanations read of a fitted model: the model, its calibrated ``predict_proba``,
    its feature ``extract``ion, and the seed its neighbour bank was drawn with (where its split
    record has none)."""

    model: FittedModel
    predict_proba: Callable[[list[str]], np.ndarray]
    extract: Callable[[list[str]], ExtractionResult]
    seed: int


def explain_images(
    src: ExplainSource, paths: Sequence[str | Path], label: str | None = None
) -> list[Explanation]:
    """The class map of each image for ``label`` (None: the model's most probable class).

    Raises HeadstartError for a head with no exact map (``mlp``, ``knn``) or an unknown label.
    """
    head, classes = src.model.head, src.model.classes
    if not (hasattr(head, "coef") and hasattr(head, "scale")):
        raise HeadstartError(f"explanations need a linear head (logistic); this model's head is {head.name}")
    if label is not None and label not in classes:
        raise HeadstartError(f"label {label!r} is not one of the model's classes ({', '.join(classes)})")
    weights = class_weights(head.coef, head.scale, centre=not src.model.multi_label)
    files = [str(p) for p in paths]
    proba = src.predict_proba(files) if label is None else None
    out = []
    for i, path in enumerate(files):
        try:
            image = decode_image(read_bytes(path))
        except Exception as e:  # noqa: BLE001 - one unreadable file is that file's problem
            out.append(Explanation(path, None, None, str(e)[:200]))
            continue
        index = (
            classes.index(label) if label is not None else int(np.nan_to_num(np.asarray(proba)[i]).argmax())
        )
        heatmap = class_map(src.model.spec, weights[index], image)
        out.append(Explanation(path, classes[index], heatmap))
    return out


def bank_paths(src: ExplainSource, bank: np.ndarray) -> list[tuple[str, str]]:
    """(path, label) of each bank row, from the saved split (see the module's rule)."""
    split, classes = src.model.split or {}, src.model.classes
    known = [(f, lab) for f, lab, g in split.get("files", []) if g in ("train", "val")]
    y = np.array([classes.index(lab) if lab in classes else -1 for _, lab in known])
    rows = bank_rows(y, MAX_BANK_ROWS, int(split.get("seed", src.seed))) if len(y) else np.zeros(0, int)
    if len(rows) != len(bank):
        raise HeadstartError(
            "the model's split record does not match its neighbour bank: no neighbours to show"
        )
    root = Path(split.get("root", "."))
    return [(os.path.normpath(root / known[r][0]), known[r][1]) for r in rows]


def nearest_training_images(
    src: ExplainSource, paths: Sequence[str | Path], k: int = 5
) -> list[list[dict[str, Any]]]:
    """The ``k`` most similar training photos of each image: ``{"path", "label", "similarity"}``
    (cosine of the model's features), most similar first; [] for an unreadable file."""
    bank = src.model.reject_bank
    if bank is None:
        raise HeadstartError("this model keeps no neighbour bank: train it with --reject auto for neighbours")
    names = bank_paths(src, bank)
    features = src.extract([str(p) for p in paths]).features
    x = unit_rows(np.nan_to_num(np.asarray(features, dtype=np.float32)))
    sims = x @ np.asarray(bank, dtype=np.float32).T
    finite = np.asarray(np.isfinite(np.asarray(features, dtype=np.float32)).all(axis=1), dtype=bool)
    readable = [bool(v) for v in finite.reshape(-1)]
    out = []
    for row, ok in zip(sims, readable):
        order: list[int] = np.argsort(-row, kind="stable")[: max(0, k)].tolist() if ok else []
        out.append([{"path": names[j][0], "label": names[j][1], "similarity": float(row[j])} for j in order])
    return out


def write_error_gallery(
    src: ExplainSource,
    run_dir: Path,
    paths: Sequence[str],
    y: np.ndarray,
    proba: np.ndarray,
    heatmaps: bool = True,
) -> int:
    """For the report's misclassified gallery: each shown error's heatmap overlay (of the class
    it was taken for) in ``run_dir/errors/`` and its nearest training photos, listed in
    ``run_dir/errors.csv``; the report reads them (it never loads a model). A head with no exact
    map (or ``heatmaps`` False) gets no overlay, a model with no neighbour bank no neighbours. The
    number of errors."""
    import json

    from headstart.core.io import write_rows
    from headstart.reporting.overlay import overlay_name, write_overlay
    from headstart.reporting.run_report import MAX_MISCLASSIFIED

    (run_dir / "errors.csv").unlink(missing_ok=True)  # a previous run's gallery never lingers
    for old in (run_dir / "errors").glob("*.png"):
        old.unlink()
    if not len(paths):
        return 0
    predicted = np.asarray(proba).argmax(axis=1)
    wrong = [i for i in np.argsort(-np.asarray(proba).max(axis=1), kind="stable") if predicted[i] != y[i]]
    chosen = [str(paths[i]) for i in wrong[:MAX_MISCLASSIFIED]]
    if not chosen:
        return 0
    linear = heatmaps and hasattr(src.model.head, "coef") and hasattr(src.model.head, "scale")
    explained: list[Explanation | None] = [None] * len(chosen)
    if linear:  # each error explained for the class it was taken for (known: no second pass)
        taken_for = [int(predicted[i]) for i in wrong[: len(chosen)]]
        for c in sorted(set(taken_for)):
            at = [j for j, t in enumerate(taken_for) if t == c]
            for j, done in zip(at, explain_images(src, [chosen[j] for j in at], src.model.classes[c])):
                explained[j] = done
    near = nearest_training_images(src, chosen, 3) if src.model.reject_bank is not None else None
    rows = []
    for j, (path, shown) in enumerate(zip(chosen, explained)):
        overlay = ""
        if shown is not None and shown.heatmap is not None and shown.label is not None:
            image = decode_image(read_bytes(path))
            image.thumbnail((256, 256))
            heat = np.asarray(
                Image.fromarray(shown.heatmap, mode="F").resize(image.size, Image.Resampling.BILINEAR)
            )
            overlay = f"errors/{overlay_name(path, shown.label, j)}"
            write_overlay(run_dir, overlay, image, heat)
        rows.append([os.path.abspath(path), overlay, json.dumps(near[j] if near else [])])
    write_rows(run_dir / "errors.csv", ["path", "overlay", "neighbours"], rows)
    return len(rows)
