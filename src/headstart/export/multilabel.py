"""What an exported multi-label model carries besides a single-label one.

Its graph ends in a sigmoid (one independent probability per class; ``export.graph``), and its
per-class thresholds travel with it: in ``export.json`` (``multi_label``, ``thresholds``) and in
the model file's own metadata (ONNX ``metadata_props`` / OpenVINO ``rt_info``: ``multi_label``,
``thresholds`` as JSON), so a runtime without headstart can list the labels above them.
Single-label exports are unchanged (none of these keys).
"""

from __future__ import annotations

import json
from typing import Any

from headstart.core.errors import HeadstartError
from headstart.models.card import ModelCard


def export_entries(card: ModelCard) -> dict[str, Any]:
    """``export.json``'s multi-label keys ({} for a single-label bundle)."""
    if card.multi_label is None:
        return {}
    test = card.test_metrics
    return {
        "multi_label": True,
        "output_activation": "sigmoid",
        "thresholds": [float(t) for t in card.multi_label.thresholds],
        "threshold_metric": card.multi_label.threshold_metric,
        "test_metrics": {
            k: test[k] for k in ("mAP", "macro_f1", "micro_f1", "subset_accuracy", "n") if k in test
        },
    }


def file_entries(info: dict[str, Any]) -> dict[str, str]:
    """The model file's multi-label metadata ({} for a single-label export)."""
    if not info.get("multi_label"):
        return {}
    return {"multi_label": "true", "thresholds": json.dumps(info["thresholds"])}


def check_precision(card: ModelCard, precision: str) -> None:
    """int8 is checked against test accuracy, which a multi-label model has not: refused."""
    if card.is_multilabel and precision == "int8":
        raise HeadstartError("int8 export of a multi-label model is not supported yet: use fp32 or fp16")
