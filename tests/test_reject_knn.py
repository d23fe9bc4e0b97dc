"""The ``max_probability*knn`` reject score: the neighbour bank chosen at fit time, kept by the
bundle (and only with the reject option on), scoring ``predict`` and ``evaluate``; older
bundles keep ``max_probability``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import bundle_parts
from PIL import Image

import headstart
from headstart.estimator.classifier import ImageClassifier
from headstart.evaluation.reject import (
    KNN_SCORE_KIND,
    MAX_BANK_ROWS,
    bank_rows,
    knn_similarity,
    neighbour_bank,
    reject_scores,
)
from headstart.models.bundle import write_bundle


def test_knn_similarity_is_the_nearest_cosine_and_nan_stays_nan():
    bank = neighbour_bank(np.array([[3.0, 0.0], [0.0, 2.0]]), np.array([0, 1]), seed=0)
    assert bank.dtype == np.float16 and np.allclose(np.linalg.norm(bank.astype(np.float32), axis=1), 1)
    sims = knn_similarity(np.array([[5.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [np.nan, 0.0]]), bank)
    np.testing.assert_allclose(sims[:3], [1.0, np.sqrt(0.5), 0.0], atol=1e-3)
    assert sims[0] <= 1.0 and knn_similarity(np.array([[-1.0, -1.0]]), bank)[0] == 0.0
    assert np.isnan(sims[3])


def test_an_image_far_from_the_bank_scores_lower_than_its_probability_alone():
    rng = np.random.default_rng(0)
    train = rng.normal(0, 1, (50, 16)) + 4 * np.eye(16)[rng.integers(0, 2, 50)]
    bank = neighbour_bank(train, np.zeros(50, dtype=int), seed=0)
    proba = np.array([[0.97, 0.03], [0.97, 0.03]])  # equally confident
    near, far = train[:1], -train[:1]
    scores = reject_scores(proba, np.concatenate([near, far]), bank)
    assert scores[0] == pytest.approx(0.97, abs=1e-2)  # its own neighbour
    assert scores[1] < 0.5 * reject_scores(proba)[1]


def test_the_bank_is_capped_with_each_class_share_kept():
    y = np.array([0] * 9000 + [1] * 900 + [2] * 10)
    rows = bank_rows(y, MAX_BANK_ROWS, seed=3)
    assert len(rows) == MAX_BANK_ROWS and len(set(rows.tolist())) == MAX_BANK_ROWS
    counts = np.bincount(y[rows])
    assert abs(counts[1] - 900 * MAX_BANK_ROWS / len(y)) <= 1 and counts[2] == 4
    np.testing.assert_array_equal(rows, bank_rows(y, MAX_BANK_ROWS, seed=3))  # seeded
    np.testing.assert_array_equal(bank_rows(y[:100], MAX_BANK_ROWS, seed=3), np.arange(100))


def odd_image(path):
    """Black and white checks: nothing like the tinted noise of the training images."""
    yy, xx = np.mgrid[0:64, 0:64]
    arr = (((yy // 4 + xx // 4) % 2) * 255).astype(np.uint8)
    Image.fromarray(np.stack([arr] * 3, axis=-1)).save(path)
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from conftest import make_class_folders

    root = make_class_folders(tmp_path_factory.mktemp("knn") / "colors", per_class=10)
    run = tmp_path_factory.mktemp("knn_run")
    clf = ImageClassifier(
        strategy="feature-extraction", reject="auto", target_accuracy=0.9, verbose=False, report_map="none"
    )
    odd = odd_image(tmp_path_factory.mktemp("odd") / "checks.png")
    return root, run, clf.fit(root, out_dir=run), odd


def test_the_bank_is_the_train_and_val_features_and_the_bundle_keeps_it(fitted):
    root, run, clf, _ = fitted
    split = clf.split_["files"]
    n_known = sum(1 for _f, _label, g in split if g in ("train", "val"))
    assert clf.reject_bank_.shape == (n_known, clf.backbone_.num_features)
    assert clf.reject_bank_.dtype == np.float16
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["reject"]["score"] == KNN_SCORE_KIND
    meta, _state, head = bundle_parts(run)
    assert meta["head"]["reject"]["score"] == KNN_SCORE_KIND
    np.testing.assert_array_equal(head["reject_bank"], clf.reject_bank_)
    loaded = headstart.load(run, verbose=False)
    np.testing.assert_array_equal(loaded.reject_bank_, clf.reject_bank_)
    files = sorted(str(p) for p in root.rglob("*.jpg"))[:6]
    before, after = clf.predict_top_k(files), loaded.predict_top_k(files)
    assert [a["score"] for a in after] == pytest.approx([b["score"] for b in before], abs=1e-6)
    assert [a["unknown"] for a in after] == [b["unknown"] for b in before]


def test_predict_scores_with_the_bank(fitted):
    root, _, clf, odd = fitted
    files = sorted(str(p) for p in root.rglob("*.jpg"))[:4] + [str(odd)]
    items = clf.predict_top_k(files, k=1)
    top = np.array([i["predictions"][0]["probability"] for i in items])
    similarity = knn_similarity(clf.transform(files), clf.reject_bank_)
    np.testing.assert_allclose([i["score"] for i in items], top * similarity, rtol=1e-5)
    assert similarity[-1] < similarity[:-1].min()  # the checks are far from every training image
    assert items[-1]["score"] < top[-1]
    threshold = clf.reject_threshold_
    assert clf.predict(files) == [
        "unknown" if i["score"] <= threshold else i["predictions"][0]["label"] for i in items
    ]


def test_evaluate_records_the_score_kind(fitted, tmp_path):
    root, _, clf, _ = fitted
    metrics = clf.evaluate(root, tmp_path / "eval")
    assert metrics["reject"]["score"] == KNN_SCORE_KIND and 0 <= metrics["reject"]["coverage"] <= 1


def test_reject_off_keeps_the_bundle_without_a_bank(tmp_path):
    from conftest import make_class_folders

    root = make_class_folders(tmp_path / "colors", per_class=6)
    clf = ImageClassifier(strategy="feature-extraction", verbose=False, report_map="none").fit(root)
    assert clf.reject_bank_ is None
    meta, _state, head = bundle_parts(clf.save(tmp_path / "model.safetensors"))
    assert "reject_bank" not in head and "reject" not in meta["head"]
    assert set(head) == set(clf.head_.arrays())


def test_a_bundle_scored_by_max_probability_keeps_it(fitted, tmp_path):
    root, run, clf, odd = fitted
    meta, state, head = bundle_parts(run)
    head.pop("reject_bank")
    meta["head"]["reject"]["score"] = "max_probability"  # what every older bundle says
    older = headstart.load(write_bundle(tmp_path / "older.safetensors", meta, state, head), verbose=False)
    assert older.reject_bank_ is None
    files = sorted(str(p) for p in root.rglob("*.jpg"))[:3] + [str(odd)]
    for item in older.predict_top_k(files, k=1):
        assert item["score"] == pytest.approx(item["predictions"][0]["probability"])


def test_the_old_bundle_rejects_with_max_probability(tmp_path):
    from test_old_bundle import rebuild_old_bundle, recorder

    images = recorder().make_images(tmp_path / "images")[:4]
    path = rebuild_old_bundle(tmp_path / "model.safetensors") and tmp_path / "model.safetensors"
    old = headstart.load(path, engine="torch", verbose=False, reject=0.99)
    items = old.predict_top_k(images, k=1)
    assert all(i["score"] == pytest.approx(i["predictions"][0]["probability"]) for i in items)
    assert [i["unknown"] for i in items] == [i["score"] <= 0.99 for i in items]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda bank: bank.astype(np.float32), "float16"),
        (lambda bank: bank[:, :5], "rows of"),
        (lambda bank: np.full_like(bank, np.nan), "finite"),
        (lambda bank: np.zeros((MAX_BANK_ROWS + 1, bank.shape[1]), dtype=np.float16), "rows of"),
        (lambda bank: None, "disagree"),
    ],
)
def test_a_crafted_bank_is_refused(fitted, tmp_path, damage, message):
    _, run, _, _ = fitted
    meta, state, head = bundle_parts(run)
    bank = damage(head.pop("reject_bank"))
    if bank is not None:
        head["reject_bank"] = bank
    bad = write_bundle(tmp_path / "bad.safetensors", meta, state, head)
    with pytest.raises(headstart.HeadstartError, match=message):
        headstart.load(bad)


def test_a_bank_without_its_score_kind_is_refused(fitted, tmp_path):
    _, run, _, _ = fitted
    meta, state, head = bundle_parts(run)
    meta["head"]["reject"]["score"] = "energy"
    bad = write_bundle(tmp_path / "bad.safetensors", meta, state, head)
    with pytest.raises(headstart.HeadstartError, match="unknown reject score"):
        headstart.load(bad)


@pytest.mark.slow
def test_a_fine_tuned_model_banks_its_tuned_features(tmp_path):
    from conftest import make_class_folders

    from headstart.evaluation.reject import unit_rows

    root = make_class_folders(tmp_path / "colors", per_class=8)
    clf = ImageClassifier(
        strategy="finetune",
        unfreeze="last:1",
        epochs=1,
        train_batch_size=8,
        reject="auto",
        verbose=False,
        report_map="none",
        check_data=False,
    ).fit(root)
    known = [str(root / f) for f, _label, g in clf.split_["files"] if g in ("train", "val")]
    expected = unit_rows(clf.transform(known))  # the features the final model's head takes
    np.testing.assert_allclose(clf.reject_bank_.astype(np.float32), expected, atol=2e-3)
    if clf.backbone_ is not clf.probe_backbone_:  # tuned: not the pretrained features
        pretrained = unit_rows(
            ImageClassifier(verbose=False)._extractor(clf.probe_backbone_).extract(known).features
        )
        assert not np.allclose(expected, pretrained, atol=2e-3)
