"""The ``max_probability*knn`` reject score in an exported model: the graph's second output
``score``, read by ``ExportedModel`` (ONNX Runtime and OpenVINO) and passed through ``headstart
serve``'s micro-batcher, agrees with ``predict``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from headstart.core.errors import HeadstartError
from headstart.estimator.classifier import ImageClassifier
from headstart.evaluation.reject import KNN_SCORE_KIND
from headstart.export.exporter import export_model
from headstart.export.runtime import load_exported
from headstart.serve import create_app

SCORE_TOLERANCE = 1e-3  # fp32 graph against predict's extraction engine
# int8 features move a score (the bank product itself stays float): measured 0.10-0.16 at most
# on the generated colours, about 0.08 on average
INT8_SCORE_TOLERANCE = 0.25


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from conftest import make_class_folders
    from test_reject_knn import odd_image

    root = make_class_folders(tmp_path_factory.mktemp("knn_export") / "colors", per_class=10)
    run = tmp_path_factory.mktemp("knn_export_run")
    clf = ImageClassifier(
        strategy="feature-extraction",
        reject="auto",
        target_accuracy=0.9,
        verbose=False,
        report_map="none",
        engine="onnxruntime",
    ).fit(root, out_dir=run)
    files = sorted(str(p) for p in root.rglob("*.jpg"))[::4] + [str(odd_image(run / "checks.png"))]
    return run, clf, files, {i["path"]: i for i in clf.predict_top_k(files, k=2)}


def assert_agrees(items: list[dict], expected: dict, threshold: float, tolerance: float) -> None:
    """Scores within ``tolerance`` of predict's; unknown the same wherever the score is not
    within the tolerance of the threshold."""
    for item in items:
        reference = expected[item["path"]]
        assert item["score"] == pytest.approx(reference["score"], abs=tolerance)
        if abs(reference["score"] - threshold) > tolerance:
            assert item["unknown"] == reference["unknown"]
            assert item["labels"] == reference["labels"]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_exported_scores_agree_with_predict(model, tmp_path, fmt):
    run, clf, files, expected = model
    export_model(run, tmp_path / fmt, fmt)
    exported = load_exported(tmp_path / fmt)
    info = json.loads((tmp_path / fmt / "export.json").read_text())
    assert info["reject"]["score"] == KNN_SCORE_KIND and info["score_output"]["name"] == "score"
    pixels = np.stack([exported.load_image(f) for f in files])
    proba, scores = exported.predict_scored(pixels)
    assert scores.shape == (len(files),) and proba.shape == (len(files), len(clf.classes_))
    items = [{"path": f, **exported.answer(p, 2, float(s))} for f, p, s in zip(files, proba, scores)]
    assert_agrees(items, expected, clf.reject_threshold_, SCORE_TOLERANCE)
    assert scores[-1] < proba[-1].max()  # the checks: far from every training image
    with pytest.raises(HeadstartError, match="predict_scored"):
        exported.answer(proba[0], 2)


@pytest.mark.slow
def test_serve_passes_the_scores_through_the_batcher(model, tmp_path):
    run, clf, files, expected = model
    export_model(run, tmp_path / "export", "onnx")
    app = create_app(tmp_path / "export", max_batch=4, tune_batch=False, max_wait_ms=20)
    with TestClient(app) as client:
        upload = [("files", (f, open(f, "rb").read(), "application/octet-stream")) for f in files]
        response = client.post("/v1/predict?top_k=2", files=upload)
    assert response.status_code == 200, response.text
    assert_agrees(response.json(), expected, clf.reject_threshold_, SCORE_TOLERANCE)


@pytest.mark.slow
def test_int8_keeps_the_bank_product_in_float_and_records_its_drift(model, tmp_path):
    import onnx

    run, clf, files, expected = model
    export_model(run, tmp_path / "int8", "onnx", precision="int8", force=True)
    graph = onnx.load(str(tmp_path / "int8" / "model.onnx")).graph
    product = next(n for n in graph.node if n.name.startswith("/head/") and n.op_type == "MatMul")
    floats = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert product.input[1] in floats  # the bank: float weights, no DequantizeLinear
    info = json.loads((tmp_path / "int8" / "export.json").read_text())["accuracy"]
    assert 0 <= info["score_mean_abs_diff"] <= info["score_max_abs_diff"] <= INT8_SCORE_TOLERANCE
    assert 0 <= info["unknown_agreement"] <= 1
    exported = load_exported(tmp_path / "int8")
    proba, scores = exported.predict_scored(np.stack([exported.load_image(f) for f in files]))
    assert np.all((scores >= 0) & (scores <= proba.max(axis=1) + 1e-6))
