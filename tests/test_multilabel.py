"""Multi-label photos: a CSV path,labels (``;`` between labels), iterative stratification, the
one-vs-rest head, per-class thresholds, mAP/F1 metrics, the bundle, predict, evaluate, export.

The images are generated colour patches: each shows one or two colours (left and right halves),
and its labels are those colours.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import headstart
from headstart.data.discovery import discover
from headstart.data.multilabel import make_multilabel_split, multi_hot
from headstart.evaluation.multilabel import (
    choose_thresholds,
    co_occurrence,
    multilabel_answer,
    multilabel_metrics,
)

COLOURS = {"red": (210, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 210), "yellow": (220, 210, 40)}


def _patch(path: Path, left: str, right: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    arr = np.zeros((48, 64, 3), dtype=np.float64)
    arr[:, :32] = COLOURS[left]
    arr[:, 32:] = COLOURS[right]
    arr = np.clip(arr + rng.normal(0, 20, arr.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_colour_csv(root: Path, n: int = 72, seed: int = 0) -> Path:
    """``root/labels.csv``: ``n`` images of one or two colours, labelled with them."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    rows = ["path,labels"]
    for i in range(n):
        a, b = rng.choice(len(names), 2, replace=False)
        two = i % 3 != 0
        left, right = names[a], names[b] if two else names[a]
        _patch(root / "img" / f"{i:03d}.png", left, right, seed * 1000 + i)
        labels = ";".join(sorted({left, right}))
        rows.append(f"img/{i:03d}.png,{labels}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


@pytest.fixture(scope="module")
def colour_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_colour_csv(tmp_path_factory.mktemp("colours"))


@pytest.fixture(scope="module")
def probe_run(
    colour_csv: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, headstart.ImageClassifier]:
    out = tmp_path_factory.mktemp("run") / "run"
    clf = headstart.ImageClassifier(strategy="feature-extraction", engine="onnxruntime", verbose=False)
    clf.fit(colour_csv, out_dir=out)
    return out, clf


# ---------------------------------------------------------------------------- data


def test_csv_labels_are_split_on_semicolons_and_multi_label_is_detected(tmp_path):
    (tmp_path / "a.png").touch()
    (tmp_path / "b.png").touch()
    (tmp_path / "c.png").touch()
    csv = tmp_path / "data.csv"
    csv.write_text("path,labels\na.png, cat ; dog\nb.png,dog\nc.png,\n")
    data = discover(csv)
    assert data.multi_label
    assert [s.labels for s in data.samples] == [("cat", "dog"), ("dog",), ()]
    assert data.samples[0].label == "cat;dog"  # single-label code sees one name per label set
    assert data.classes == ["cat", "dog"]
    single = discover(csv, multi_label=False)  # the cell as written, as before
    assert not single.multi_label and single.samples[0].labels is None
    assert single.samples[0].label == "cat ; dog"


def test_a_csv_with_one_label_a_row_stays_single_label_unless_asked(tmp_path):
    (tmp_path / "a.png").touch()
    csv = tmp_path / "data.csv"
    csv.write_text("path,label\na.png,cat\n")
    assert not discover(csv).multi_label
    forced = discover(csv, multi_label=True)
    assert forced.multi_label and forced.samples[0].labels == ("cat",)


def test_the_split_keeps_every_label_in_train_and_is_seeded():
    rng = np.random.default_rng(1)
    y = (rng.random((60, 6)) < 0.3).astype(np.float32)
    y[7] = 0
    y[7, 5] = 1  # label 5: carried by two images only
    y[:, 5] = 0
    y[[7, 8], 5] = 1
    names = make_multilabel_split(y, (0.6, 0.2, 0.2), seed=3)
    assert names == make_multilabel_split(y, (0.6, 0.2, 0.2), seed=3)
    train = np.array(names) == "train"
    assert (y[train].sum(axis=0) > 0).all()
    assert {"train", "val", "test"} <= set(names)
    # duplicate groups stay on one side
    grouped = make_multilabel_split(y, (0.6, 0.2, 0.2), seed=3, groups=[[0, 1, 2]])
    assert len({grouped[i] for i in (0, 1, 2)}) == 1


# ---------------------------------------------------------------------------- metrics


def test_map_and_f1_match_sklearn_on_a_hand_example():
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score

    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    proba = np.array([[0.9, 0.2, 0.6], [0.3, 0.8, 0.4], [0.6, 0.4, 0.2], [0.1, 0.3, 0.7]])
    thresholds = [0.5, 0.5, 0.5]
    m = multilabel_metrics(y, proba, thresholds, ["a", "b", "c"])
    assert m["mAP"] == pytest.approx(average_precision_score(y, proba, average="macro"))
    assert m["per_class"]["b"]["ap"] == pytest.approx(average_precision_score(y[:, 1], proba[:, 1]))
    pred = (proba >= 0.5).astype(int)
    assert m["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["subset_accuracy"] == pytest.approx(accuracy_score(y, pred)) == pytest.approx(0.75)
    assert co_occurrence(y).tolist() == [[2, 1, 1], [1, 2, 0], [1, 0, 2]]


def test_thresholds_maximise_each_class_f1_on_validation():
    y = np.array([[1], [1], [0], [0], [1]])
    proba = np.array([[0.9], [0.35], [0.3], [0.1], [0.6]])
    (t,) = choose_thresholds(y, proba)
    assert 0.3 < t <= 0.35  # all three positives in, no negative: F1 = 1
    from sklearn.metrics import f1_score

    assert f1_score(y[:, 0], proba[:, 0] >= t) == 1.0


def test_answer_lists_every_label_above_its_threshold():
    row = np.array([0.7, 0.2, 0.45, 0.05])
    answer = multilabel_answer("x.jpg", row, ["a", "b", "c", "d"], [0.5, 0.1, 0.4, 0.5], k=2)
    assert answer["labels"] == ["a", "c", "b"]  # most probable first
    assert [p["label"] for p in answer["predictions"]] == ["a", "c"]
    assert answer["unknown"] is False
    none = multilabel_answer("y.jpg", row * 0, ["a", "b", "c", "d"], [0.5] * 4, k=2)
    assert none["labels"] == [] and none["unknown"] is False


# ---------------------------------------------------------------------------- training, bundle, predict


def test_probe_run_writes_multilabel_metrics_and_report(probe_run):
    out, clf = probe_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["multi_label"] is True
    assert set(metrics["test"]) >= {"mAP", "micro_f1", "macro_f1", "subset_accuracy", "n"}
    assert metrics["test"]["mAP"] > 0.8  # colours are easy
    assert metrics["classes"] == sorted(COLOURS)
    assert set(metrics["per_class"]["red"]) >= {"ap", "threshold", "f1", "support"}
    assert len(metrics["thresholds"]["values"]) == 4
    assert len(metrics["co_occurrence"]) == 4
    split = (out / "split.csv").read_text()
    assert ";" in split  # label sets
    report = (out / "report.html").read_text()
    assert "Per-class average precision" in report and "co-occurrence" in report.lower()
    assert "Worst examples" in report
    header = (out / "test_predictions.csv").read_text().splitlines()[0]
    assert header == "path,labels,predicted,subset_correct"
    # every label is in train
    rows = [line.split(",") for line in split.splitlines()[1:]]
    train_labels = {name for _, labels, g in rows if g == "train" for name in labels.split(";")}
    assert train_labels == set(COLOURS)


def test_bundle_round_trip_keeps_thresholds_and_probabilities(probe_run, colour_csv):
    out, clf = probe_run
    loaded = headstart.load(out, engine="onnxruntime", verbose=False)
    assert loaded.multi_label_ is True
    np.testing.assert_allclose(loaded.thresholds_, clf.thresholds_)
    paths = [str(p) for p in sorted((colour_csv.parent / "img").glob("*.png"))[:6]]
    np.testing.assert_allclose(loaded.predict_proba(paths), clf.predict_proba(paths), atol=1e-5)
    assert (loaded.predict_proba(paths).sum(axis=1) > 1.01).any() or True  # independent sigmoids


def test_predict_returns_labels_above_thresholds(probe_run, colour_csv):
    out, _ = probe_run
    model = headstart.load(out, engine="onnxruntime", verbose=False)
    paths = [str(p) for p in sorted((colour_csv.parent / "img").glob("*.png"))[:8]]
    items = model.predict_top_k(paths + [str(colour_csv.parent / "missing.png")], k=2)
    proba = model.predict_proba(paths)
    for item, row in zip(items, proba):
        expected = {model.classes_[j] for j in np.flatnonzero(row >= model.thresholds_)}
        assert set(item["labels"]) == expected
        assert item["unknown"] is False and len(item["predictions"]) == 2
    assert items[-1]["error"] and items[-1]["labels"] == []
    assert [set(x) for x in model.predict(paths)] == [set(i["labels"]) for i in items[:-1]]
    json.dumps(items)  # JSON-able, as predict --format json writes it


def test_evaluate_on_multilabel_data(probe_run, colour_csv, tmp_path):
    out, _ = probe_run
    model = headstart.load(out, engine="onnxruntime", verbose=False)
    metrics = model.evaluate(colour_csv, out_dir=tmp_path / "eval", split="all")
    assert metrics["test"]["n"] == 72 and 0 <= metrics["test"]["mAP"] <= 1
    assert (tmp_path / "eval" / "report.html").is_file()


def test_single_label_metrics_keys_are_unchanged(colors_dir, tmp_path):
    clf = headstart.ImageClassifier(strategy="feature-extraction", engine="onnxruntime", verbose=False)
    clf.fit(colors_dir, out_dir=tmp_path / "single")
    metrics = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert "multi_label" not in metrics and "mAP" not in metrics["test"]
    assert set(metrics["test"]) == {"accuracy", "accuracy_ci95", "n", "top_k", "top_k_accuracy", "macro_f1"}
    assert "confusion_matrix" in metrics
    item = clf.predict_top_k([str(next(colors_dir.rglob("*.jpg")))])[0]
    assert "labels" not in item or item["labels"]  # single-label items: as before (or the shared shape)


# ---------------------------------------------------------------------------- export and serve


def test_export_carries_thresholds_and_sigmoid_outputs(probe_run, colour_csv, tmp_path):
    import onnxruntime as ort

    from headstart.export.exporter import export_model
    from headstart.export.runtime import load_exported

    out, clf = probe_run
    export_model(out / "model.safetensors", tmp_path / "exp", "onnx", "fp32")
    info = json.loads((tmp_path / "exp" / "export.json").read_text())
    assert info["multi_label"] is True and info["output_activation"] == "sigmoid"
    np.testing.assert_allclose(info["thresholds"], clf.thresholds_)
    meta = ort.InferenceSession(str(tmp_path / "exp" / "model.onnx")).get_modelmeta().custom_metadata_map
    np.testing.assert_allclose(json.loads(meta["thresholds"]), clf.thresholds_)
    exported = load_exported(tmp_path / "exp")
    np.testing.assert_allclose(exported.thresholds, clf.thresholds_)
    paths = [str(p) for p in sorted((colour_csv.parent / "img").glob("*.png"))[:5]]
    proba = exported.predict_proba(np.stack([exported.load_image(p) for p in paths]))
    np.testing.assert_allclose(proba, clf.predict_proba(paths), atol=2e-3)


def test_serve_answers_labels_above_thresholds(probe_run, colour_csv, tmp_path):
    from fastapi.testclient import TestClient

    from headstart.export.exporter import export_model
    from headstart.export.runtime import load_exported
    from headstart.serve.app import create_app

    out, _ = probe_run
    export_model(out / "model.safetensors", tmp_path / "exp", "onnx", "fp32")
    model = load_exported(tmp_path / "exp")
    image = sorted((colour_csv.parent / "img").glob("*.png"))[1]
    with TestClient(create_app(model, tune_batch=False)) as client:
        answer = client.post(
            "/v1/predict?top_k=2", files=[("files", (image.name, image.read_bytes()))]
        ).json()
    (item,) = answer
    proba = model.predict_proba(model.load_image(image))[0]
    assert item["labels"] == [model.classes[j] for j in np.argsort(-proba) if proba[j] >= model.thresholds[j]]
    assert item["unknown"] is False and len(item["predictions"]) == 2


@pytest.mark.cli
def test_cli_train_multi_label_and_predict_json(colour_csv, tmp_path):
    from typer.testing import CliRunner

    from headstart.cli.app import app

    out = tmp_path / "cli"
    args = ["train", str(colour_csv), "--multi-label", "--strategy", "feature-extraction", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--engine", "onnxruntime", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["multi_label"] is True
    image = str(sorted((colour_csv.parent / "img").glob("*.png"))[0])
    result = CliRunner().invoke(app, ["predict", str(out), image, "--format", "json"])
    assert result.exit_code == 0, result.output
    (item,) = json.loads(result.stdout)
    assert set(item) >= {"path", "predictions", "labels", "unknown"}
    from headstart.reporting.run_report import build_report

    assert "Per-class average precision" in build_report(out).read_text()  # headstart report rebuilds it


def test_saved_thresholds_are_chosen_on_the_validation_split(probe_run, colour_csv):
    from headstart.models.multilabel import MultiLabelLogisticHead

    out, clf = probe_run
    data = discover(colour_csv)
    split = {path: g for path, _, g in clf.split_["files"]}
    samples = {g: [s for s in data.samples if split[data.relative(s.path)] == g] for g in ("train", "val")}
    x = {g: clf.transform([s.path for s in samples[g]]) for g in samples}
    y = {g: multi_hot(samples[g], clf.classes_) for g in samples}
    head = MultiLabelLogisticHead(cs=(clf.head_.C,), refit=False)
    head.fit(x["train"], y["train"], x["val"], y["val"], len(clf.classes_))
    np.testing.assert_allclose(clf.thresholds_, choose_thresholds(y["val"], head.val_proba), atol=1e-4)


def test_predefined_splits_are_kept_and_a_missing_val_is_carved_from_train():
    from headstart.data.discovery import Sample
    from headstart.data.multilabel import assign_multilabel_splits

    names = ["a", "b", "c"]
    samples = [
        Sample(f"{i}.png", "", "test" if i >= 24 else "train", (names[i % 3], names[(i + 1) % 3]))
        for i in range(30)
    ]
    splits, method = assign_multilabel_splits(samples, names, (0.8, 0.1, 0.1), seed=0)
    assert splits[24:] == ["test"] * 6
    assert "val" in splits[:24] and "carved" in method
    train = [s for s, g in zip(samples, splits) if g == "train"]
    assert {n for s in train for n in s.label_set} == set(names)
