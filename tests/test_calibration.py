"""Temperature scaling: fitted on validation, applied in predict_proba, saved in the bundle,
carried by the exported graph, reported in metrics.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import bundle_parts

import headstart
from headstart.estimator.classifier import ImageClassifier
from headstart.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from headstart.models.bundle import write_bundle


def noisy_logits(n: int = 2000, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated logits (T = 1): unit Gaussian noise with the true class shifted by 1.5, whose
    Bayes posterior is exactly softmax(1.5 * z)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    z = rng.normal(0, 1, (n, classes))
    z[np.arange(n), y] += 1.5
    return 1.5 * z, y


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ece(proba: np.ndarray, y: np.ndarray) -> float:
    return expected_calibration_error(proba.max(axis=1), proba.argmax(axis=1) == y)


def test_over_confident_logits_get_t_above_one_which_lowers_nll_and_ece():
    z, y = noisy_logits()
    over = softmax(4 * z)  # four times too sure of itself
    t = fit_temperature(over, y)
    assert 3 < t < 5
    calibrated = apply_temperature(over, t)
    assert negative_log_likelihood(calibrated, y) < negative_log_likelihood(over, y)
    assert ece(calibrated, y) < ece(over, y) / 2


def test_under_confident_logits_get_t_below_one():
    z, y = noisy_logits(seed=1)
    assert fit_temperature(softmax(z / 3), y) < 0.5


def test_apply_temperature_keeps_the_ranking_and_undoes_itself():
    z, _ = noisy_logits(n=50)
    proba = softmax(z)
    assert apply_temperature(proba, 1.0) is proba
    hot = apply_temperature(proba, 2.5)
    np.testing.assert_allclose(hot.sum(axis=1), 1, atol=1e-9)
    assert (hot.argmax(axis=1) == proba.argmax(axis=1)).all()
    np.testing.assert_allclose(apply_temperature(hot, 1 / 2.5), proba, atol=1e-9)
    np.testing.assert_allclose(hot, softmax(z / 2.5), atol=1e-9)


def test_nothing_to_fit_on_gives_one():
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from conftest import make_class_folders

    root = make_class_folders(tmp_path_factory.mktemp("calib") / "colors", per_class=70)
    run = tmp_path_factory.mktemp("calib_run")
    clf = ImageClassifier(strategy="feature-extraction", verbose=False, report_map="none")
    return root, run, clf.fit(root, out_dir=run)


def test_metrics_json_has_the_calibration_section(fitted):
    _, run, clf = fitted
    section = json.loads((run / "metrics.json").read_text())["calibration"]
    assert section["temperature"] == clf.temperature_ > 0
    assert section["method"] == "temperature" and section["fitted_on"] == "val"
    assert "train only" in section["fitted_with"]  # not the head refitted on train + val
    for key in ("ece_before", "ece_after", "nll_before", "nll_after"):
        assert 0 <= section[key] < float("inf")
    assert section["evaluated_on"] == "test"
    assert "ece-before" in (run / "report.html").read_text()


def test_temperature_is_applied_and_kept_by_the_bundle(fitted, tmp_path):
    root, run, clf = fitted
    files = sorted(str(p) for p in root.rglob("*.jpg"))[:6]
    raw = clf.head_.predict_proba(clf.transform(files))
    np.testing.assert_allclose(clf.predict_proba(files), apply_temperature(raw, clf.temperature_), atol=1e-6)
    loaded = headstart.load(run, verbose=False)
    assert loaded.temperature_ == pytest.approx(clf.temperature_)
    np.testing.assert_allclose(loaded.predict_proba(files), clf.predict_proba(files), atol=1e-5)
    meta, state, head = bundle_parts(run)
    assert meta["head"]["calibration"] == {"temperature": clf.temperature_}
    del meta["head"]["calibration"]  # a model saved before calibration existed
    old = write_bundle(tmp_path / "old.safetensors", meta, state, head)
    old_model = headstart.load(old, verbose=False)
    assert old_model.temperature_ == 1.0
    np.testing.assert_allclose(old_model.predict_proba(files), raw, atol=1e-5)


def test_a_crafted_temperature_is_refused(fitted, tmp_path):
    _, run, _ = fitted
    meta, state, head = bundle_parts(run)
    meta["head"]["calibration"] = {"temperature": -1}
    bad = write_bundle(tmp_path / "bad.safetensors", meta, state, head)
    with pytest.raises(headstart.HeadstartError, match="temperature"):
        headstart.load(bad)


@pytest.mark.slow
def test_export_carries_the_temperature(fitted, tmp_path):
    from headstart.export.exporter import export_model
    from headstart.export.runtime import load_exported

    root, _, clf = fitted
    clf.temperature_ = 3.0  # far from 1, so a graph without it could not match
    clf.save(tmp_path / "model.safetensors")
    export_model(tmp_path / "model.safetensors", tmp_path / "export", "onnx")
    exported = load_exported(tmp_path / "export")
    assert exported.metadata["calibration"] == {"temperature": 3.0, "in_graph": True}
    files = sorted(str(p) for p in root.rglob("*.jpg"))[:6]
    pixels = np.stack([exported.load_image(f) for f in files])
    reference = headstart.load(tmp_path, engine="onnxruntime", verbose=False).predict_proba(files)
    np.testing.assert_allclose(exported.predict_proba(pixels), reference, atol=2e-3)
    uncalibrated = headstart.load(tmp_path, engine="onnxruntime", verbose=False)
    uncalibrated.temperature_ = 1.0
    assert np.abs(uncalibrated.predict_proba(files) - reference).max() > 0.01


def test_t_is_fitted_on_a_head_that_never_saw_the_validation_images():
    from headstart.estimator.fitting import Split, Usable
    from headstart.estimator.reliability import held_out_val_proba
    from headstart.models.heads import LogisticHead

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    x = rng.normal(0, 1, (60, 5)) + y[:, None] * 0.8
    names = (["train"] * 20 + ["val"] * 10) * 2
    usable = Usable(samples=[], features=x, hashes=[], classes=["a", "b"], y=y, skipped=[])
    split = Split(names, "test")
    refitted = LogisticHead(cs=(0.1,))
    tr, va = split.mask("train"), split.mask("val")
    refitted.fit(x[tr], y[tr], x[va], y[va], 2)
    train_only = LogisticHead(cs=(0.1,), refit=False)
    train_only.fit(x[tr], y[tr], x[va], y[va], 2)
    held_out = held_out_val_proba(refitted, usable, split)
    # the same C fitted cold or warm-started along the sweep: equal to the solver's tolerance
    np.testing.assert_allclose(held_out, train_only.predict_proba(x[va]), atol=5e-4)
    assert np.abs(held_out - refitted.predict_proba(x[va])).max() > 1e-3
