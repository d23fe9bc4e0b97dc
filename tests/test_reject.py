"""The reject option: the threshold chosen on validation, ``unknown`` below it, kept by the
bundle, the export and metrics.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import bundle_parts
from typer.testing import CliRunner

import headstart
from headstart.cli.app import app
from headstart.core.errors import ParameterError
from headstart.estimator.classifier import ImageClassifier
from headstart.evaluation.reject import choose_threshold, selective_metrics
from headstart.models.bundle import write_bundle


def test_the_lowest_threshold_that_reaches_the_target():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    correct = np.array([1, 1, 0, 1])
    assert choose_threshold(scores, correct, 0.75).threshold == 0.0  # all 4 accepted, 3 right
    choice = choose_threshold(scores, correct, 0.9)  # accept 0.9 and 0.8: above 0.7
    assert choice.threshold == 0.7 and choice.reached and choice.accuracy == 1.0 and choice.coverage == 0.5


def test_tied_scores_are_accepted_together_and_an_unreachable_target_says_so():
    choice = choose_threshold(np.array([0.9, 0.9, 0.5]), np.array([1, 0, 0]), 1.0)
    assert not choice.reached and choice.threshold == 0.5 and choice.accuracy == 0.5


def test_selective_metrics():
    m = selective_metrics(np.array([0.9, 0.5, 0.8]), np.array([True, False, False]), 0.5)
    assert m["coverage"] == pytest.approx(2 / 3) and m["accuracy_accepted"] == 0.5
    assert m["accuracy_overall"] == pytest.approx(1 / 3) and m["n_accepted"] == 2


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from conftest import make_class_folders

    root = make_class_folders(tmp_path_factory.mktemp("reject") / "colors", per_class=10)
    run = tmp_path_factory.mktemp("reject_run")
    clf = ImageClassifier(
        strategy="feature-extraction", reject="auto", target_accuracy=0.9, verbose=False, report_map="none"
    )
    return root, run, clf.fit(root, out_dir=run)


def test_auto_threshold_in_metrics_and_bundle(fitted):
    _, run, clf = fitted
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["calibration"]["temperature"] == 1.0  # 3 val images: too few to fit T
    assert "too few" in metrics["calibration"]["reason"]
    section = metrics["reject"]
    assert section["threshold"] == clf.reject_threshold_ and 0 <= section["threshold"] <= 1
    assert section["score"] == "max_probability*knn" and section["mode"] == "auto"
    assert section["target_accuracy"] == 0.9 and isinstance(section["target_reached"], bool)
    for key in ("coverage", "accuracy_accepted", "accuracy_overall"):
        assert 0 <= section[key] <= 1
    assert section["evaluated_on"] == "test" and "val" in section
    loaded = headstart.load(run, verbose=False)
    assert loaded.reject == "auto" and loaded.target_accuracy == 0.9
    assert loaded.reject_threshold_ == clf.reject_threshold_
    assert headstart.load(run, verbose=False, reject="off")._active_reject_threshold() is None


def test_reject_one_answers_unknown_for_everything_and_off_never(fitted):
    root, _, clf = fitted
    files = sorted(str(p) for p in root.rglob("*.jpg"))[:8]
    everything = clf.set_params(reject=1.0)
    try:
        assert all(p == "unknown" for p in everything.predict(files))
        items = everything.predict_top_k(files, k=2)
        assert all(i["unknown"] and i["labels"] == [] and i["score"] <= 1 for i in items)
        assert all(len(i["predictions"]) == 2 for i in items)
        clf.set_params(reject="off")
        assert "unknown" not in clf.predict(files)
        assert not any(i["unknown"] or "score" in i for i in clf.predict_top_k(files))
    finally:
        clf.set_params(reject="auto")


def test_a_crafted_threshold_is_refused(fitted, tmp_path):
    _, run, _ = fitted
    meta, state, head = bundle_parts(run)
    meta["head"]["reject"]["threshold"] = 7
    bad = write_bundle(tmp_path / "bad.safetensors", meta, state, head)
    with pytest.raises(headstart.HeadstartError, match="reject threshold"):
        headstart.load(bad)


def test_out_of_range_reject_is_a_parameter_error(tmp_path):
    with pytest.raises(ParameterError, match="reject"):
        ImageClassifier(strategy="feature-extraction", reject=1.5, verbose=False).fit(tmp_path)


@pytest.mark.slow
def test_export_carries_the_threshold(fitted, tmp_path):
    from headstart.export.exporter import export_model
    from headstart.export.runtime import load_exported

    _, run, clf = fitted
    export_model(run, tmp_path / "export", "onnx")
    exported = load_exported(tmp_path / "export")
    assert exported.reject_threshold == pytest.approx(clf.reject_threshold_)
    assert exported.metadata["reject"]["score"] == "max_probability*knn"
    rejected = exported.answer(np.array([0.4, 0.35, 0.25]), k=2, score=0.3)
    assert rejected["unknown"] is (0.3 <= clf.reject_threshold_) and rejected["score"] == 0.3


@pytest.mark.cli
def test_cli_train_reject_then_predict_json(tmp_path):
    from conftest import make_class_folders

    root = make_class_folders(tmp_path / "colors", per_class=8)
    run = tmp_path / "run"
    args = [
        "train",
        str(root),
        "--out",
        str(run),
        "--strategy",
        "feature-extraction",
        "--reject",
        "1.0",
        "-q",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((run / "metrics.json").read_text())["reject"]["mode"] == "fixed"
    result = CliRunner().invoke(app, ["predict", str(run), str(root / "red"), "--format", "json"])
    items = json.loads(result.stdout)
    assert items and all(i["unknown"] is True and i["labels"] == [] and "score" in i for i in items)
