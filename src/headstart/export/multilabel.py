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


def is_multilabel(meta: dict[str, Any]) -> bool:
    return isinstance(meta.get("multi_label"), dict)


def export_entries(meta: dict[str, Any]) -> dict[str, Any]:
    """``export.json``'s multi-label keys ({} for a single-label bundle)."""
    if not is_multilabel(meta):
        return {}
    test = (meta.get("metrics") or {}).get("test") or {}
    return {
        "multi_label": True,
        "output_activation": "sigmoid",
        "thresholds": [float(t) for t in meta["multi_label"]["thresholds"]],
        "threshold_metric": meta["multi_label"].get("threshold_metric", "f1"),
        "test_metrics": {
            k: test[k] for k in ("mAP", "macro_f1", "micro_f1", "subset_accuracy", "n") if k in test
        },
    }


def file_entries(info: dict[str, Any]) -> dict[str, str]:
    """The model file's multi-label metadata ({} for a single-label export)."""
    if not info.get("multi_label"):
        return {}
    return {"multi_label": "true", "thresholds": json.dumps(info["thresholds"])}


def check_precision(meta: dict[str, Any], precision: str) -> None:
    """int8 is checked against test accuracy, which a multi-label model has not: refused."""
    if is_multilabel(meta) and precision == "int8":
        raise HeadstartError("int8 export of a multi-label model is not supported yet: use fp32 or fp16")
