"""One answer shape for every model: ``evaluation.answers.answer``, and the same keys from
``predict_top_k``, ``headstart predict`` (json, csv, table) and ``headstart serve``."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from headstart.cli.app import app
from headstart.estimator.classifier import ImageClassifier
from headstart.evaluation.answers import answer
from headstart.serve import create_app

CLASSES = ["cat", "dog", "fox"]


def test_single_label_answer_is_the_top_one_with_no_score_when_reject_is_off():
    out = answer(CLASSES, np.array([0.2, 0.7, 0.1]), k=2)
    assert out == {
        "predictions": [{"label": "dog", "probability": 0.7}, {"label": "cat", "probability": 0.2}],
        "labels": ["dog"],
        "unknown": False,
    }


def test_reject_threshold_turns_a_low_score_down_and_reports_the_score():
    row = np.array([0.2, 0.5, 0.3])
    rejected = answer(CLASSES, row, k=3, reject_threshold=0.6)
    assert rejected["unknown"] is True and rejected["labels"] == [] and rejected["score"] == 0.5
    assert [p["label"] for p in rejected["predictions"]] == ["dog", "fox", "cat"]  # still listed
    at = answer(CLASSES, row, k=1, reject_threshold=0.5)  # accepted only above the threshold
    assert at["unknown"] is True and at["score"] == 0.5
    accepted = answer(CLASSES, row, k=1, reject_threshold=0.49)
    assert accepted["unknown"] is False and accepted["labels"] == ["dog"] and accepted["score"] == 0.5
    own_score = answer(CLASSES, row, k=1, reject_threshold=0.3, score=0.1)
    assert own_score["unknown"] is True and own_score["score"] == 0.1


def test_label_thresholds_accept_every_label_above_its_own_most_probable_first():
    out = answer(CLASSES, np.array([0.55, 0.9, 0.3]), k=3, label_thresholds=[0.5, 0.5, 0.4])
    assert out["labels"] == ["dog", "cat"] and out["unknown"] is False
    none = answer(CLASSES, np.array([0.1, 0.2, 0.3]), k=3, label_thresholds=[0.5, 0.5, 0.5])
    assert none["labels"] == [] and none["unknown"] is False


def test_decimals_round_probabilities_and_score():
    out = answer(CLASSES, np.array([0.1234567, 0.8765433, 0.0]), k=1, reject_threshold=0.1, decimals=3)
    assert out["predictions"] == [{"label": "dog", "probability": 0.877}] and out["score"] == 0.877


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from conftest import make_class_folders

    root = make_class_folders(tmp_path_factory.mktemp("answers") / "colors", per_class=8)
    run = tmp_path_factory.mktemp("answers_run")
    clf = ImageClassifier(strategy="feature-extraction", verbose=False, report_map="none")
    clf.fit(root, out_dir=run)
    return root, run, clf


def test_predict_top_k_items_carry_labels_and_unknown(saved_model):
    root, _, clf = saved_model
    files = sorted(str(p) for p in root.rglob("*.jpg"))[:3] + [str(root / "missing.jpg")]
    items = clf.predict_top_k(files, k=2)
    for item in items[:3]:
        assert item["labels"] == [item["predictions"][0]["label"]] and item["unknown"] is False
        assert "score" not in item
    assert items[3]["predictions"] == [] and items[3]["error"]


@pytest.mark.cli
def test_predict_json_csv_and_table_show_the_answer(saved_model):
    root, run, _ = saved_model
    folder = str(root / "red")
    result = CliRunner().invoke(app, ["predict", str(run), folder, "--format", "json"])
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)
    assert items and all({"labels", "unknown"} <= set(item) for item in items)
    assert all(item["labels"] == [item["predictions"][0]["label"]] for item in items)
    result = CliRunner().invoke(app, ["predict", str(run), folder, "--format", "csv", "-k", "2"])
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0])[:5] == ["path", "rank", "label", "probability", "error"]
    assert {"labels", "unknown", "score"} <= set(rows[0]) and rows[0]["unknown"] == "false"
    assert rows[0]["labels"] == rows[0]["label"] and rows[0]["score"] == ""
    table = CliRunner().invoke(app, ["predict", str(run), folder]).stdout
    assert "answer" in table


class ThresholdModel:
    """The exported model's interface with a reject threshold in its metadata."""

    classes = ["red", "green", "blue"]
    input_size = (8, 8)

    def __init__(self, threshold: float | None) -> None:
        self.metadata = {"backbone": "fake"}
        if threshold is not None:
            self.metadata["reject"] = {"threshold": threshold, "score": "max_probability"}

    def prepare(self, image: Image.Image) -> np.ndarray:
        return np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.uint8)

    def predict_proba(self, pixels: np.ndarray) -> np.ndarray:
        return np.tile(np.array([[0.5, 0.3, 0.2]], dtype=np.float32), (len(pixels), 1))


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("threshold,unknown", [(None, False), (0.4, False), (0.9, True)])
def test_serve_answers_have_the_same_keys(threshold, unknown):
    model = ThresholdModel(threshold)
    with TestClient(create_app(model, tune_batch=False)) as client:
        files = [("files", ("a.png", png(), "image/png"))]
        item = client.post("/v1/predict?top_k=2", files=files).json()[0]
    assert item["path"] == "a.png" and len(item["predictions"]) == 2
    assert item["unknown"] is unknown and item["labels"] == ([] if unknown else ["red"])
    assert ("score" in item) is (threshold is not None)
