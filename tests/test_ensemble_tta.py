"""Feature ensembles (``backbone="a+b"``) and test-time augmentation (``tta="flip"``)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_bundle_and_export_agree, make_class_folders, make_gratings
from PIL import Image

import headstart
from headstart.core.errors import HeadstartError, ParameterError
from headstart.estimator.classifier import ImageClassifier
from headstart.export.exporter import export_model
from headstart.export.runtime import load_exported
from headstart.features.composite import build_extractor
from headstart.models.backbones import create_backbone

TINY = "test_efficientnet"  # timm's tiny test network, random weights (offline)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    import timm
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(timm.create_model(TINY).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = make_class_folders(tmp_path_factory.mktemp("colors"), per_class=3)
    return sorted(str(p) for p in root.rglob("*.jpg"))


def test_flip_of_a_mirror_symmetric_image_equals_no_tta(tmp_path, tiny_weights):
    rng = np.random.default_rng(0)
    half = rng.integers(0, 255, (80, 40, 3), dtype=np.uint8)
    Image.fromarray(np.concatenate([half, half[:, ::-1]], axis=1)).save(tmp_path / "sym.png")
    backbone = create_backbone(TINY, tiny_weights)
    path = [str(tmp_path / "sym.png")]
    plain = build_extractor(backbone, cache_dir=tmp_path, engine="torch", verbose=False).extract(path)
    flip = build_extractor(backbone, cache_dir=tmp_path, engine="torch", verbose=False, tta="flip")
    result = flip.extract(path)
    assert result.n_extracted == 1  # only the mirror was new
    np.testing.assert_allclose(result.features, plain.features, atol=1e-4)


def test_ensemble_width_is_the_sum_and_each_member_reuses_its_cache(tmp_path, paths, tiny_weights):
    spec = f"tf_efficientnet_lite0+{TINY}"
    ensemble = build_extractor(spec, [None, tiny_weights], tmp_path, "onnxruntime", verbose=False)
    result = ensemble.extract(paths)
    lite0 = build_extractor(None, cache_dir=tmp_path, engine="onnxruntime", verbose=False).extract(paths)
    tiny = build_extractor(TINY, tiny_weights, tmp_path, "onnxruntime", verbose=False).extract(paths)
    assert result.features.shape == (len(paths), lite0.features.shape[1] + tiny.features.shape[1])
    assert lite0.n_extracted == 0 and tiny.n_extracted == 0  # the ensemble cached each member
    np.testing.assert_array_equal(result.features, np.hstack([lite0.features, tiny.features]))


def test_ensemble_weights_and_finetuning_are_refused_naming_the_parameter(tmp_path, tiny_weights):
    with pytest.raises(ParameterError) as weights:
        build_extractor(f"tf_efficientnet_lite0+{TINY}", tiny_weights, tmp_path)
    assert weights.value.param == "weights"
    with pytest.raises(ParameterError) as finetune:
        ImageClassifier(strategy="finetune", backbone=f"tf_efficientnet_lite0+{TINY}").fit(tmp_path)
    assert finetune.value.param == "backbone"
    with pytest.raises(ParameterError) as tta:
        ImageClassifier(strategy="finetune", tta="flip").fit(tmp_path)
    assert tta.value.param == "tta"


def _fit(root, **params):
    return ImageClassifier(
        strategy="feature-extraction", verbose=False, report_map="none", check_data=False, **params
    ).fit(root)


def test_ensemble_round_trips_and_its_export_is_refused_in_one_line(tmp_path, tiny_weights):
    root = make_gratings(tmp_path / "gratings", per_class=8)
    clf = _fit(
        root, backbone=f"tf_efficientnet_lite0+{TINY}", weights=[None, tiny_weights], engine="onnxruntime"
    )
    path = clf.save(tmp_path / "model.safetensors")
    loaded = headstart.load(path, verbose=False, engine="onnxruntime")
    assert loaded.backbone == f"tf_efficientnet_lite0+{TINY}" and len(loaded.features_.members) == 2
    files = clf.test_["paths"]
    np.testing.assert_allclose(loaded.predict_proba(files), clf.predict_proba(files), atol=1e-6)
    with pytest.raises(HeadstartError) as refused:
        export_model(path, tmp_path / "out", "onnx", "fp32")
    assert "ensemble" in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.slow
def test_tta_model_round_trips_through_bundle_and_export(tmp_path):
    root = make_gratings(tmp_path / "gratings", per_class=10)
    clf = _fit(root, tta="flip", engine="onnxruntime")
    loaded = assert_bundle_and_export_agree(clf, tmp_path)
    assert loaded.tta == "flip" and loaded.features_.tta == "flip"


@pytest.mark.slow
@pytest.mark.cli
def test_train_flags_features_and_tta_reach_the_model(tmp_path):
    import json

    from typer.testing import CliRunner

    from headstart.cli.app import app

    root = make_gratings(tmp_path / "gratings", per_class=8)
    out = tmp_path / "run"
    flags = ["--strategy", "feature-extraction", "--features", "multi", "--tta", "flip", "--quiet"]
    result = CliRunner().invoke(app, ["train", str(root), "--out", str(out), *flags])
    assert result.exit_code == 0, result.output
    features = json.loads((out / "metrics.json").read_text())["features"]
    assert features["layers"] == "multi" and features["tta"] == "flip"
    loaded = headstart.load(out, verbose=False)
    assert (loaded.features, loaded.tta) == ("multi", "flip")


def test_ensemble_of_same_sized_members_exports_with_tta(tmp_path, tiny_weights):
    import timm
    import torch

    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.save(timm.create_model(TINY).state_dict(), other)
    root = make_gratings(tmp_path / "gratings", per_class=6)
    clf = _fit(
        root, backbone=f"{TINY}+{TINY}", weights=[tiny_weights, other], tta="flip", engine="onnxruntime"
    )
    path = clf.save(tmp_path / "model.safetensors")
    export_model(path, tmp_path / "out", "onnx", "fp32")
    exported = load_exported(tmp_path / "out")
    files = clf.test_["paths"]
    pixels = np.stack([exported.load_image(f) for f in files])
    np.testing.assert_allclose(exported.predict_proba(pixels), clf.predict_proba(files), atol=2e-3)
