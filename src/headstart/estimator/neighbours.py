"""The neighbour bank of the ``max_probability*knn`` reject score (``evaluation.reject``).

Built at fit time, only with the reject option on, from the features the final model's head
takes (after TTA averaging, ensemble concatenation and the chosen multi-layer columns). A
fine-tuned model's head takes its tuned backbone's features, not the pretrained ones the search
and the probe used, so those are extracted once more with the model's own extractor.

The threshold is chosen on validation images the honest way: each scored against a bank of the
train images only (a validation image must not be its own neighbour), its probability from a
model that did not learn from it (``reliability.held_out_val_proba``). The bank the model keeps
holds train + validation images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from headstart.estimator.fitting import Log, Split, Usable
from headstart.evaluation.reject import neighbour_bank
from headstart.features.extractor import ExtractionResult


@dataclass
class Neighbours:
    """What the reject option needs beside the probabilities, at fit time."""

    val_features: np.ndarray  # the final model's features of the validation images
    train_bank: np.ndarray  # train images only: what validation images are scored against
    bank: np.ndarray  # train + validation images: the bank the model keeps
    evaluated_features: np.ndarray  # of the evaluated split, for metrics.json's reject section


def model_features(
    extract: Callable[[list[str]], ExtractionResult], tuned: bool, usable: Usable, log: Log
) -> Any:
    """Every usable image's features as the final model's head takes them: ``usable.features``
    unless the model is a tuned network (then extracted by ``extract``, the model's own feature
    path, cached)."""
    if not tuned:
        return usable.features
    log(f"reject: the tuned network's features of {len(usable.samples)} images, for its neighbour bank")
    return extract([s.path for s in usable.samples]).features


def build_neighbours(features: Any, y: np.ndarray, split: Split, seed: int) -> Neighbours:
    """The validation features, the train-only bank they are scored against, the train + val
    bank the model keeps and the evaluated split's features.

    Args:
        features: (N, D) the final model's features of every usable image (array or store).
        y: (N,) class indices.
        split: the split.
        seed: the banks' subsample seed.
    """
    tr, va = split.mask("train"), split.mask("val")
    known = tr | va
    return Neighbours(
        val_features=np.asarray(features[va]),
        train_bank=neighbour_bank(features[tr], y[tr], seed),
        bank=neighbour_bank(features[known], y[known], seed),
        evaluated_features=np.asarray(features[split.mask(split.evaluated_on)]),
    )
