"""The estimator's hooks for feature options (``features``, ``tta``, ensembles): which
combinations it accepts, which layer groups the head uses, what the model records."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from headstart.core.errors import ParameterError
from headstart.estimator.fitting import Split, Usable
from headstart.features.composite import FeatureSpec, backbone_names
from headstart.models.taps import choose_layer_groups


def check_feature_options(finetune: bool, backbone: str, features: str, tta: str) -> None:
    """Fine-tuning trains one backbone's last features on augmented images: an ensemble,
    multi-layer features or TTA are for feature extraction."""
    if not finetune:
        return
    if len(backbone_names(backbone)) > 1:
        raise ParameterError("backbone", "fine-tuning takes one backbone, not an ensemble (name1+name2)")
    if features != "last":
        raise ParameterError("features", "fine-tuning trains on the last features: use features='last'")
    if tta != "none":
        raise ParameterError("tta", "test-time augmentation is for feature extraction: use tta='none'")


def choose_layers(
    spec: FeatureSpec, usable: Usable, split: Split, log: Callable[[str], None]
) -> tuple[Usable, dict[str, Any]]:
    """Multi-layer features: the layer groups that predict the validation split best (recorded
    in ``spec.selected``), and ``usable`` with only their columns; others pass unchanged."""
    if spec.layers != "multi":
        return usable, {}
    spec.selected = None
    tr, va = split.mask("train"), split.mask("val")
    x, y = usable.features, usable.y
    groups, info = choose_layer_groups(x[tr], y[tr], x[va], y[va], spec.group_widths)
    spec.selected = groups
    log(
        f"multi-layer features: groups {groups} of {len(spec.group_widths)} chosen on validation "
        f"({spec.width} of {sum(spec.group_widths)} features)"
    )
    cols = spec.columns
    return dataclasses.replace(usable, features=x[:, cols]), {"layers": info}


def model_features_info(spec: FeatureSpec) -> dict[str, Any]:
    """The ``features`` entry of a model's metadata and metrics; none for one backbone's last
    features without TTA, so such a model's file is what it always was."""
    return {} if spec.is_plain else {"features": spec.describe()}
