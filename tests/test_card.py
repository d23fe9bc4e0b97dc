"""The model card (models.card): one schema for what a bundle and an export say about themselves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from headstart.core.errors import HeadstartError
from headstart.models.card import ExportCard, ModelCard, ModelSummary, parse_card

HEADER = (
    Path(__file__).resolve().parent / "fixtures" / "current_bundles" / "probe" / "header.json"
).read_text()


def damaged(path: str, value) -> str:
    meta = json.loads(HEADER)
    *parents, last = path.split(".")
    node = meta
    for key in parents:
        node = node[key]
    node[last] = value
    return json.dumps(meta)


@pytest.mark.parametrize(
    "path, value, line",
    [
        ("classes", [], "'classes': must be a list of 1 to 100000 names"),
        ("settings.top_k", True, "settings top_k: input should be a valid integer"),
        ("backbone.num_features", 1.5, "backbone num_features: input should be a valid integer"),
        (
            "backbone.data_config.input_size",
            [1, 8, 8],
            "backbone data_config input_size: must be [3, height, width]",
        ),
        ("head.calibration.temperature", 0, "head calibration temperature: input should be greater than 0"),
        ("head.reject", {"threshold": 1.5}, "head reject threshold: input should be less than or equal to 1"),
        (
            "multi_label",
            {"thresholds": [0.5]},
            "'multi_label' must be an object with one threshold per class",
        ),
        (
            "features",
            {"members": []},
            "features members: list should have at least 1 item after validation, not 0",
        ),
    ],
)
def test_a_damaged_field_is_one_line_naming_it(path, value, line):
    with pytest.raises(HeadstartError) as caught:
        parse_card(damaged(path, value), "m.safetensors")
    assert str(caught.value) == f"model file m.safetensors is damaged or crafted: {line}"


def test_the_card_keeps_what_it_does_not_name_and_writes_only_what_it_was_given():
    meta = json.loads(HEADER)
    meta["from_a_later_minor"] = {"kept": True}
    card = ModelCard.from_meta(meta)
    assert card.to_meta() == meta
    assert card.temperature == 1.0 and card.reject_threshold is None and card.reject_score is None
    assert card.split is not None and card.split.rows("test") == [
        (p, label) for p, label, part in meta["split"]["files"] if part == "test"
    ]


def test_a_saved_reject_option_reads_as_typed_values():
    meta = json.loads(damaged("head.reject", {"mode": "auto", "threshold": 0.4, "target_accuracy": 0.9}))
    card = ModelCard.from_meta(meta)
    assert card.reject_threshold == 0.4 and card.reject_score == "max_probability"  # older: not named
    assert card.head.reject.target_accuracy == 0.9


def test_the_schemas_are_json_schemas_for_the_api():
    for model in (ModelCard, ExportCard, ModelSummary):
        schema = model.model_json_schema()
        assert schema["type"] == "object" and "classes" in schema["required"]
