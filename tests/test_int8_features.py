"""int8 feature extraction: its own cache key, saved with the model, and a clear error for a bad value."""

from __future__ import annotations

import pytest
from conftest import make_class_folders, make_gratings

import headstart
from headstart.core.errors import ParameterError
from headstart.estimator.classifier import ImageClassifier
from headstart.features.cache import FeatureCache
from headstart.features.extractor import FeatureExtractor
from headstart.models.backbones import create_backbone


@pytest.fixture(scope="module")
def backbone(cache_dir):
    return create_backbone(cache_dir=cache_dir)


@pytest.fixture(scope="module")
def int8_cache(tmp_path_factory):
    """One cache for this file's int8 cases: the backbone is quantised once. The cases use
    images of different content (gratings, colours), so neither finds the other's features."""
    return tmp_path_factory.mktemp("int8_cache")


def test_int8_features_land_under_their_own_cache_key(tmp_path, backbone, int8_cache):
    root = make_gratings(tmp_path / "d", per_class=6)
    paths = sorted(str(p) for p in root.rglob("*.png"))
    cache = FeatureCache(int8_cache)
    int8 = FeatureExtractor(backbone, cache, engine="onnxruntime", precision="int8")
    first = int8.extract(paths)
    assert first.n_extracted == len(paths) and first.engine == "onnxruntime-int8" and not first.errors
    assert "int8" in int8.namespace
    assert (int8_cache / "models" / f"{backbone.key}-b8-int8.onnx").is_file()
    fp32 = FeatureExtractor(backbone, cache, engine="onnxruntime").extract(paths)
    assert fp32.n_extracted == len(paths) and fp32.engine == "onnxruntime-fp32"
    again = FeatureExtractor(backbone, cache, engine="onnxruntime", precision="int8").extract(paths)
    assert again.n_extracted == 0 and again.n_cached == len(paths)
    assert (again.features == first.features).all() and not (fp32.features == first.features).all()


def test_a_loaded_int8_model_predicts_with_int8_extraction(tmp_path, int8_cache):
    root = make_class_folders(tmp_path / "colors", per_class=8)
    clf = ImageClassifier(
        strategy="feature-extraction",
        verbose=False,
        report_map="none",
        feature_precision="int8",
        cache_dir=int8_cache,
    ).fit(root)
    path = clf.save(tmp_path / "model.safetensors")
    loaded = headstart.load(path, verbose=False, cache_dir=int8_cache)
    assert loaded.feature_precision == "int8"
    result = loaded._extract(clf.test_["paths"])
    assert result.engine.endswith("-int8") and result.n_extracted == 0  # fit cached them as int8
    assert loaded.predict(clf.test_["paths"]) == clf.predict(clf.test_["paths"])


def test_a_bad_value_is_one_line_naming_the_parameter(tmp_path, backbone):
    with pytest.raises(ParameterError) as bad:
        ImageClassifier(feature_precision="int4", cache_dir=tmp_path).fit(tmp_path)
    assert bad.value.param == "feature_precision" and "\n" not in str(bad.value)
    with pytest.raises(ParameterError) as torch_int8:
        FeatureExtractor(backbone, FeatureCache(tmp_path / "c"), engine="torch", precision="int8")
    assert torch_int8.value.param == "feature_precision" and "torch" in str(torch_int8.value)


@pytest.mark.cli
def test_the_cli_flag_is_precision(tmp_path):
    from typer.testing import CliRunner

    from headstart.cli.app import app

    result = CliRunner().invoke(app, ["train", str(tmp_path), "--precision", "int4"])
    assert result.exit_code == 2 and "--precision" in result.output
    assert "int8" in CliRunner().invoke(app, ["train", "--help"]).output
