"""Multi-layer features (``features="multi"``): width, the last block, engines, cache
namespaces, the head's choice of layer groups, the bundle and the export."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_bundle_and_export_agree, make_class_folders, make_gratings

from headstart.estimator.classifier import ImageClassifier
from headstart.features.composite import build_extractor
from headstart.models.backbones import create_backbone
from headstart.models.taps import RIDGE_ALPHAS, candidate_group_sets, choose_layer_groups, layer_group_widths


@pytest.fixture(scope="module")
def backbone(cache_dir):
    return create_backbone(cache_dir=cache_dir)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = make_class_folders(tmp_path_factory.mktemp("colors"), per_class=3)
    return sorted(str(p) for p in root.rglob("*.jpg"))


def _features(backbone, paths, cache, engine, layers="last", tta="none"):
    return build_extractor(backbone, cache_dir=cache, engine=engine, verbose=False, layers=layers, tta=tta)


def test_multi_vector_is_every_block_group_then_the_last_features(backbone, paths, tmp_path):
    widths = layer_group_widths(backbone.model)
    assert widths[-1] == backbone.num_features and len(widths) > 2
    multi = _features(backbone, paths, tmp_path, "torch", "multi").extract(paths)
    last = _features(backbone, paths, tmp_path, "torch").extract(paths)
    assert multi.features.shape == (len(paths), sum(widths)) and not multi.errors
    np.testing.assert_allclose(multi.features[:, -backbone.num_features :], last.features, atol=1e-5)


def test_torch_and_onnxruntime_give_the_same_multi_features(backbone, paths, tmp_path):
    torch_f = _features(backbone, paths, tmp_path / "a", "torch", "multi").extract(paths)
    ort = _features(backbone, paths, tmp_path / "b", "onnxruntime", "multi").extract(paths)
    assert ort.n_extracted == len(paths)
    np.testing.assert_allclose(ort.features, torch_f.features, atol=2e-3, rtol=1e-3)


def test_cache_namespaces_are_distinct_and_last_is_unchanged(backbone, paths, tmp_path):
    last = _features(backbone, paths, tmp_path, "onnxruntime")
    assert last.namespace == f"{backbone.key}-fp32-v1"  # what every earlier version cached under
    spaces = {
        "multi": _features(backbone, paths, tmp_path, "onnxruntime", "multi").namespaces,
        "flip": _features(backbone, paths, tmp_path, "onnxruntime", tta="flip").namespaces,
        "both": _features(backbone, paths, tmp_path, "onnxruntime", "multi", "flip").namespaces,
    }
    assert spaces["flip"][0] == last.namespace  # TTA reuses the plain features, adds the mirrors
    every = [last.namespace, *spaces["multi"], spaces["flip"][1], *spaces["both"]]
    assert len(set(every)) == 4
    first = _features(backbone, paths, tmp_path, "onnxruntime", "multi").extract(paths)
    again = _features(backbone, paths, tmp_path, "onnxruntime", "multi").extract(paths)
    assert first.n_extracted == len(paths) and again.n_extracted == 0
    assert (first.features == again.features).all()


def test_candidate_groups_grow_from_the_last_features_down():
    assert candidate_group_sets(3) == [[2], [1, 2], [0, 1, 2]]


@pytest.mark.parametrize("n_train", [12, 80])  # fewer images than columns, and more
def test_layer_search_scores_each_candidate_as_a_direct_ridge_solve(n_train):
    """Whichever decomposition the search takes, each candidate's best strength and validation
    error are those of ``(x^T x + a I)^-1 x^T y`` solved directly on the standardised columns."""
    rng = np.random.default_rng(0)
    widths = [5, 7, 20]
    x, xv = rng.normal(size=(n_train, 32)), rng.normal(size=(15, 32))
    y, yv = np.arange(n_train) % 3, np.arange(15) % 3
    x[:, -20:] += y[:, None]  # the last group carries the labels
    xv[:, -20:] += yv[:, None]
    groups, info = choose_layer_groups(x, y, xv, yv, widths)
    assert [r["groups"] for r in info["search"]] == candidate_group_sets(3)
    assert groups == info["chosen_groups"]
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    onehot = np.eye(3)[y]
    for row in info["search"]:
        cols = np.concatenate([np.arange(sum(widths[:g]), sum(widths[: g + 1])) for g in row["groups"]])
        xs, xvs = ((x - mean) / scale)[:, cols], ((xv - mean) / scale)[:, cols]
        target = onehot - onehot.mean(axis=0)
        errors = []
        for alpha in RIDGE_ALPHAS:
            w = np.linalg.solve(xs.T @ xs + alpha * np.eye(len(cols)), xs.T @ target)
            errors.append((((xvs @ w) - (np.eye(3)[yv] - onehot.mean(axis=0))) ** 2).sum(axis=1).mean())
        assert row["width"] == len(cols) and row["alpha"] == RIDGE_ALPHAS[int(np.argmin(errors))]
        assert row["val_squared_error"] == pytest.approx(min(errors), rel=1e-9)


@pytest.mark.slow
def test_multi_model_round_trips_through_bundle_and_export(tmp_path):
    root = make_gratings(tmp_path / "gratings", per_class=10)
    clf = ImageClassifier(
        strategy="feature-extraction",
        features="multi",
        engine="onnxruntime",
        verbose=False,
        report_map="none",
        check_data=False,
    ).fit(root)
    info = clf.metrics_["head"]["fit"]["layers"]
    assert info["chosen_groups"] == clf.features_.selected and len(info["search"]) == len(
        info["group_widths"]
    )
    assert clf.metrics_["features"]["layers"] == "multi"
    loaded = assert_bundle_and_export_agree(clf, tmp_path)
    assert loaded.features == "multi" and loaded.features_.selected == clf.features_.selected
